"""Fully sharded data parallel (FSDP) training for models with large encoders: Lightning's ``FSDPStrategy``,
set up for this package's models (docs/scaling.md#fsdp)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from lightning.fabric.strategies.fsdp import _is_sharded_checkpoint, _setup_activation_checkpointing
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp._common_utils import clean_tensor_name
from torch.utils.data import DataLoader, Sampler
from typing_extensions import override

from mmrec_lightning.encoders.adapters import _leave_out
from mmrec_lightning.encoders.base import FreezableEncoder
from mmrec_lightning.errors import ConfigurationError

_BATCHING = {"self", "batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"}
"""The ``DataLoader`` arguments that decide its batches; the others are copied to a loader batched anew."""


def frozen_encoders(model: nn.Module) -> list[nn.Module]:
    """The encoders of ``model`` whose every weight is frozen."""
    return [module for module in model.modules() if isinstance(module, FreezableEncoder) and module.frozen]


@contextmanager
def pretrained_weights_kept(model: nn.Module) -> Iterator[dict[str, FreezableEncoder]]:
    """Within it, the encoders of ``model`` whose state dicts leave out their pretrained weights (adapters over a
    pretrained source) keep them; yields those encoders by their state-dict prefix."""
    encoders = {
        clean_tensor_name(name): module
        for name, module in model.named_modules()
        if isinstance(module, FreezableEncoder) and module.pretrained_weights is not None
    }
    weights = {name: encoder.pretrained_weights for name, encoder in encoders.items()}
    for encoder in encoders.values():
        encoder.pretrained_weights = None  # which turns their state-dict hooks off
    try:
        yield encoders
    finally:
        for name, encoder in encoders.items():
            encoder.pretrained_weights = weights[name]


class SplitBatches(Sampler[list[int]]):
    """The indices of ``sampler`` in ``count`` consecutive batches whose sizes differ by at most one."""

    def __init__(self, sampler: Sampler[int], count: int) -> None:
        self.sampler, self.count = sampler, count

    def __iter__(self) -> Iterator[list[int]]:
        for batch in np.array_split(np.fromiter(self.sampler, dtype=np.int64), self.count):
            yield batch.tolist()

    def __len__(self) -> int:
        return self.count


def same_batch_count(loader: DataLoader) -> DataLoader:
    """``loader`` (over this rank's shard of an :class:`UnrepeatedDistributedSampler`, whose shards differ in size
    by up to one example), or a loader of the same shard in smaller batches, so that it has as many batches as the
    loader of the largest shard (rank 0's)."""
    sampler, size = loader.sampler, loader.batch_size
    count = -(-len(range(0, len(sampler.dataset), sampler.num_replicas)) // size)
    if len(loader) == count:
        return loader
    if sampler.num_samples < count:
        raise ConfigurationError(
            f"FSDP: rank {sampler.rank} has {sampler.num_samples} of the {len(sampler.dataset)} evaluated rows, too "
            f"few for the {count} batches of size {size} that rank 0 has, and every rank must run as many "
            "(each is a forward pass of the sharded model); raise data.eval_batch_size and data.item_batch_size"
        )
    settings = inspect.signature(DataLoader.__init__).parameters.keys() - _BATCHING
    return DataLoader(batch_sampler=SplitBatches(sampler, count), **{name: getattr(loader, name) for name in settings})


class FSDPStrategy(LightningFSDPStrategy):
    """Lightning's ``FSDPStrategy`` (same arguments; ``auto_wrap_policy`` in a config is a list of layer classes,
    each layer of which becomes an FSDP unit of its own), set up for this package's models:

    - Frozen encoders are not sharded (FSDP's ``ignored_modules``): every rank holds them whole, as under DDP.
      A frozen encoder has no gradients or optimizer state to shard, and its outputs may be cached per item
      (``cache_frozen_features``), so that the ranks run it for different numbers of batches, which a sharded
      module cannot allow: every forward pass through it gathers its weights from all ranks.
    - For the same reason every rank runs the same number of evaluation batches (:func:`same_batch_count`): the
      evaluation shards every user and item to one rank, and so some ranks one row fewer than others.
    - A model set up again (a test after fit) keeps the FSDP wrapper of its first set-up: Lightning would leave its
      own weights as the sharded views that set-up made of them, no longer whole even to load a checkpoint into.
    - Full checkpoints leave out the pretrained weights of encoders with adapters, as without FSDP; sharded ones
      keep them (FSDP's state dict of a unit holds all its weights).
    - It runs on CPU processes too (gloo), which Lightning's refuses: for testing a multi-process set-up on a
      machine without GPUs.

    The rest — the units around the wrapped layers, mixed precision, ``state_dict_type``, checkpoints — is
    Lightning's. The ID embedding tables, heads and whatever else no wrapped layer holds form the root unit:
    sharded, their gradients reduced across ranks, like the rest.
    """

    _sharded: FullyShardedDataParallel | None = None
    """The model as last set up."""

    @override
    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self._sharded is not None and self._sharded.module is model:
            return self._sharded
        if any(isinstance(module, FullyShardedDataParallel) for module in model.modules()):
            return super()._setup_model(model)  # wrapped by its own configure_model: Lightning's way
        ignored = frozen_encoders(model)
        for encoder in ignored:  # FSDP moves only what it shards
            encoder.to(self.root_device)
        self.kwargs["ignored_modules"] = ignored
        if self.root_device.type != "cpu":
            self._sharded = super()._setup_model(model)
            return self._sharded
        # FSDP takes the CPU only when named as a device; Lightning passes the device's index, which a CPU has not
        self._sharded = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )
        _setup_activation_checkpointing(self._sharded, self._activation_checkpointing_kwargs)
        return self._sharded

    @override
    def process_dataloader(self, dataloader: object) -> object:
        sampler = getattr(dataloader, "sampler", None)
        if isinstance(sampler, UnrepeatedDistributedSampler) and dataloader.batch_size is not None:
            return same_batch_count(dataloader)
        return dataloader

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        # FSDP replaces each unit's weights in the state dict once the modules' own hooks have run, so the encoders'
        # hooks that leave out their pretrained weights are off meanwhile, and their work done afterwards
        with pretrained_weights_kept(self.lightning_module) as encoders:
            state = super().lightning_module_state_dict()
        if self._state_dict_type == "full" and state:  # (empty but on rank 0, which saves it)
            for prefix, encoder in encoders.items():
                _leave_out(encoder, state, f"{prefix}.", {})
        return state

    @override
    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_sharded_checkpoint(Path(checkpoint_path)):
            return super().load_checkpoint(checkpoint_path, weights_only)
        # the shards are read into the model's sharded state dict, which must name the weights they hold: all
        with pretrained_weights_kept(self.lightning_module):
            return super().load_checkpoint(checkpoint_path, weights_only)
