"""The H&M Personalized Fashion Recommendations layout (Kaggle): ``articles.csv``, ``transactions_train.csv`` and
``images/<first 3 digits>/<article_id>.jpg``.

    python -m mmrec_lightning prepare --source hm --path raw/h-and-m --start_date 2020-08-01 --output data/hm \\
        --k_core 5 --split temporal

Article ids are 10-digit strings with leading zeros (``0108775015``); they are kept as such (an id saved without
its zeros is padded back), which is also the image's file name. An article's category is its
``product_type_name``, its text ``prod_name: … | detail_desc: …``. Transactions carry a day, not a time:
purchases of one day keep their file order. Without an ``images`` folder the articles have no images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec_lightning.data.sources.base import SourceData
from mmrec_lightning.data.sources.pipeline import CommonOptions, RawSource, build
from mmrec_lightning.data.sources.readers import (
    FileRows,
    read_delimited,
    require_file,
    require_folder,
    require_ids,
    to_seconds,
)
from mmrec_lightning.errors import ConfigurationError

ARTICLE_ID_DIGITS = 10
TEXT_COLUMNS = ("prod_name", "detail_desc")
ARTICLE_COLUMNS = ("article_id", *TEXT_COLUMNS, "product_type_name")
TRANSACTION_COLUMNS = ("t_dat", "customer_id", "article_id")


@dataclass(frozen=True)
class HMOptions(CommonOptions):
    """The H&M competition folder.

    Args:
        path: the folder holding ``articles.csv``, ``transactions_train.csv`` and ``images/``.
        start_date: keep only the transactions on or after this day (``YYYY-MM-DD``); the full file has 31M.
    """

    path: str
    start_date: str | None = None


def _article_ids(column: pd.Series, at: FileRows) -> pd.Series:
    ids = require_ids(column, "article_id", at)
    bad = np.flatnonzero(~ids.str.fullmatch(r"\d+").to_numpy(dtype=bool))
    if bad.size:
        raise ConfigurationError(f"{at(bad[0])}: article_id {ids.iloc[bad[0]]!r} is not a number")
    return ids.str.zfill(ARTICLE_ID_DIGITS)


def _start(start_date: str | None) -> int | None:
    if start_date is None:
        return None
    try:
        return int(pd.Timestamp(start_date, tz="UTC").timestamp())
    except ValueError:
        raise ConfigurationError(f"--start_date {start_date!r} is not a date (YYYY-MM-DD)") from None


def _transactions(path: Path, start: int | None) -> pd.DataFrame:
    frame = read_delimited(path, ",", TRANSACTION_COLUMNS)
    at = FileRows(path, 2)
    interactions = pd.DataFrame(
        {
            "user": require_ids(frame["customer_id"], "customer_id", at),
            "item": _article_ids(frame["article_id"], at),
            "timestamp": to_seconds(frame["t_dat"], "t_dat", at),
        }
    )
    if start is None:
        return interactions
    recent = interactions[interactions["timestamp"].to_numpy() >= start]
    if recent.empty:
        day = pd.Timestamp(start, unit="s").date()
        raise ConfigurationError(f"{path}: no transaction on or after --start_date {day}")
    return recent.reset_index(drop=True)


def read(options: HMOptions) -> SourceData:
    folder = require_folder(options.path, "--path")
    articles_path = require_file(folder / "articles.csv", "the H&M articles")
    transactions_path = require_file(folder / "transactions_train.csv", "the H&M transactions")
    start = _start(options.start_date)
    articles = read_delimited(articles_path, ",", ARTICLE_COLUMNS)
    ids = _article_ids(articles["article_id"], FileRows(articles_path, 2))
    items = articles[list(TEXT_COLUMNS)].assign(item=ids, category=articles["product_type_name"])
    images = folder / "images"
    if images.is_dir():  # the images are a separate, large download
        items["image_path"] = [str(images / article[:3] / f"{article}.jpg") for article in ids]
    raw = RawSource(
        _transactions(transactions_path, start),
        items,
        str(transactions_path),
        str(articles_path),
        TEXT_COLUMNS,
        image_root=str(images),
    )
    return build("hm", options, raw)
