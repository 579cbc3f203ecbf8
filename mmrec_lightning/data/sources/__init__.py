"""Source adapters for ``prepare``: each turns one raw layout into :class:`SourceData`.

A source is an options dataclass (its typed, documented fields become the command-line options) and a
function from those options to :class:`SourceData`. The real-data adapters share their file readers
(:mod:`.readers`) and their filtering and splitting options and steps (:mod:`.pipeline`, which cleans text with
:mod:`.text` and splits with :mod:`.splits`, the split functions the synthetic source uses too).
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
