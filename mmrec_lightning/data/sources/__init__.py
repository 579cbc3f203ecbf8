"""Source adapters for ``prepare``: each turns one raw layout into :class:`SourceData`.

A source is an options dataclass (its typed, documented fields become the command-line options) and a
function from those options to :class:`SourceData`.
"""

from collections.abc import Callable
from typing import Any

from mmrec_lightning.data.sources import lattice
from mmrec_lightning.data.sources.base import SourceData
from mmrec_lightning.data.sources.synthetic import SyntheticSpec, generate

SOURCES: dict[str, tuple[type, Callable[[Any], SourceData]]] = {
    "synthetic": (SyntheticSpec, generate),
    "lattice": (lattice.LatticeOptions, lattice.read),
}

__all__ = ["SOURCES", "SourceData"]
