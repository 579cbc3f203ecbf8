"""MovieLens 100K (``u.data``, ``u.item``) and 1M (``ratings.dat``, ``movies.dat``), with optional posters and
extra item text.

    python -m mmrec_lightning prepare --source movielens --path raw/ml-1m --output data/ml-1m \\
        --images raw/ml-1m-posters --items_csv raw/ml-1m-overviews.csv --items_csv_text_columns '[overview]' \\
        --min_rating 4 --split loo

The layout is recognised by its files. A movie's text is its title (with ``--items_csv``: ``title: … |
overview: …``), its category its first genre (100K's genre "unknown" counts as none). MovieLens has no
images: ``--images`` names a folder of ``<movie id>.jpg`` posters, a missing one is counted and warned about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec_lightning.data.sources.base import SourceData
from mmrec_lightning.data.sources.pipeline import CommonOptions, RawSource, build
from mmrec_lightning.data.sources.readers import (
    FileRows,
    read_delimited,
    read_table,
    require_file,
    require_folder,
    require_ids,
    to_numbers,
    to_seconds,
)
from mmrec_lightning.errors import ConfigurationError

log = logging.getLogger(__name__)

RATING_FIELDS = ("user", "item", "rating", "timestamp")
# u.item: movie id | title | release date | video release date | IMDb URL | one 0/1 flag per genre
MOVIE_FIELDS_100K = ("item", "title", "release_date", "video_release_date", "imdb_url")
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRE = {"unknown", "(no genres listed)"}
ENCODING = "latin-1"  # the GroupLens files predate UTF-8 (titles such as "Misérables")


@dataclass(frozen=True)
class MovieLensOptions(CommonOptions):
    """MovieLens 100K or 1M.

    Args:
        path: the unpacked folder: ``u.data`` and ``u.item`` (100K) or ``ratings.dat`` and ``movies.dat`` (1M).
        images: a folder of posters named ``<movie id>.jpg``.
        items_csv: a CSV (or Parquet) file of more movie text, joined on the movie id.
        items_csv_id_column: the movie id column of ``--items_csv``.
        items_csv_text_columns: the ``--items_csv`` columns added to each movie's text, after its title.
    """

    path: str
    images: str | None = None
    items_csv: str | None = None
    items_csv_id_column: str = "movie_id"
    items_csv_text_columns: list[str] = field(default_factory=list)


def _ratings(path: Path, sep: str) -> pd.DataFrame:
    frame = read_delimited(path, sep, RATING_FIELDS, header=False, quoted=False)
    at = FileRows(path, 1)
    return pd.DataFrame(
        {
            "user": require_ids(frame["user"], "user id", at),
            "item": require_ids(frame["item"], "movie id", at),
            "rating": to_numbers(frame["rating"], "rating", at),
            "timestamp": to_seconds(frame["timestamp"], "timestamp", at),
        }
    )


def _genres_100k(folder: Path) -> tuple[str, ...]:
    """The genre flag columns of u.item, named by u.genre (``name|index`` lines) when it is there."""
    path = folder / "u.genre"
    if not path.is_file():
        return GENRES_100K
    lines = [line.rsplit("|", 1)[0] for line in path.read_text(encoding=ENCODING).splitlines() if line.strip()]
    return tuple(lines)


def _movies_100k(folder: Path) -> tuple[pd.DataFrame, Path]:
    path = require_file(folder / "u.item", "the MovieLens 100K movies")
    genres = _genres_100k(folder)
    frame = read_delimited(path, "|", [*MOVIE_FIELDS_100K, *genres], header=False, encoding=ENCODING, quoted=False)
    flags = frame[list(genres)].to_numpy() == "1"
    first = np.asarray(genres, dtype=object)[flags.argmax(axis=1)]
    category = np.where(flags.any(axis=1), first, None)
    items = pd.DataFrame({"item": require_ids(frame["item"], "movie id", FileRows(path, 1)), "title": frame["title"]})
    return items.assign(category=category), path


def _movies_1m(folder: Path) -> tuple[pd.DataFrame, Path]:
    path = require_file(folder / "movies.dat", "the MovieLens 1M movies")
    frame = read_delimited(path, "::", ("item", "title", "genres"), header=False, encoding=ENCODING, quoted=False)
    items = pd.DataFrame({"item": require_ids(frame["item"], "movie id", FileRows(path, 1)), "title": frame["title"]})
    return items.assign(category=frame["genres"].str.split("|").str[0]), path


LAYOUTS: dict[str, tuple[str, Callable[[Path], tuple[pd.DataFrame, Path]]]] = {
    "u.data": ("\t", _movies_100k),
    "ratings.dat": ("::", _movies_1m),
}


def _extra_text(items: pd.DataFrame, options: MovieLensOptions) -> pd.DataFrame:
    """Join ``--items_csv``'s text columns onto the movies; a repeated movie id keeps its first row."""
    path = require_file(options.items_csv, "--items_csv")
    columns, id_column = list(options.items_csv_text_columns), options.items_csv_id_column
    if not columns:
        raise ConfigurationError(f"--items_csv {path} needs --items_csv_text_columns, the columns of text to add")
    clash = sorted(set(columns) & {"title", "item", "category"})
    if clash:
        raise ConfigurationError(f"{path}: columns {clash} clash with the movie table's own; rename them there")
    frame, at = read_table(path, ",", [id_column, *columns])
    frame = frame[columns].assign(item=require_ids(frame[id_column], id_column, at))
    repeated = frame["item"].duplicated()
    if repeated.any():
        log.warning(
            "%s: %d rows repeat a movie id already seen (first: %r); keeping each id's first row",
            path,
            repeated.sum(),
            frame["item"][repeated].iloc[0],
        )
    return items.merge(frame[~repeated.to_numpy()], on="item", how="left")


def read(options: MovieLensOptions) -> SourceData:
    folder = require_folder(options.path, "--path")
    layout = next((name for name in LAYOUTS if (folder / name).is_file()), None)
    if layout is None:
        raise ConfigurationError(f"{folder}: no MovieLens ratings file (u.data for 100K, ratings.dat for 1M)")
    sep, read_movies = LAYOUTS[layout]
    interactions = _ratings(folder / layout, sep)
    items, items_path = read_movies(folder)
    items["category"] = items["category"].where(~items["category"].isin(NO_GENRE), None)
    text_columns = ["title"]
    if options.items_csv is not None:
        items = _extra_text(items, options)
        text_columns += options.items_csv_text_columns
    images = None
    if options.images is not None:
        images = require_folder(options.images, "--images")
        items["image_path"] = [str(images / f"{movie}.jpg") for movie in items["item"]]
    raw = RawSource(interactions, items, str(folder / layout), str(items_path), text_columns, image_root=images)
    return build("movielens", options, raw)
