"""Amazon review dumps (McAuley et al., 2014 and 2018): one JSON record per line, gzipped or not.

    python -m mmrec_lightning prepare --source amazon --output data/baby \\
        --reviews raw/reviews_Baby_5.json.gz --metadata raw/meta_Baby.json.gz --images raw/baby-images --k_core 5

A review gives ``reviewerID``, ``asin``, ``overall`` (the rating) and ``unixReviewTime``. The metadata gives
each ``asin`` its ``title`` and ``description`` (a string or a list; the item text is ``title: … |
description: …`` with HTML removed) and its category: the last (most specific) name of the first path in
2014's ``categories``, or the first name of 2018's flat ``category`` list. The 2014 metadata is written as
Python literals, not JSON; both are read. The image URLs are not fetched: ``--images`` names a folder of
``<asin>.jpg`` files.
"""

from __future__ import annotations

import ast
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd

from mmrec_lightning.data.sources.base import SourceData
from mmrec_lightning.data.sources.pipeline import CommonOptions, RawSource, build
from mmrec_lightning.data.sources.readers import require_file, require_folder
from mmrec_lightning.errors import ConfigurationError

REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class AmazonOptions(CommonOptions):
    """An Amazon review dump with its metadata.

    Args:
        reviews: the reviews, one JSON record per line (gzipped or not).
        metadata: the item metadata, one JSON record (2018) or Python dict literal (2014) per line.
        images: a folder of item images named ``<asin>.jpg``.
    """

    reviews: str
    metadata: str
    images: str | None = None


def _open(path: Path) -> IO[str]:
    with path.open("rb") as file:
        gzipped = file.read(2) == GZIP_MAGIC  # by content, not by name: the dumps are renamed often
    return gzip.open(path, "rt", encoding="utf-8") if gzipped else path.open(encoding="utf-8")


def _parse(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        try:  # the 2014 metadata: Python literals ('single quotes', True)
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ConfigurationError(f"{path} line {number}: neither a JSON record nor a Python dict") from None
    if not isinstance(record, dict):
        raise ConfigurationError(f"{path} line {number}: expected a record ({{...}}), got {type(record).__name__}")
    return record


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-empty line."""
    try:
        with _open(path) as file:
            for number, line in enumerate(file, start=1):
                if line.strip():
                    yield number, _parse(line, path, number)
    except (OSError, EOFError) as error:  # a truncated or corrupt gzip file
        raise ConfigurationError(f"{path}: cannot be read ({error})") from None
    except UnicodeDecodeError as error:
        raise ConfigurationError(f"{path}: not UTF-8 text ({error.reason})") from None


def _number(record: dict[str, Any], key: str, path: Path, line: int) -> float:
    try:
        return float(record[key])
    except (TypeError, ValueError):
        raise ConfigurationError(f"{path} line {line}: {key} {record[key]!r} is not a number") from None


def _reviews(path: Path) -> pd.DataFrame:
    rows = []
    for line, record in _records(path):
        missing = [key for key in REVIEW_FIELDS if key not in record]
        if missing:
            raise ConfigurationError(f"{path} line {line}: no {', '.join(missing)} (a review needs {REVIEW_FIELDS})")
        rating, time = _number(record, "overall", path, line), _number(record, "unixReviewTime", path, line)
        rows.append((str(record["reviewerID"]), str(record["asin"]), rating, int(time)))
    if not rows:
        raise ConfigurationError(f"{path} holds no reviews")
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def _category(record: dict[str, Any]) -> object:
    """The most specific name of the first category path (2014), or the first name of a flat list (2018)."""
    paths = record.get("categories") or record.get("category")
    if not isinstance(paths, list) or not paths:
        return None
    first = paths[0]
    if isinstance(first, list):
        return first[-1] if first else None
    return first


def _items(path: Path) -> pd.DataFrame:
    rows = []
    for line, record in _records(path):
        if "asin" not in record:
            raise ConfigurationError(f"{path} line {line}: no asin (every metadata record needs one)")
        rows.append((str(record["asin"]), record.get("title"), record.get("description"), _category(record)))
    if not rows:
        raise ConfigurationError(f"{path} holds no item metadata")
    return pd.DataFrame(rows, columns=["item", "title", "description", "category"], dtype=object)


def read(options: AmazonOptions) -> SourceData:
    reviews_path = require_file(options.reviews, "--reviews")
    items_path = require_file(options.metadata, "--metadata")
    items = _items(items_path)
    images = None
    if options.images is not None:
        images = require_folder(options.images, "--images")
        items["image_path"] = [str(images / f"{asin}.jpg") for asin in items["item"]]
    text = ["title", "description"]
    raw = RawSource(_reviews(reviews_path), items, str(reviews_path), str(items_path), text, image_root=images)
    return build("amazon", options, raw)
