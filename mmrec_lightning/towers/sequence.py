"""The sequential user encoder: a causal transformer over the item vectors of a user's history (SASRec's
architecture, Kang & McAuley, ICDM 2018), so a user is the state after their latest item."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from mmrec_lightning.errors import ConfigurationError


class SequenceEncoder(nn.Module):
    """Self-attention over a history of item vectors, each position seeing only itself and earlier positions.

    The inputs are the item tower's vectors (ID, image, text: whatever the model's items are made of), scaled
    by √D and given learned position embeddings; pre-norm transformer blocks (torch's
    ``TransformerEncoderLayer``) with a causal mask and the padding masked as keys.

    Args:
        dim: vector size D (supplied by the model).
        max_length: the most recent items a user is described by; longer histories are truncated.
        num_layers: transformer blocks.
        num_heads: attention heads (must divide D).
        dropout: dropout on the inputs, attention and feed-forward outputs.
        history_mean: add to each state the mean of the item vectors up to it (scaled as the inputs are), so a
            user is also their average item — the user tower's summary, which attention would have to learn to
            compute. It carries a taste as a whole where what is held out is not the next item (random splits)
            and, for content-only items, places the users near the content they chose (docs/sequential.md).
            ``auto``: on for data split at random, off for leave-one-out and temporal splits, where the latest
            items matter most (decided by the model when it meets its data, :meth:`use_split`).
    """

    def __init__(
        self,
        dim: int,
        max_length: int = 50,
        num_layers: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
        history_mean: bool | Literal["auto"] = False,
    ):
        super().__init__()
        if max_length < 1 or dim % num_heads:
            raise ConfigurationError(
                f"sequence_encoder: max_length must be >= 1 and num_heads must divide the vector size {dim}, got "
                f"max_length={max_length}, num_heads={num_heads}"
            )
        self.dim, self.max_length, self.history_mean = dim, max_length, history_mean
        self.positions = nn.Embedding(max_length, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def use_split(self, time_ordered: bool) -> None:
        """Resolve ``history_mean="auto"`` for data whose held-out items follow the training ones in time or not."""
        if self.history_mean == "auto":
            self.history_mean = not time_ordered

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """States ``[B, L, D]`` of histories ``items`` ``[B, L, D]``, oldest first and padded at the end
        (``mask`` ``[B, L]`` is True on items). State t depends on items 0..t only; padding changes no state."""
        length = items.shape[1]
        if length > self.max_length:
            raise ValueError(f"a history of {length} items is longer than max_length={self.max_length}")
        x = items * math.sqrt(self.dim) + self.positions.weight[:length]
        x = self.dropout(x) * mask.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)  # True: may not attend
        # a history without items would leave its first query nothing to attend to (NaN): let it see its padding
        keys = ~mask.clone()
        keys[:, 0] = False
        states = self.blocks(x, mask=causal, src_key_padding_mask=keys, is_causal=True)
        if self.history_mean == "auto":
            raise RuntimeError("SequenceEncoder.use_split must resolve history_mean='auto' before it encodes")
        if not self.history_mean:
            return states
        scaled = items * math.sqrt(self.dim) * mask.unsqueeze(-1)
        return states + scaled.cumsum(1) / mask.cumsum(1).clamp(min=1).unsqueeze(-1)

    def last(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The state ``[B, D]`` after each history's latest item (zero for an empty history)."""
        items, mask = items[:, -self.max_length :], mask[:, -self.max_length :]
        states = self(items, mask)
        latest = (mask.sum(1) - 1).clamp(min=0)
        state = states[torch.arange(len(states), device=states.device), latest]
        return state * mask.any(1, keepdim=True)


def next_item_rows(
    encoder: SequenceEncoder, vectors: torch.Tensor, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a batch of sequences (see ``TrainSequences``) whose items have ``vectors``: the state at every
    position of every sequence ``[P, D]``, with the item that follows it and its sampled negatives (indices
    into ``vectors``, ``[P]`` and ``[P, N]``) — one training row per position."""
    mask = batch["sequence_mask"]
    states = encoder(vectors.index_select(0, batch["sequence"].reshape(-1)).view(*mask.shape, -1), mask)
    return states[mask], batch["targets"][mask], batch["negatives"][mask]


SequenceEncoderFactory = Callable[[int], SequenceEncoder]
"""``dim -> SequenceEncoder``: a YAML ``class_path`` picks the encoder and its settings, the model its size."""
