"""What every source adapter hands to ``prepare``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass
class SourceData:
    """A source converted to the prepared schema, before it is written.

    ``items`` is an iterable of record batches so that images can be read or rendered lazily.
    ``metadata`` holds the source name, its options, how it was split and the category names.
    """

    interactions: pa.Table
    items: Iterable[pa.RecordBatch]
    users: pa.Table
    metadata: dict[str, Any] = field(default_factory=dict)
