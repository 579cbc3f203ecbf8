"""Recommenders; all share the full-ranking evaluation of :class:`RecommenderModule`."""

from mmrec_lightning.models.base import RecommenderModule
from mmrec_lightning.models.id_based import LightGCN, MatrixFactorization
from mmrec_lightning.models.multimodal import MultimodalRecommender
from mmrec_lightning.models.popularity import Popularity

__all__ = ["LightGCN", "MatrixFactorization", "MultimodalRecommender", "Popularity", "RecommenderModule"]
