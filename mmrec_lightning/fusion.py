"""Fusion of per-modality item vectors into one item vector.

Every fusion maps modality vectors ``h`` ``[B, M, D]`` and an availability mask ``[B, M]`` to the fused
vector ``z`` ``[B, output_dim]`` (``output_dim`` is D, except M·D for :class:`ScoreFusion`) and per-item
modality weights ``[B, M]`` (which sum to 1 over the available modalities), so that a recommendation can
say which modality drove it. An item with no available modality gets the zero vector. Models take a
fusion *factory* ``(num_modalities, dim) -> Fusion``, so a YAML ``class_path`` picks the fusion while the
model supplies the dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmrec_lightning.errors import ConfigurationError


class Fusion(nn.Module):
    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.dim = dim
        self.output_dim = dim

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _uniform_weights(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    weights = mask.to(dtype)
    return weights / weights.sum(1, keepdim=True).clamp(min=1.0)


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over the available modalities; all zeros for an item with none (where softmax would be NaN)."""
    weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)
    return torch.where(mask.any(1, keepdim=True), weights, torch.zeros_like(weights))


def _weighted_sum(weights: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return (weights.unsqueeze(-1) * h).sum(1)


class AttentionFusion(Fusion):
    """z = Σ_m α_m·h_m, α_m = softmax_m(qᵀh_m) over the available modalities, with a learnable query q.

    Args:
        num_modalities: number of modalities M.
        dim: vector size D.
        temperature: divides the logits qᵀh_m (lower is sharper).
    """

    def __init__(self, num_modalities: int, dim: int, temperature: float = 1.0) -> None:
        super().__init__(num_modalities, dim)
        self.query = nn.Parameter(torch.zeros(dim))
        self.temperature = temperature

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = _masked_softmax((h @ self.query) / self.temperature, mask)
        return _weighted_sum(alpha, h), alpha


class WeightedSumFusion(Fusion):
    """z = Σ_m w_m·h_m with one learned weight per modality, w = softmax of learned logits over the
    available modalities (the same for every item, unlike :class:`AttentionFusion`).

    Args:
        num_modalities: number of modalities M.
        dim: vector size D.
    """

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__(num_modalities, dim)
        self.logits = nn.Parameter(torch.zeros(num_modalities))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = _masked_softmax(self.logits.to(h.dtype).expand(mask.shape), mask)
        return _weighted_sum(weights, h), weights


class ScoreFusion(WeightedSumFusion):
    """Decision-level fusion: one score per modality, s(u, i) = Σ_m w_m·(u_mᵀh_m), with learned weights w
    (softmax over the available modalities) and a separate user vector u_m per modality.

    In the two-tower harness this is z = [w_1·h_1; …; w_M·h_M] of size M·D, scored against a user vector
    of the same size whose blocks are the u_m — which is why ``output_dim`` is M·D here. (With a single
    shared user vector, late fusion would collapse into :class:`WeightedSumFusion`.)

    Args:
        num_modalities: number of modalities M.
        dim: vector size D of each modality.
    """

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__(num_modalities, dim)
        self.output_dim = num_modalities * dim

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = _masked_softmax(self.logits.to(h.dtype).expand(mask.shape), mask)
        return (weights.unsqueeze(-1) * h).flatten(1), weights


class GatedFusion(Fusion):
    """z = Σ_m g_m·h_m / Σ_m g_m over the available modalities, with a sigmoid gate per modality computed
    from its own vector, g_m = σ(w_mᵀh_m + b_m); the normalised gates are the reported weights.

    Args:
        num_modalities: number of modalities M.
        dim: vector size D.
    """

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__(num_modalities, dim)
        # zero-initialised: every gate starts at σ(0) = 1/2, i.e. the mean of the available modalities
        self.gate_weight = nn.Parameter(torch.zeros(num_modalities, dim))
        self.gate_bias = nn.Parameter(torch.zeros(num_modalities))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = torch.sigmoid(torch.einsum("bmd,md->bm", h, self.gate_weight) + self.gate_bias) * mask
        # gates are positive, so the sum is 0 only for an item with no available modality
        weights = gates / gates.sum(1, keepdim=True).clamp(min=torch.finfo(gates.dtype).tiny)
        return _weighted_sum(weights, h), weights


class TransformerFusion(Fusion):
    """A small pre-norm transformer encoder over a learned [CLS] token and the modality tokens (each plus a
    learned modality embedding, so the encoder knows which is which); missing modalities are masked out of
    the attention, and z is the final [CLS] state. The reported weights are the [CLS] token's attention
    over the modality tokens in the last layer, averaged over heads and renormalised over the available
    modalities (its attention to itself left out).

    Args:
        num_modalities: number of modalities M.
        dim: vector size D (must be divisible by ``num_heads``).
        num_layers: encoder layers.
        num_heads: attention heads per layer.
        feedforward: width of each layer's feed-forward network (default 2·D).
        dropout: dropout inside the encoder layers.
    """

    def __init__(
        self,
        num_modalities: int,
        dim: int,
        num_layers: int = 1,
        num_heads: int = 4,
        feedforward: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_modalities, dim)
        if num_layers < 1 or dim % num_heads:
            raise ConfigurationError(
                f"TransformerFusion: needs num_layers >= 1 and dim divisible by num_heads, got num_layers="
                f"{num_layers}, dim={dim}, num_heads={num_heads}"
            )
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.modality_embedding = nn.Parameter(torch.empty(num_modalities, dim))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.modality_embedding, std=0.02)
        # layers kept in a list rather than an nn.TransformerEncoder: the weights need the last layer's input
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, num_heads, feedforward or 2 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.cat([self.cls_token.expand(len(h), -1, -1).to(h.dtype), h + self.modality_embedding], 1)
        ignored = torch.cat([mask.new_zeros(len(h), 1), ~mask], 1)  # the [CLS] token is always attended
        for layer in self.layers[:-1]:
            tokens = layer(tokens, src_key_padding_mask=ignored)
        attention = _cls_attention(self.layers[-1], tokens, ignored)[:, 1:]
        weights = attention / attention.sum(1, keepdim=True).clamp(min=torch.finfo(attention.dtype).tiny)
        z = self.norm(self.layers[-1](tokens, src_key_padding_mask=ignored)[:, 0])
        return torch.where(mask.any(1, keepdim=True), z, torch.zeros_like(z)), weights


def _cls_attention(layer: nn.TransformerEncoderLayer, tokens: torch.Tensor, ignored: torch.Tensor) -> torch.Tensor:
    """The first token's attention probabilities ``[B, T]`` in ``layer`` (pre-norm), averaged over heads.

    Computed from the layer's own projections rather than by ``self_attn(..., need_weights=True)``, whose
    returned weights have attention dropout applied in training."""
    attn = layer.self_attn
    x = layer.norm1(tokens)
    batch, length, dim = x.shape
    heads = attn.num_heads
    w_q, w_k, _ = attn.in_proj_weight.chunk(3)
    b_q, b_k, _ = attn.in_proj_bias.chunk(3)
    q = F.linear(x[:, :1], w_q, b_q).view(batch, 1, heads, -1).transpose(1, 2)
    k = F.linear(x, w_k, b_k).view(batch, length, heads, -1).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(dim // heads)
    logits = logits.masked_fill(ignored[:, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).mean(1)[:, 0]


class MeanFusion(Fusion):
    """z = mean of the available modality vectors."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = _uniform_weights(mask, h.dtype)
        return _weighted_sum(weights, h), weights


class ConcatFusion(Fusion):
    """z = MLP([h_1; …; h_M]) with missing modalities zeroed; reports uniform weights over the available ones.

    Args:
        num_modalities: number of modalities M.
        dim: vector size D.
        hidden: width of the MLP's hidden layer (default 2·D).
        dropout: dropout inside the MLP.
    """

    def __init__(self, num_modalities: int, dim: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__(num_modalities, dim)
        hidden = hidden or 2 * dim
        self.mlp = nn.Sequential(
            nn.Linear(num_modalities * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.mlp((h * mask.unsqueeze(-1).to(h.dtype)).flatten(1))
        return torch.where(mask.any(1, keepdim=True), z, torch.zeros_like(z)), _uniform_weights(mask, h.dtype)


FusionFactory = Callable[[int, int], Fusion]
