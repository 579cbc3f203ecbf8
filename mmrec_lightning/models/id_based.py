"""Collaborative-filtering baselines that see only user and item IDs: BPR-MF and LightGCN."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from mmrec_lightning.losses import BPRLoss, RecommendationLoss
from mmrec_lightning.models.base import RecommenderModule


class MatrixFactorization(RecommenderModule):
    """BPR-MF (Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009):
    a user and an item embedding per ID, scored by dot product.

    Args:
        num_users: number of users (linked from the data).
        num_items: number of items (linked from the data).
        num_categories: unused; accepted so every model takes the same data links.
        embed_dim: embedding size.
        reg_weight: weight of the L2 penalty on the embeddings used in each batch (squared norms / batch size).
        loss: the recommendation loss (BPR by default).
        optimizer: optimizer over the embeddings.
        scheduler: optional learning-rate scheduler.
        top_k: the cut-offs K of the evaluation metrics.
        eval_chunk_size: items scored at once in evaluation.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_categories: int = 0,
        embed_dim: int = 64,
        reg_weight: float = 1e-4,
        loss: RecommendationLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        top_k: list[int] = [10, 20, 50],  # noqa: B006 (a list renders in --help and YAML; never mutated)
        eval_chunk_size: int = 1 << 16,
    ) -> None:
        super().__init__(num_users, num_items, num_categories, top_k, eval_chunk_size)
        self.user_embedding = nn.Embedding(num_users, embed_dim)
        self.item_embedding = nn.Embedding(num_items, embed_dim)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)
        self.reg_weight = reg_weight
        self.loss = loss if loss is not None else BPRLoss()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The user and item vectors that are scored (the raw embeddings here)."""
        return self.user_embedding.weight, self.item_embedding.weight

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        users_all, items_all = self.embeddings()
        item_ids = batch["items"]["item_ids"]
        positives, negatives = item_ids[batch["positives"]], item_ids[batch["negatives"]]
        users = batch["users"]
        rec_loss = self.loss(users_all[users], items_all[positives], items_all[negatives], positives)
        ego = [self.user_embedding(users), self.item_embedding(positives), self.item_embedding(negatives)]
        reg_loss = sum(e.pow(2).sum() for e in ego) / len(users)
        loss = rec_loss + self.reg_weight * reg_loss
        self.log("train/rec_loss", rec_loss, prog_bar=True, batch_size=len(users))
        self.log("train/loss", loss, batch_size=len(users))
        return loss

    def encode_items(self, items: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._eval_embeddings[1][items["item_ids"]]

    def encode_users(self, batch: dict[str, torch.Tensor], item_table: torch.Tensor) -> torch.Tensor:
        return self._eval_embeddings[0][batch["users"]]

    def _reset_catalogue(self) -> None:
        super()._reset_catalogue()
        with torch.no_grad():
            self._eval_embeddings = self.embeddings()


class LightGCN(MatrixFactorization):
    """LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation", SIGIR 2020): ID embeddings smoothed over the symmetric-normalised user-item graph of
    the training interactions, averaged over layers 0..L.

    Args:
        num_layers: propagation layers L.
        **kwargs: as for :class:`MatrixFactorization` (``reg_weight`` applies to the layer-0 embeddings).
    """

    def __init__(self, num_layers: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.graph: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        train = self.trainer.datamodule.train_split
        self.graph = normalized_adjacency(train.indptr, train.items, self.num_users, self.num_items).to(self.device)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is None:
            raise RuntimeError("LightGCN needs the training graph: attach it to a Trainer with a RecDataModule")
        layer = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        total = layer
        for _ in range(self.num_layers):
            layer = SymmetricSparseMatmul.apply(self.graph, layer)
            total = total + layer
        mean = total / (self.num_layers + 1)
        return mean[: self.num_users], mean[self.num_users :]


class SymmetricSparseMatmul(torch.autograd.Function):
    """``A @ x`` for a symmetric sparse ``A``, whose gradient is ``A @ grad`` again. torch's own backward
    of ``sparse.mm`` transposes ``A`` on every call, which costs more than the product itself."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.matrix = matrix
        return matrix @ dense

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, ctx.matrix @ grad


def normalized_adjacency(indptr, items, num_users: int, num_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite user-item graph as a sparse CSR matrix over users then items."""
    users = torch.repeat_interleave(torch.arange(num_users), torch.from_numpy(np.diff(indptr)))
    items = torch.from_numpy(np.asarray(items, dtype=np.int64)) + num_users
    rows, cols = torch.cat([users, items]), torch.cat([items, users])
    size = num_users + num_items
    degree = torch.bincount(rows, minlength=size).float()
    scale = degree.clamp(min=1).rsqrt()
    values = scale[rows] * scale[cols]
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (size, size), check_invariants=True)
    return coo.coalesce().to_sparse_csr()
