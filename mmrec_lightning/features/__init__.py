"""Precomputed item features, in one home: the files beside a prepared dataset (:mod:`.files`), the row
matrices they are written as (:mod:`.matrices`), the ``extract-features`` command that computes them
(:mod:`.extract`), and :class:`ItemFeatures`, which stands in for an encoder (:mod:`.encoder`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmrec_lightning.features.files import feature_file, read_features, save_features

if TYPE_CHECKING:
    from mmrec_lightning.features.encoder import ItemFeatures

__all__ = ["ItemFeatures", "feature_file", "read_features", "save_features"]


def __getattr__(name: str) -> Any:
    # ItemFeatures is loaded on first use: `prepare` writes feature files and must start without torch
    if name == "ItemFeatures":
        from mmrec_lightning.features.encoder import ItemFeatures

        return ItemFeatures
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
