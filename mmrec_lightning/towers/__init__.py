"""The two towers of the multimodal recommender: the item tower (each modality encoded, projected and fused
into one item vector, with content neighbours as an optional modality) and the user tower (ID, history,
behaviour statistics) or, for sequential models, the sequence encoder (a causal transformer over the
history); and the item–item term scored beside them (EASE)."""

from mmrec_lightning.towers.content_neighbours import ContentNeighbours
from mmrec_lightning.towers.ease import EASE
from mmrec_lightning.towers.item import ItemEncoding, ItemTower
from mmrec_lightning.towers.sequence import SequenceEncoder, SequenceEncoderFactory
from mmrec_lightning.towers.user import UserTower

__all__ = [
    "EASE",
    "ContentNeighbours",
    "ItemEncoding",
    "ItemTower",
    "SequenceEncoder",
    "SequenceEncoderFactory",
    "UserTower",
]
