"""Serving artefacts: user and item vectors with nearest-neighbour indexes (``export``, :class:`VectorExporter`),
and the queries answered from them (``recommend``)."""

from __future__ import annotations

from typing import Any

__all__ = ["VectorExporter"]


def __getattr__(name: str) -> Any:
    """``VectorExporter`` on first use: it needs Lightning, which the readers of an export (the ``serve``
    command's search workers) never load."""
    if name == "VectorExporter":
        from mmrec_lightning.export.exporter import VectorExporter

        return VectorExporter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
