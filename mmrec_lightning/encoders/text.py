"""Text encoders from Hugging Face transformers: hub name, local directory or config object; mean pooling."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from mmrec_lightning.encoders.adapters import Adapter
from mmrec_lightning.encoders.base import TextEncoder
from mmrec_lightning.encoders.weights import is_restoring_checkpoint, resolve_location
from mmrec_lightning.errors import ConfigurationError

LAYER_STACKS = ("encoder.layer", "transformer.layer", "layers")
"""Where encoder-only transformers keep their layers: BERT, RoBERTa, MiniLM, ELECTRA…; DistilBERT; ModernBERT."""


def hf_blocks(model: nn.Module) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
    """The parameters of each transformer layer, in order, and of what is registered after the last one
    (a final norm, in models that have one); the embeddings come before the layers."""
    for path in LAYER_STACKS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        named = list(model.named_parameters())
        last = max(i for i, (name, _) in enumerate(named) if name.startswith(f"{path}."))
        return [list(layer.parameters()) for layer in layers], [p for _, p in named[last + 1 :]]
    raise ConfigurationError(
        f"train_blocks: {type(model).__name__} keeps its layers in none of {', '.join(LAYER_STACKS)}; "
        "use freeze, or train the whole model"
    )


class HFTextEncoder(TextEncoder):
    """A Hugging Face transformer whose token states are mean-pooled over the attention mask.

    Args:
        model_name_or_path: a hub name (``sentence-transformers/all-MiniLM-L6-v2``), a local model folder,
            or ``package:<module>/<folder>`` for one shipped in an installed package.
        config: instead of pretrained weights, a randomly initialised model from this config, e.g.
            ``{"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, ...}``.
        tokenizer: tokenizer name or folder; defaults to ``model_name_or_path``.
        freeze: keep the transformer's weights fixed (the same as ``train_blocks: 0``).
        train_blocks: how much of the transformer trains: none for all of it, 0 for none, N for only its
            last N layers (and a final norm after them, where the model has one). Frozen parts stay in
            eval mode.
        max_length: tokens kept per text.
        trust_remote_code: allow code shipped with a hub model to run; off unless you trust its source.
        grad_checkpointing: trade compute for memory in the transformer.
        adapter: parameter-efficient tuning (``class_path`` of an ``Adapter``: ``LoRA``, ``IA3``): only its weights
            train, not with ``freeze`` or ``train_blocks``. With ``model_name_or_path``, checkpoints then hold the
            adapter and not the model's weights, which are read from there again to restore them.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        freeze: bool = False,
        train_blocks: int | None = None,
        max_length: int = 64,
        trust_remote_code: bool = False,
        grad_checkpointing: bool = False,
        adapter: Adapter | None = None,
    ) -> None:
        super().__init__()
        if (model_name_or_path is None) == (config is None):
            raise ConfigurationError("text encoder: set exactly one of model_name_or_path and config")
        if tokenizer is None and model_name_or_path is None:
            raise ConfigurationError("text encoder: a model built from `config` needs `tokenizer` (a name or folder)")
        self.tokenizer_location = resolve_location(tokenizer or model_name_or_path)
        self.max_length = max_length
        self.trust_remote_code = trust_remote_code
        if adapter is not None and (freeze or train_blocks is not None):
            raise ConfigurationError("text encoder: an adapter trains its own weights only; drop freeze, train_blocks")
        initialised: set[str] = set()  # weights the pretrained model lacks, initialised at random
        if config is not None:
            config = dict(config)
            model_config = AutoConfig.for_model(config.pop("model_type"), **config)
            self.model = AutoModel.from_config(model_config)
        else:
            location = resolve_location(model_name_or_path)
            try:
                if is_restoring_checkpoint() and adapter is None:  # with an adapter, checkpoints lack these weights
                    model_config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
                    self.model = AutoModel.from_config(model_config, trust_remote_code=trust_remote_code)
                else:
                    self.model, loading = AutoModel.from_pretrained(
                        location, trust_remote_code=trust_remote_code, output_loading_info=True
                    )
                    initialised = set(loading["missing_keys"])
            except OSError as error:
                raise ConfigurationError(
                    f"could not load text model {model_name_or_path!r}: not a local folder with a config.json, "
                    f"and the hub could not provide it ({type(error).__name__}); check the name or path"
                ) from None
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # mean pooling replaces it; unused parameters would stall DDP
        if grad_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.output_dim = int(self.model.config.hidden_size)
        if adapter is not None:
            weights = self.model.state_dict(keep_vars=True)
            source = None if config is not None else f"text model {model_name_or_path!r}"
            self.use_adapter(adapter, "text encoder", source, [weights[k] for k in initialised if k in weights])
        if freeze and train_blocks:
            raise ConfigurationError(f"text encoder: freeze=True contradicts train_blocks={train_blocks}")
        if freeze or train_blocks == 0:
            self.freeze()
        elif train_blocks is not None:
            blocks, tail = hf_blocks(self.model)
            self.train_last_blocks(blocks, train_blocks, tail)

    @cached_property
    def _tokenizer(self) -> Any:
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_location, trust_remote_code=self.trust_remote_code)
        vocab = self.model.config.vocab_size
        if len(tokenizer) > vocab:
            raise ConfigurationError(
                f"tokenizer {self.tokenizer_location!r} has {len(tokenizer)} tokens but the text model's vocabulary "
                f"has {vocab}; use the model's own tokenizer or a config with vocab_size >= {len(tokenizer)}"
            )
        return tokenizer

    def tokenizer(self) -> Any:
        return self._tokenizer

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_tokenizer"}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
