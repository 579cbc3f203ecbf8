"""Any interactions table (CSV or Parquet) with an optional item table, columns named by options.

    python -m mmrec_lightning prepare --source table --output data/shop \\
        --interactions raw/clicks.csv --user_column customer --item_column sku --timestamp_column date \\
        --items raw/products.parquet --text_columns '[title, overview]' --category_column department \\
        --image_column picture --image_root raw/pictures --k_core 5 --split temporal

A file ending in ``.parquet`` or ``.pq`` is read as Parquet, anything else as delimited text with a header.
Without ``--items`` the items are the ids in the interactions, without text or images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmrec_lightning.data.sources.base import SourceData
from mmrec_lightning.data.sources.pipeline import CommonOptions, RawSource, build
from mmrec_lightning.data.sources.readers import (
    read_table,
    require_file,
    require_folder,
    require_ids,
    to_numbers,
    to_seconds,
)
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.files import SourceFeatures, source_features


@dataclass(frozen=True)
class TableOptions(CommonOptions):
    """An interactions table and an optional item table, CSV or Parquet, with named columns.

    Args:
        interactions: the interactions file (``.parquet`` / ``.pq``, or delimited text with a header).
        items: the item file; default: the items are the ids in the interactions, without text or images.
        user_column: the user id column of the interactions.
        item_column: the item id column, in both files.
        timestamp_column: the time of each interaction, in seconds or as ISO dates; default: the row order.
        rating_column: the rating of each interaction, if there is one.
        text_columns: the item text columns; several are joined as ``name: text | name: text``.
        image_column: the item image column: file paths relative to ``--image_root`` (or encoded bytes in Parquet).
        image_root: the folder the image paths are relative to; default: the items file's folder.
        category_column: the item category name column.
        split_column: a column holding each interaction's split (``train`` / ``valid`` / ``test``, or 0 / 1 / 2),
            kept with ``--split source`` (or ``auto``).
        delimiter: the field separator of text files.
        encoding: the encoding of text files (``utf-8``, with or without a byte-order mark; ``latin-1``,
            ``cp1252``, …).
        image_features: a precomputed image feature matrix (``.npy``, or ``.pt`` saved with ``torch.save``) with
            one row per row of ``--items``, in that order; copied into the dataset's ``features/``.
        text_features: a precomputed text feature matrix, as ``image_features``.
    """

    interactions: str
    items: str | None = None
    user_column: str = "user_id"
    item_column: str = "item_id"
    timestamp_column: str | None = None
    rating_column: str | None = None
    text_columns: list[str] = field(default_factory=list)
    image_column: str | None = None
    image_root: str | None = None
    category_column: str | None = None
    split_column: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8-sig"
    image_features: str | None = None
    text_features: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        item_columns = (
            ("--text_columns", self.text_columns),
            ("--image_column", self.image_column),
            ("--category_column", self.category_column),
            ("--image_features", self.image_features),
            ("--text_features", self.text_features),
        )
        named = [flag for flag, value in item_columns if value]
        if self.items is None and named:
            raise ConfigurationError(f"{', '.join(named)} describe items: give the item file with --items")


def _interactions(options: TableOptions) -> tuple[pd.DataFrame, Path]:
    path = require_file(options.interactions, "--interactions")
    named = {"user": options.user_column, "item": options.item_column}
    named |= {"timestamp": options.timestamp_column, "rating": options.rating_column, "split": options.split_column}
    named = {key: column for key, column in named.items() if column is not None}
    frame, at = read_table(path, options.delimiter, list(named.values()), options.encoding, "--encoding")
    table = pd.DataFrame(
        {
            "user": require_ids(frame[options.user_column], options.user_column, at),
            "item": require_ids(frame[options.item_column], options.item_column, at),
        }
    )
    if options.timestamp_column is not None:
        table["timestamp"] = to_seconds(frame[options.timestamp_column], options.timestamp_column, at)
    if options.rating_column is not None:
        table["rating"] = to_numbers(frame[options.rating_column], options.rating_column, at)
    if options.split_column is not None:
        table["split"] = frame[options.split_column].astype(str).str.strip().str.lower()
    return table, path


def _items(options: TableOptions, path: Path) -> pd.DataFrame:
    optional = [options.image_column, options.category_column]
    columns = [options.item_column, *options.text_columns, *(column for column in optional if column is not None)]
    frame, at = read_table(path, options.delimiter, columns, options.encoding, "--encoding")
    items = frame[list(options.text_columns)].assign(item=require_ids(frame[options.item_column], "item id", at))
    if options.category_column is not None:
        items["category"] = frame[options.category_column]
    if options.image_column is not None:
        images = frame[options.image_column].tolist()
        if isinstance(next((value for value in images if isinstance(value, (bytes, str))), None), bytes):
            items["image"] = images
        else:
            root = Path(options.image_root) if options.image_root is not None else path.parent
            require_folder(root, "--image_root")
            items["image_path"] = [str(root / name) if isinstance(name, str) else None for name in images]
    return items


def read(options: TableOptions) -> SourceData:
    interactions, interactions_path = _interactions(options)
    if options.items is None:
        items_path = interactions_path
        items = pd.DataFrame({"item": interactions["item"].unique()})
    else:
        items_path = require_file(options.items, "--items")
        items = _items(options, items_path)
    root = options.image_root if options.image_root is not None else str(items_path.parent)
    raw = RawSource(interactions, items, str(interactions_path), str(items_path), options.text_columns, image_root=root)
    data = build("table", options, raw)
    data.features = _features(options, items, items_path)
    return data


def _features(options: TableOptions, items: pd.DataFrame, items_path: Path) -> dict[str, SourceFeatures]:
    """The feature matrices named by the options, their rows in the order of the item file's rows."""
    row_of: dict[str, int] = {}
    for row, raw in enumerate(items["item"]):
        row_of.setdefault(raw, row)  # a repeated id keeps its first row, as the item table does
    rows_are = f"one row per item of {items_path.name}, in its row order"
    return {
        modality: source_features(path, f"--{modality}_features", len(items), rows_are, row_of)
        for modality, path in (("image", options.image_features), ("text", options.text_features))
        if path is not None
    }
