"""Recommenders; all share the full-ranking evaluation of :class:`RecommenderModule`."""

from mmrec_lightning.models.base import RecommenderModule
from mmrec_lightning.models.ease import EASERecommender
from mmrec_lightning.models.freedom import FREEDOM
from mmrec_lightning.models.id_based import LightGCN, MatrixFactorization
from mmrec_lightning.models.multimodal import MultimodalRecommender
from mmrec_lightning.models.popularity import Popularity
from mmrec_lightning.models.sasrec import SASRec
from mmrec_lightning.models.vbpr import VBPR

__all__ = [
    "EASERecommender",
    "FREEDOM",
    "LightGCN",
    "MatrixFactorization",
    "MultimodalRecommender",
    "Popularity",
    "RecommenderModule",
    "SASRec",
    "VBPR",
]
