"""What the models that read precomputed item features (VBPR, FREEDOM) share: checking the feature arguments
and projecting the features of a batch of items."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmrec_lightning.encoders.features import ItemFeatures
from mmrec_lightning.errors import ConfigurationError


def checked_features(num_items: int, **modalities: ItemFeatures | None) -> dict[str, ItemFeatures]:
    """The feature matrices that are set, by modality (the model argument ``<modality>_features``), in the
    order given; each must have one row per item, and at least one must be set."""
    given = {modality: matrix for modality, matrix in modalities.items() if matrix is not None}
    if not given:
        names = " or ".join(f"model.{modality}_features" for modality in modalities)
        raise ConfigurationError(
            f"{names}: set at least one, e.g. {{class_path: mmrec_lightning.encoders.features.ItemFeatures, "
            "init_args: {path: <dataset>/features/image_feat.npy}}"
        )
    for modality, matrix in given.items():
        matrix.check_rows(num_items, f"model.{modality}_features")
    return given


GATHER_ROWS = 256  # items whose features are gathered at once when a batch is projected


def project(
    features: ItemFeatures, items: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(features(items), weight, bias)``: the projected features of ``items``, or of every item when
    None. A batch's rows are gathered ``GATHER_ROWS`` at a time: blocks of a few MB are reused by the
    allocator, whereas a batch's whole block (tens of MB for 4,096-d features) is mapped afresh every step,
    and faulting its pages in cost as much as the product itself on CPU. (``index_select`` rather than
    ``features(chunk)``'s indexing: it copies rows faster.)"""
    if items is None:
        return F.linear(features.matrix, weight, bias)
    chunks = items.split(GATHER_ROWS)
    return torch.cat([F.linear(features.matrix.index_select(0, chunk), weight, bias) for chunk in chunks])
