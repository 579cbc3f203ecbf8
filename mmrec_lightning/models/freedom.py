"""FREEDOM: LightGCN on a denoised user-item graph plus a frozen item-item graph built from item features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmrec_lightning.data.samplers import derived_seed
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.encoder import ItemFeatures
from mmrec_lightning.models.base import rows
from mmrec_lightning.models.content import checked_features, project
from mmrec_lightning.models.id_based import (
    LightGCN,
    Scored,
    SparseMatmul,
    bipartite_adjacency,
    compact_csr,
    interaction_edges,
)
from mmrec_lightning.towers.content_neighbours import SIMILARITY_BLOCK


def knn_graph(features: torch.Tensor, k: int, block: int = SIMILARITY_BLOCK) -> torch.Tensor:
    """The kNN graph of the items by cosine similarity of ``features`` ``[items, dim]``, as MMRec's FREEDOM
    builds it: each item with content (a row that is not all zero) links to the ``k`` items with content
    most similar to it, itself included; values D^-1/2 A D^-1/2 with D the number of links of each item.
    Items without content have no links. Returns a coalesced sparse COO ``[items, items]`` matrix.

    Similarities are computed for ``block // items`` rows at a time, so memory stays bounded.
    """
    num_items = features.shape[0]
    available = features.abs().sum(1) > 0
    sources = available.nonzero().squeeze(1)
    k = min(k, len(sources))
    unit = F.normalize(features.float(), dim=1)
    rows, cols = [], []
    for chunk in sources.split(max(1, block // num_items)):
        similarity = (unit[chunk] @ unit.T).masked_fill_(~available, float("-inf"))
        cols.append(similarity.topk(k, dim=1).indices.flatten())
        rows.append(chunk.repeat_interleave(k))
    rows, cols = torch.cat(rows), torch.cat(cols)
    scale = torch.bincount(rows, minlength=num_items).float().clamp(min=1).rsqrt()
    values = scale[rows] * scale[cols]
    shape = (num_items, num_items)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=True).coalesce()


def item_item_graph(features: Mapping[str, torch.Tensor], k: int, image_weight: float) -> torch.Tensor:
    """The kNN graphs of each modality's ``features`` combined as ``image_weight`` x image + (1 - image_weight)
    x text (the one graph when only one modality is given), as a sparse CSR matrix."""
    if len(features) == 1:
        return compact_csr(knn_graph(next(iter(features.values())), k))
    weights = {"image": image_weight, "text": 1.0 - image_weight}
    graphs = [knn_graph(features[name], k) * weight for name, weight in weights.items()]
    indices = torch.cat([g.indices() for g in graphs], dim=1)
    values = torch.cat([g.values() for g in graphs])
    combined = torch.sparse_coo_tensor(indices, values, graphs[0].shape, check_invariants=True)
    return compact_csr(combined.coalesce())


def degree_sensitive_sample(
    users: torch.Tensor, items: torch.Tensor, keep: int, generator: torch.Generator
) -> torch.Tensor:
    """Indices of ``keep`` of the user-item edges (users[e], items[e]), drawn without replacement with
    probability proportional to 1 / sqrt(d_u·d_i) (the degrees of the full graph), so edges between
    popular users and items are pruned first: FREEDOM's degree-sensitive edge pruning. Uses
    Efraimidis-Spirakis keys, which draw as ``torch.multinomial`` without replacement does, for any number
    of edges."""
    degree_u = torch.bincount(users).float()
    degree_i = torch.bincount(items).float()
    weights = (degree_u[users] * degree_i[items]).rsqrt()
    keys = torch.rand(len(users), generator=generator, device=users.device).log_() / weights
    return keys.topk(keep).indices


class FREEDOM(LightGCN):
    """FREEDOM (Zhou & Shen, "A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal
    Recommendation", ACM MM 2023), as MMRec implements it (``models/freedom.py``).

    Item vectors: LightGCN over the user-item graph (``num_layers`` layers, the mean of layers 0..L) plus
    the item ID embeddings propagated ``num_item_layers`` times over a frozen item-item graph, built once
    from each modality's features (cosine kNN, ``knn_k`` per item, normalised, combined as
    ``image_weight`` x image + (1 - image_weight) x text). User vectors: LightGCN's. In training the
    user-item graph is denoised: every epoch a fraction ``edge_dropout`` of its edges is pruned, the edges
    between high-degree users and items first (sampled with weight 1/sqrt(d_u·d_i)), and the rest
    renormalised; evaluation uses the full graph. Loss: the recommendation loss + ``reg_weight`` x the
    same loss of the user vectors against the linearly projected image features, and against the text
    features. There is no L2 penalty on the embeddings (MMRec has none).

    Differences from MMRec: the raw feature matrices stay frozen (MMRec fine-tunes them through the
    auxiliary loss), and only the batch's items are projected (MMRec projects the whole catalogue every
    batch). The pruned graph of each epoch is drawn from (the run's seed, the epoch), so a run resumed
    mid-epoch trains on the same graph as an uninterrupted one.

    Args:
        image_features: the catalogue's image features (row i = item i), or none.
        text_features: the catalogue's text features, or none; at least one of the two must be set.
        embed_dim: size D of the embeddings and of the projected features.
        num_layers: user-item propagation layers (MMRec's ``n_ui_layers``).
        num_item_layers: item-item propagation layers (MMRec's ``n_mm_layers``).
        knn_k: neighbours per item in the item-item graph.
        image_weight: weight of the image graph in the item-item graph (MMRec's ``mm_image_weight``).
        edge_dropout: fraction of the user-item edges pruned in each training epoch (MMRec's ``dropout``).
        reg_weight: weight of the modality losses.
        **kwargs: as for :class:`~mmrec_lightning.models.base.RecommenderModule`; its ``loss`` (BPR by
            default) is also used for the modality losses.
    """

    def __init__(
        self,
        image_features: ItemFeatures | None = None,
        text_features: ItemFeatures | None = None,
        embed_dim: int = 64,
        num_layers: int = 2,
        num_item_layers: int = 1,
        knn_k: int = 10,
        image_weight: float = 0.1,
        edge_dropout: float = 0.8,
        reg_weight: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_layers=num_layers, embed_dim=embed_dim, reg_weight=reg_weight, **kwargs)
        if not 0.0 <= edge_dropout < 1.0:
            raise ConfigurationError(f"model.edge_dropout: {edge_dropout} is not in [0, 1); 0 keeps every edge")
        if not 0.0 <= image_weight <= 1.0:
            raise ConfigurationError(f"model.image_weight: {image_weight} is not in [0, 1]")
        if knn_k < 1:
            raise ConfigurationError(f"model.knn_k: must be at least 1, got {knn_k}")
        features = checked_features(self.num_items, image=image_features, text=text_features)
        self.features = nn.ModuleDict(features)
        self.projections = nn.ModuleDict({name: nn.Linear(f.output_dim, embed_dim) for name, f in features.items()})
        self.num_item_layers, self.knn_k, self.image_weight = num_item_layers, knn_k, image_weight
        self.edge_dropout = edge_dropout
        self.item_graph: torch.Tensor | None = None
        self.item_graph_transpose: torch.Tensor | None = None
        self.train_graph: torch.Tensor | None = None
        self._edges: tuple[torch.Tensor, torch.Tensor] | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        train = self.data_facts.train
        self._edges = interaction_edges(train.indptr, train.items, self.num_users)
        if self.item_graph is None:  # frozen: built once, from the features alone
            matrices = {modality: f.matrix.float().to(self.device) for modality, f in self.features.items()}
            graph = item_item_graph(matrices, self.knn_k, self.image_weight)
            self.item_graph, self.item_graph_transpose = graph, compact_csr(graph.t())

    def pruned_graph(self, epoch: int) -> torch.Tensor:
        """The normalised user-item graph of the edges kept in ``epoch``, drawn from (the run's seed, the
        epoch) alone, so that resuming a run or drawing other random numbers does not change it."""
        if self._edges is None:
            raise RuntimeError("FREEDOM needs the training graph: connect it to its data and set it up first")
        if self.edge_dropout == 0:
            return self.graph
        seed = derived_seed(torch.initial_seed(), epoch)
        users, items = self._edges
        keep = int(len(users) * (1.0 - self.edge_dropout))
        kept = degree_sensitive_sample(users, items, keep, torch.Generator().manual_seed(seed))
        return bipartite_adjacency(users[kept], items[kept], self.num_users, self.num_items).to(self.device)

    def on_train_epoch_start(self) -> None:
        self.train_graph = self.pruned_graph(self.current_epoch)

    def item_item_vectors(self) -> torch.Tensor:
        """The item ID embeddings propagated over the item-item graph."""
        vectors = self.item_embedding.weight
        for _ in range(self.num_item_layers):
            vectors = SparseMatmul.apply(self.item_graph, self.item_graph_transpose, vectors)
        return vectors

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item vectors, over the epoch's pruned graph in training and the full graph otherwise."""
        users, items = self.propagate(self.train_graph if self.training else self.graph)
        return users, items + self.item_item_vectors()

    def regularization(self, batch: dict, scored: Scored) -> torch.Tensor:
        """``reg_weight`` x the recommendation loss of the users against each modality's projected features of
        the batch's items."""
        ids, positives, negatives = batch["items"]["item_ids"], batch["positives"], batch["negatives"]
        total = scored.users.new_zeros(())
        for name, features in self.features.items():
            projection = self.projections[name]
            projected = project(features, ids, projection.weight, projection.bias)
            total = total + self.loss(
                scored.users, rows(projected, positives), rows(projected, negatives), ids[positives], ids[negatives]
            )
        return self.reg_weight * total
