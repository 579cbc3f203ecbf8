"""Parameter-efficient tuning with peft: an encoder's ``adapter`` (LoRA or IA3, chosen by ``class_path``) trains a
few weights of its own in the named layers while the encoder's weights stay frozen, and checkpoints then leave
out the frozen weights that a pretrained source provides again.

peft is imported only when an adapter is attached: it takes seconds, which runs without adapters need not pay.
"""

from __future__ import annotations

import abc
import difflib
import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.fsdp._common_utils import clean_tensor_name
from transformers.pytorch_utils import Conv1D

from mmrec_lightning.errors import ConfigurationError

if TYPE_CHECKING:
    from torch.nn.modules.module import _IncompatibleKeys

ADAPTER_NAME = "default"
"""peft's name for the one adapter an encoder has."""

DIGEST_KEY = "pretrained_sha256"
"""The state-dict entry (under the encoder's prefix) holding the SHA-256 of the pretrained weights left out."""


class Adapter(abc.ABC):
    """A peft method: weights of its own in the ``target_modules`` layers of an encoder, which alone train; the
    encoder's weights stay frozen (its frozen parts in eval mode, as with ``train_blocks``).

    Args:
        target_modules: the layers to adapt, by name as peft matches them: ``qkv`` is every layer named ``qkv``
            or ending in ``.qkv``; a longer path (``attention.self.query``) picks fewer.
    """

    layers: tuple[type[nn.Module], ...] = ()
    """The kinds of layer the method adapts (peft's list)."""

    def __init__(self, target_modules: list[str]) -> None:
        if not target_modules:
            raise ConfigurationError(f"{type(self).__name__}.target_modules: name at least one layer to adapt")
        self.target_modules = list(target_modules)

    def attach(self, model: nn.Module, owner: str) -> nn.Module:
        """``model`` wrapped by peft (``merge_and_unload`` returns it, the adapter merged in), its own weights frozen
        and the adapter's trainable; ``owner`` names the encoder in errors."""
        check_targets(model, self.target_modules, self.layers, f"{owner}: adapter.target_modules")
        return self._wrap(model)

    @abc.abstractmethod
    def _wrap(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped by the method's peft tuner."""


class LoRA(Adapter):
    """Low-rank adaptation (Hu et al. 2021): each target layer's output gains ``(alpha / r) · B A x``, with ``A``
    and ``B`` of rank ``r`` (``B`` starts at zero, so training starts from the pretrained model).

    Args:
        target_modules: the layers to adapt (``Linear``, ``Conv1d/2d/3d``, ``Embedding``), by name: ``qkv`` is
            every layer named ``qkv`` or ending in ``.qkv``. E.g. ``[query, value]`` in BERT, ``[qkv, proj]`` in a
            timm ViT, ``[fc1, fc2]`` in a ViT or ConvNeXt, ``[conv_pw, conv_pwl]`` in an EfficientNet.
        r: the rank.
        alpha: the scale numerator.
        dropout: dropout on the adapter's input while training.
    """

    layers = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, Conv1D)

    def __init__(self, target_modules: list[str], r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__(target_modules)
        if r < 1 or alpha <= 0 or not 0 <= dropout < 1:
            raise ConfigurationError(f"LoRA: r must be >= 1, alpha > 0, 0 <= dropout < 1; got {r}, {alpha}, {dropout}")
        self.r, self.alpha, self.dropout = r, alpha, dropout

    def _wrap(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, LoraModel

        config = LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.target_modules
        )
        return LoraModel(model, config, ADAPTER_NAME)


class IA3(Adapter):
    """IA3 (Liu et al. 2022): a learned vector rescales each target layer's output, or its input for the
    ``feedforward_modules``; one number per channel, far fewer weights than LoRA.

    Args:
        target_modules: the layers to adapt (``Linear``, ``Conv2d/3d``), by name: ``fc2`` is every layer named
            ``fc2`` or ending in ``.fc2``. E.g. ``[key, value, output.dense]`` in BERT, ``[qkv, fc2]`` in a timm ViT.
        feedforward_modules: those of ``target_modules`` whose input is rescaled rather than their output (the
            second layer of an MLP: ``output.dense`` in BERT, ``fc2`` in a timm ViT); default none.
    """

    layers = (nn.Linear, nn.Conv2d, nn.Conv3d, Conv1D)

    def __init__(self, target_modules: list[str], feedforward_modules: list[str] | None = None) -> None:
        super().__init__(target_modules)
        self.feedforward_modules = list(feedforward_modules or [])
        strays = [name for name in self.feedforward_modules if name not in self.target_modules]
        if strays:
            raise ConfigurationError(f"IA3.feedforward_modules: {strays} are not among target_modules {target_modules}")

    def _wrap(self, model: nn.Module) -> nn.Module:
        from peft import IA3Config, IA3Model

        config = IA3Config(target_modules=self.target_modules, feedforward_modules=self.feedforward_modules)
        return IA3Model(model, config, ADAPTER_NAME)


def check_targets(model: nn.Module, targets: list[str], layers: tuple[type[nn.Module], ...], option: str) -> None:
    """A :class:`ConfigurationError` naming ``option`` unless every target names at least one layer of ``model``
    and only layers of the ``layers`` kinds (peft ignores a target that names nothing when another one does)."""
    modules = dict(model.named_modules())
    adaptable = sorted({name.rsplit(".", 1)[-1] for name, module in modules.items() if isinstance(module, layers)})
    listed = ", ".join(adaptable[:20]) + (", …" if len(adaptable) > 20 else "")
    for target in targets:
        named = [module for name, module in modules.items() if name == target or name.endswith(f".{target}")]
        if not named:
            close = difflib.get_close_matches(target, adaptable, n=3)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ConfigurationError(
                f"{option}: {target!r} names no layer of {type(model).__name__}{hint}; layers it can adapt: {listed}"
            )
        kinds = sorted({type(module).__name__ for module in named if not isinstance(module, layers)})
        if kinds:
            raise ConfigurationError(
                f"{option}: {target!r} names {', '.join(kinds)}, which this method cannot adapt (only "
                f"{', '.join(kind.__name__ for kind in layers)}); name layers inside it, among: {listed}"
            )


@dataclass
class PretrainedWeights:
    """The state-dict entries of an encoder that its pretrained source provides, and their SHA-256."""

    source: str
    names: frozenset[str]
    digest: bytes
    restored_prefix: str | None = None
    """Set while a ``load_state_dict`` restores the encoder from a state that left these entries out."""


def sha256(tensors: Iterable[torch.Tensor]) -> bytes:
    """The SHA-256 of the tensors' bytes, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.digest()


def leave_out_pretrained(encoder: nn.Module, source: str, keep: Collection[str]) -> None:
    """Make ``encoder``'s state dict (so every checkpoint of a model holding it) leave out all its entries but
    ``keep`` (the adapter's, and any initialised at random rather than loaded), since the encoder loads them from
    ``source`` whenever it is built, also to restore a checkpoint. Their SHA-256 takes their place, so that
    restoring from a source whose weights differ fails; strict loading still reports every other missing entry."""
    state = encoder.state_dict()
    left_out = {name: tensor for name, tensor in state.items() if name not in keep}
    encoder.pretrained_weights = PretrainedWeights(source, frozenset(left_out), sha256(left_out.values()))
    encoder.register_state_dict_post_hook(_leave_out)
    encoder.register_load_state_dict_pre_hook(_check_digest)
    encoder.register_load_state_dict_post_hook(_excuse_left_out)


# The hooks are module-level functions taking the module, and no-ops once ``pretrained_weights`` is None (merged
# adapters): copies and pickles of the encoder then carry hooks that act on themselves.


def _leave_out(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict) -> None:
    weights: PretrainedWeights | None = module.pretrained_weights
    if weights is None:
        return
    for name in weights.names:
        state_dict.pop(prefix + name, None)
    state_dict[prefix + DIGEST_KEY] = torch.tensor(list(weights.digest), dtype=torch.uint8)


def _check_digest(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    weights: PretrainedWeights | None = module.pretrained_weights
    if weights is None:
        return
    weights.restored_prefix = None  # not left over from a load that failed
    if prefix + DIGEST_KEY not in state_dict:
        return  # a state with every weight: loaded, and checked by strict loading, as any other
    saved = bytes(state_dict.pop(prefix + DIGEST_KEY).to("cpu").tolist())  # `.to` reads a lazily loaded tensor
    if saved != weights.digest:
        raise ConfigurationError(
            f"{prefix.rstrip('.') or type(module).__name__}: the pretrained weights from {weights.source} are not "
            "those the checkpoint's adapter was trained on (the checkpoint keeps the adapter and their SHA-256, "
            "not the weights themselves); restore the pretrained weights the run used"
        )
    weights.restored_prefix = prefix


def _excuse_left_out(module: nn.Module, incompatible_keys: _IncompatibleKeys) -> None:
    weights: PretrainedWeights | None = module.pretrained_weights
    if weights is None or weights.restored_prefix is None:
        return
    # names as FSDP's wrapping prefixes (``_fsdp_wrapped_module.``) would be reported without them
    left_out = {clean_tensor_name(weights.restored_prefix + name) for name in weights.names}
    incompatible_keys.missing_keys[:] = [
        key for key in incompatible_keys.missing_keys if clean_tensor_name(key) not in left_out
    ]
    weights.restored_prefix = None
