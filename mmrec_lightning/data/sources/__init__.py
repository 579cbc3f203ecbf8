"""Source adapters for ``prepare``: each turns one raw layout into :class:`SourceData`.

A source is an options dataclass (its typed, documented fields become the command-line options) and a
function from those options to :class:`SourceData`. The real-data adapters share their filtering and
splitting options and steps (:mod:`.pipeline`).
"""

from collections.abc import Callable
from typing import Any

from mmrec_lightning.data.sources import amazon, hm, lattice, mmrec, movielens, table
from mmrec_lightning.data.sources.base import SourceData
from mmrec_lightning.data.sources.synthetic import SyntheticSpec, generate

SOURCES: dict[str, tuple[type, Callable[[Any], SourceData]]] = {
    "synthetic": (SyntheticSpec, generate),
    "lattice": (lattice.LatticeOptions, lattice.read),
    "mmrec": (mmrec.MMRecOptions, mmrec.read),
    "movielens": (movielens.MovieLensOptions, movielens.read),
    "amazon": (amazon.AmazonOptions, amazon.read),
    "hm": (hm.HMOptions, hm.read),
    "table": (table.TableOptions, table.read),
}

__all__ = ["SOURCES", "SourceData"]
