"""What every source adapter hands to ``prepare``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mmrec_lightning.features.files import SourceFeatures


@dataclass
class SourceData:
    """A source converted to the prepared schema, before it is written.

    ``items`` is an iterable of record batches so that images can be read or rendered lazily.
    ``metadata`` holds the source name, its options, how it was split and the category names.
    ``features`` holds item feature matrices the source ships (modality -> file), copied by ``prepare``.
    """

    interactions: pa.Table
    items: Iterable[pa.RecordBatch]
    users: pa.Table
    metadata: dict[str, Any] = field(default_factory=dict)
    features: dict[str, SourceFeatures] = field(default_factory=dict)
