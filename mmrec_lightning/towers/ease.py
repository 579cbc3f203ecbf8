"""The item–item path of the multimodal recommender: a closed-form linear model over each user's whole history."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mmrec_lightning.data.schema import SplitIndex
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.towers.content_neighbours import ContentNeighbours

USER_BLOCK = 4096  # users whose multi-hot rows are held at once while the Gram matrix is summed


class EASE(nn.Module):
    """EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) as a score term: user u's
    score for item i gains ``weight · Σ_{j ∈ H(u)} B_ji`` over the user's whole known history H(u), with
    ``B = I - P · diag(1 / diag(P))``, ``P = (XᵀX + l2·I)⁻¹`` from the training interactions X, computed
    once per run in closed form (``diag(B) = 0``: an item never votes for itself).

    A two-tower model scores through a D-dimensional bottleneck; B is a full-rank item–item map, and on
    MovieLens-100K it alone is as strong as the best two-tower models (docs/ml100k.md). Added to the towers'
    score it brings that strength while the towers keep what B cannot have: content, cold items, new items.
    The towers train without it: B reproduces the training interactions it was solved on, so in the
    training logits it explains the positives away and the towers learn less (on MovieLens-100K validation
    Recall@20 fell from .36 to .32). ``weight`` is chosen on validation instead: every validation scores each
    of ``weights`` and keeps the best by ``select_by``. Weight 0, the towers alone, is always a candidate: a
    dataset where B does not help gets the towers alone, and the model logs the towers' own validation
    metrics (``val/towers/*``), which is what early stopping should watch: the term carries the scores while
    the towers are still weak, so the served metric plateaus early and stops training before the towers have
    learned (on MovieLens-100K at epoch 29, where the towers alone peak near epoch 40). It is still a dot
    product: the user vector gains the block ``weight · x_u`` (the multi-hot of their known items) and the
    item vector the block ``B[:, i]``, so ranking, export and serving are unchanged. Memory is ``items²``
    floats, hence ``max_items``.

    An item without training interactions has a zero column; with ``content_neighbours`` in the item tower
    its column is borrowed: the mean of its content neighbours' columns, so a cold item is scored as the
    trained items it resembles would be. How loud it is depends on the data: a mean of k sparse columns is
    about √k times shorter than any of them, which ranks every cold item below the warm ones (right where
    items without training interactions are rare in what users do next: MovieLens's warm split), while at
    the neighbours' mean length cold items compete (right where whole new items are what users go to: its
    cold split, 7× the cold-item recall). So the length is chosen on validation with the weight, among
    ``cold_lengths`` between the two.

    Args:
        l2: the ridge penalty λ (larger: smoother, more popularity-driven scores).
        weights: the candidate weights besides 0, in the units of the towers' scores (cosine with ``cosine``);
            until a validation has chosen, the largest is used.
        cold_lengths: the candidate lengths of a borrowed column, chosen on validation with the weight:
            0 is the plain mean of the neighbours' columns, 1 their mean length, in between linearly.
        select_by: the validation metric that chooses the pair (one of the model's ``top_k``).
        max_items: the largest catalogue accepted (B is ``items x items`` float32, built in float64: 6.4 GB
            at 20,000 items).
    """

    def __init__(
        self,
        l2: float = 300.0,
        weights: list[float] = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8],  # noqa: B006 (renders in --help; never mutated)
        cold_lengths: list[float] = [0.0, 0.5, 1.0],  # noqa: B006 (as above)
        select_by: str = "recall@20",
        max_items: int = 20_000,
    ) -> None:
        super().__init__()
        if l2 <= 0 or not weights or min(weights) < 0 or not cold_lengths or not all(0 <= x <= 1 for x in cold_lengths):
            raise ConfigurationError(
                f"EASE: l2 must be positive, weights non-negative and cold_lengths in [0, 1], got {l2}, {weights}, "
                f"{cold_lengths}"
            )
        self.l2, self.weights, self.cold_lengths = l2, list(weights), list(cold_lengths)
        self.select_by, self.max_items = select_by, max_items
        # the chosen pair, kept in checkpoints; until a validation has chosen, the largest of each
        self.register_buffer("weight", torch.tensor(float(max(weights))))
        self.register_buffer("cold_length", torch.tensor(float(max(cold_lengths))))
        # rebuilt from the training split in setup: B with borrowed columns at full length, and per item the
        # factor that shortens its column to the plain mean (1 for items with their own column)
        self.register_buffer("matrix", None, persistent=False)
        self.register_buffer("plain_factor", None, persistent=False)

    @property
    def candidates(self) -> list[tuple[float, float]]:
        """The ``(cold_length, weight)`` pairs validation chooses among, the towers alone (weight 0) first."""
        with_term = [(length, weight) for length in self.cold_lengths for weight in self.weights if weight > 0]
        return [(self.cold_lengths[0], 0.0), *with_term]

    @property
    def num_items(self) -> int:
        return self.matrix.shape[0]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # checkpoints from before the length was chosen scored borrowed columns at full length: load them so
        state_dict.setdefault(f"{prefix}cold_length", torch.tensor(1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def build(self, train: SplitIndex, num_items: int, neighbours: ContentNeighbours | None = None) -> None:
        """B from the ``train`` interactions; the ``neighbours`` (built) fill the columns of the items with
        content that occur in no training interaction."""
        if num_items > self.max_items:
            raise ConfigurationError(
                f"model.item_item (EASE): {num_items:,} items is more than max_items={self.max_items:,} (B needs "
                f"{num_items**2 * 4 / 2**30:.1f} GiB); remove model.item_item or raise its max_items"
            )
        gram = torch.zeros(num_items, num_items, dtype=torch.float64)
        num_users = len(train.indptr) - 1
        for start in range(0, num_users, USER_BLOCK):
            users = np.arange(start, min(start + USER_BLOCK, num_users))
            lo, hi = train.indptr[users[0]], train.indptr[users[-1] + 1]
            rows = np.repeat(users - start, np.diff(train.indptr[users[0] : users[-1] + 2]))
            block = torch.zeros(len(users), num_items)
            block[torch.from_numpy(rows), torch.from_numpy(train.items[lo:hi].astype(np.int64))] = 1.0
            gram += (block.T @ block).double()
        gram.diagonal().add_(self.l2)
        columns = torch.linalg.inv(gram)
        del gram  # at most two items x items float64 matrices at once
        columns.div_(-columns.diagonal().clone())
        columns.fill_diagonal_(0.0)
        plain_factor = torch.ones(num_items, dtype=torch.float64)
        untrained = torch.zeros(num_items, dtype=torch.bool)
        if neighbours is not None:
            untrained = torch.from_numpy(np.bincount(train.items, minlength=num_items) == 0)
            untrained &= neighbours.available.cpu()
            neighbour_columns = columns[:, neighbours.index.cpu()[untrained]]  # [items, untrained, k]
            mean = neighbour_columns.mean(-1)
            stretch = neighbour_columns.norm(dim=0).mean(-1) / mean.norm(dim=0).clamp(min=1e-12)
            columns[:, untrained] = mean * stretch
            plain_factor[untrained] = 1.0 / stretch.clamp(min=1e-12)
        device = self.weight.device
        self.matrix = columns.float().to(device)
        self.plain_factor = plain_factor.float().to(device)

    def _known(self, rows: torch.Tensor, items: torch.Tensor, num_users: int) -> torch.Tensor:
        """``[U, items]``: ``x_u``, the multi-hot of each user's known history given as (row, item) pairs."""
        known = torch.zeros(num_users, self.num_items, device=items.device)
        known[rows, items] = 1.0
        return known

    def user_block(self, rows: torch.Tensor, items: torch.Tensor, num_users: int) -> torch.Tensor:
        """``[U, items]``: ``weight · x_u`` of each user from the (row, item) pairs of their known history."""
        return self.weight * self._known(rows, items, num_users)

    def item_block(self, item_ids: torch.Tensor) -> torch.Tensor:
        """``[B, items]``: the columns ``B[:, i]`` of ``item_ids``, borrowed ones at the chosen length."""
        factor = self.column_factors(self.cold_length).index_select(0, item_ids)
        return self.matrix.index_select(1, item_ids).T * factor.unsqueeze(1)

    def column_factors(self, cold_length: float | torch.Tensor) -> torch.Tensor:
        """``[items]``: what each column of the stored B is multiplied by for borrowed columns at ``cold_length``
        (1 for the items with a column of their own)."""
        return self.plain_factor + cold_length * (1.0 - self.plain_factor)

    def votes(self, rows: torch.Tensor, items: torch.Tensor, num_users: int) -> torch.Tensor:
        """``[U, items]``: ``x_u · B`` without the weight, borrowed columns at full length (times
        :meth:`column_factors` for another), for users given by the (row, item) pairs of their known history."""
        return self._known(rows, items, num_users) @ self.matrix

    def choose(self, cold_length: float, weight: float) -> None:
        """Score with this pair from now on."""
        self.cold_length.fill_(cold_length)
        self.weight.fill_(weight)
