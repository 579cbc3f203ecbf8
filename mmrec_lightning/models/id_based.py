"""Collaborative-filtering baselines that see only user and item IDs: BPR-MF and LightGCN."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from mmrec_lightning.models.base import RecommenderModule, rows


class Scored(NamedTuple):
    """The vectors a training batch scores: its users ``[B, D]``, their positives ``[B, D]`` and their
    sampled negatives ``[B, N, D]``."""

    users: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor


class MatrixFactorization(RecommenderModule):
    """BPR-MF (Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009):
    a user and an item embedding per ID, scored by dot product.

    Args:
        embed_dim: embedding size.
        reg_weight: weight of the L2 penalty on the embeddings used in each batch (squared norms / batch size).
        **kwargs: as for :class:`~mmrec_lightning.models.base.RecommenderModule` (sizes, loss — BPR by default —,
            optimizer, scheduler, evaluation).
    """

    def __init__(self, embed_dim: int = 64, reg_weight: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.user_embedding = nn.Embedding(self.num_users, embed_dim)
        self.item_embedding = nn.Embedding(self.num_items, embed_dim)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)
        self.reg_weight = reg_weight
        self._eval_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None  # see _evaluated_embeddings

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The user and item vectors that are scored (the raw embeddings here)."""
        return self.user_embedding.weight, self.item_embedding.weight

    def batch_vectors(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors of a training batch's users ``[B, D]`` and of its distinct items ``[I, D]``."""
        user_table, item_table = self.embeddings()
        return rows(user_table, users), rows(item_table, items)

    def regularization(self, batch: dict, scored: Scored) -> torch.Tensor:
        """The term added to the recommendation loss: ``reg_weight`` x the L2 penalty of the vectors each
        (user, positive, negative) of the batch scores (here the embeddings themselves)."""
        return self.reg_weight * l2_penalty(list(scored), len(scored.users))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        users, item_ids = batch["users"], batch["items"]["item_ids"]
        user_vectors, item_vectors = self.batch_vectors(users, item_ids)
        positives, negatives = batch["positives"], batch["negatives"]
        scored = Scored(user_vectors, rows(item_vectors, positives), rows(item_vectors, negatives))
        rec_loss = self.loss(*scored, item_ids[positives], item_ids[negatives])
        loss = rec_loss + self.regularization(batch, scored)
        self.log("train/rec_loss", rec_loss, prog_bar=True, batch_size=len(users))
        self.log("train/loss", loss, batch_size=len(users))
        return loss

    def _evaluated_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`embeddings`, computed once per evaluation, on first use."""
        if self._eval_embeddings is None:
            with torch.no_grad():
                self._eval_embeddings = self.embeddings()
        return self._eval_embeddings

    def encode_items(self, items: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._evaluated_embeddings()[1][items["item_ids"]]

    def encode_users(self, batch: dict[str, torch.Tensor], item_table: torch.Tensor) -> torch.Tensor:
        return self._evaluated_embeddings()[0][batch["users"]]

    def _reset_catalogue(self) -> None:
        super()._reset_catalogue()
        self._eval_embeddings = None


class LightGCN(MatrixFactorization):
    """LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation", SIGIR 2020): ID embeddings smoothed over the symmetric-normalised user-item graph of
    the training interactions, averaged over layers 0..L.

    Args:
        num_layers: propagation layers L.
        **kwargs: as for :class:`MatrixFactorization` (``reg_weight`` applies to the layer-0 embeddings).
    """

    def __init__(self, num_layers: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.graph: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        train = self.data_facts.train
        self.graph = normalized_adjacency(train.indptr, train.items, self.num_users, self.num_items).to(self.device)

    def regularization(self, batch: dict, scored: Scored) -> torch.Tensor:
        """``reg_weight`` x the L2 penalty of the layer-0 embeddings of each (user, positive, negative)."""
        item_ids = batch["items"]["item_ids"]
        ego = [
            rows(self.user_embedding.weight, batch["users"]),
            rows(self.item_embedding.weight, item_ids[batch["positives"]]),
            rows(self.item_embedding.weight, item_ids[batch["negatives"]]),
        ]
        return self.reg_weight * l2_penalty(ego, len(scored.users))

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.graph)

    def propagate(self, graph: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The user and item vectors: the embeddings averaged over layers 0..L of propagation over ``graph``
        (a symmetric-normalised adjacency over users then items)."""
        if graph is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the training graph: attach it to a Trainer with a RecDataModule"
            )
        layer = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        total = layer
        for _ in range(self.num_layers):
            layer = SparseMatmul.apply(graph, graph, layer)  # symmetric: the graph is its own transpose
            total = total + layer
        mean = total / (self.num_layers + 1)
        users, items = mean.split([self.num_users, self.num_items])  # whose backward is one cat, not two scatters
        return users, items


def sparse_product(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` for a sparse ``matrix``, written straight into a new tensor: ``@`` zero-fills its
    output and copies the sparse kernel's result into it, which on CPU costs as much as the product."""
    out = dense.new_empty(matrix.shape[0], dense.shape[1])
    return torch.addmm(out, matrix, dense, beta=0, out=out)  # beta=0: the uninitialised ``out`` is not read


class SparseMatmul(torch.autograd.Function):
    """``A @ x`` for a sparse ``A`` given with its transpose, whose gradient is ``Aᵀ @ grad``. torch's own
    backward of ``sparse.mm`` transposes ``A`` on every call, which costs more than the product itself."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, transpose: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return sparse_product(matrix, dense)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, sparse_product(ctx.transpose, grad)


def l2_penalty(vectors: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Sum of the squared norms of ``vectors``, per example of the batch."""
    return sum(v.pow(2).sum() for v in vectors) / batch_size


def normalized_adjacency(indptr, items, num_users: int, num_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite user-item graph as a sparse CSR matrix over users then items."""
    return bipartite_adjacency(*interaction_edges(indptr, items, num_users), num_users, num_items)


def interaction_edges(indptr, items, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (users, items) of the interactions listed per user (user u's items are ``items[indptr[u]:indptr[u+1]]``)."""
    users = torch.repeat_interleave(torch.arange(num_users), torch.from_numpy(np.diff(indptr)))
    return users, torch.from_numpy(np.asarray(items, dtype=np.int64))


def bipartite_adjacency(users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 (sparse CSR, users then items) of the graph of the user-item edges (users[e], items[e])."""
    items = items + num_users
    rows, cols = torch.cat([users, items]), torch.cat([items, users])
    size = num_users + num_items
    degree = torch.bincount(rows, minlength=size).float()
    scale = degree.clamp(min=1).rsqrt()
    values = scale[rows] * scale[cols]
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (size, size), check_invariants=True)
    return compact_csr(coo.coalesce())


def compact_csr(matrix: torch.Tensor) -> torch.Tensor:
    """A coalesced sparse ``matrix`` (any layout) as CSR with 32-bit indices where they fit: MKL's sparse
    product (on CPU) takes those as they are, and converts 64-bit ones on every call."""
    csr = matrix.to_sparse_csr()
    if csr._nnz() >= 2**31:
        return csr
    return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape)
