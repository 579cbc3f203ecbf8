"""The interfaces every item-content encoder implements, so models accept any of them by ``class_path``."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from mmrec_lightning.encoders.adapters import Adapter, PretrainedWeights, leave_out_pretrained
from mmrec_lightning.errors import ConfigurationError


class FreezableEncoder(nn.Module):
    """An encoder whose weights can be frozen, wholly or all but its last blocks. Frozen parts get no
    gradients and are kept in eval mode (batch-norm statistics and dropout stay as pretrained) whatever
    mode the parent module is put in."""

    model: nn.Module
    """The network: a timm model, a Hugging Face transformer, either wrapped by peft while it has an adapter."""

    frozen: bool = False
    """Whether every weight is frozen, so that the encoder's output for an item never changes."""

    adapter: Adapter | None = None
    """The peft adapter that alone trains, until :meth:`merge_adapters`."""

    pretrained_weights: PretrainedWeights | None = None
    """With an adapter: the frozen weights that the state dict leaves out, as the pretrained source holds them."""

    def freeze(self) -> None:
        self.frozen = True
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train_last_blocks(
        self, blocks: Sequence[Sequence[nn.Parameter]], count: int, tail: Iterable[nn.Parameter] = ()
    ) -> None:
        """Train only the last ``count`` of ``blocks`` and the ``tail`` after them (a final norm, a pooling
        head); freeze everything else."""
        if not 0 < count <= len(blocks):
            raise ConfigurationError(
                f"{type(self).__name__}: train_blocks={count}, but the model has {len(blocks)} blocks "
                f"(0 freezes it, null trains all of it)"
            )
        trainable = {id(p) for block in blocks[len(blocks) - count :] for p in block} | {id(p) for p in tail}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in trainable)
        self.train(self.training)

    def use_adapter(
        self, adapter: Adapter, owner: str, source: str | None, initialised: Collection[torch.Tensor] = ()
    ) -> None:
        """Train only ``adapter``'s weights, which peft adds to ``model``; freeze all else. Where the weights come
        from a pretrained ``source`` (``None`` when initialised at random), the state dict, so every checkpoint,
        leaves them out but for those ``initialised`` at random: the encoder loads them again whenever it is built.

        Args:
            adapter: the method and its layers.
            owner: the encoder's name in errors (``text encoder``).
            source: where the pretrained weights come from, for errors; ``None`` keeps every weight in checkpoints.
            initialised: tensors of ``model`` that no pretrained weight was loaded into.
        """
        self.model = adapter.attach(self.model, owner)
        self.adapter = adapter
        if source is not None:
            fresh = {id(tensor) for tensor in initialised}
            keep = [
                name
                for name, tensor in self.state_dict(keep_vars=True).items()
                if tensor.requires_grad or id(tensor) in fresh
            ]
            leave_out_pretrained(self, source, keep)
        self.train(self.training)

    def merge_adapters(self) -> None:
        """Fold the adapter into the weights it adapts (peft's ``merge_and_unload``), for serving: the same outputs
        from a plain model, as fast as one without an adapter, whose state dict again holds every weight. Nothing
        to do without an adapter."""
        if self.adapter is None:
            return
        self.model = self.model.merge_and_unload()
        self.adapter = self.pretrained_weights = None

    def train(self, mode: bool = True) -> FreezableEncoder:
        super().train(mode and not self.frozen)
        if mode and not self.frozen:
            for module in self.modules():
                parameters = list(module.parameters())
                if parameters and not any(p.requires_grad for p in parameters):
                    module.eval()
        return self


class ImageEncoder(FreezableEncoder):
    """Maps a batch of preprocessed images ``[B, 3, H, W]`` to vectors ``[B, output_dim]``."""

    output_dim: int

    def transform(self, train: bool) -> Callable[[Image.Image], torch.Tensor]:
        """The PIL -> tensor preprocessing this encoder expects, with augmentation when ``train``."""
        raise NotImplementedError


class TextEncoder(FreezableEncoder):
    """Maps token ids ``[B, T]`` with their attention mask to vectors ``[B, output_dim]``."""

    output_dim: int
    max_length: int

    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer matching this encoder."""
        raise NotImplementedError
