"""From raw tables to :class:`SourceData`: the filtering, id mapping, splitting and lazy image reading that every
real-data adapter shares.

An adapter reads its files into a :class:`RawSource` (raw string ids, optional timestamps, ratings and split;
an item table with text columns, a category name and an image path or bytes), with the help of
:mod:`.readers`, and calls :func:`build`. Its options dataclass inherits :class:`CommonOptions`, whose fields
become the flags ``--k_core``, ``--split`` ….

``build`` cleans the item text (:mod:`.text`) and applies, in order, each step counted in
``metadata["dropped"]``:

1. repeated item ids (the first row is kept) and interactions whose item is not in the item table;
2. items without an image or text, with their interactions (``--drop_items_without``);
3. ratings below ``--min_rating``; repeated (user, item) pairs (``--dedupe first``); the k-core (``--k_core``);

then maps raw ids to 0..n-1 in sorted order and splits the interactions (``--split``, :mod:`.splits`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa

from mmrec_lightning.data.schema import ITEMS_SCHEMA, SPLIT_CODES, image_problem
from mmrec_lightning.data.sources.base import SourceData
from mmrec_lightning.data.sources.readers import require_file
from mmrec_lightning.data.sources.splits import (
    TRAIN,
    choose_cold_items,
    cold_item_split,
    leave_one_out_split,
    per_user_random_split,
    temporal_split,
)
from mmrec_lightning.data.sources.text import clean_text, is_missing, join_text
from mmrec_lightning.errors import ConfigurationError

log = logging.getLogger(__name__)

SplitMethod = Literal["auto", "source", "random", "loo", "temporal", "cold"]
Modality = Literal["image", "text"]
Dedupe = Literal["first", "all"]
ITEM_BATCH_SIZE = 256
MAX_WARNINGS = 10  # per kind of problem; the rest are summed up in one line


@dataclass(frozen=True, kw_only=True)
class CommonOptions:
    """Filtering and splitting, shared by every source that reads real data.

    Args:
        k_core: keep only users and items with at least this many interactions, repeated until stable (0: off).
        min_rating: drop interactions rated below this (unrated ones too); null keeps every interaction.
        dedupe: ``first`` keeps each (user, item) pair's earliest interaction, ``all`` keeps the repeats.
        drop_items_without: drop the items lacking these modalities (``image``, ``text``) and their interactions.
        split: ``auto`` (the source's own split when it has one, else ``random``), ``source``, ``random`` (per user
            8:1:1 at random, at least one training item each), ``loo`` (per user: latest to test, second latest to
            valid), ``temporal`` (global time cuts at the train and train + valid quantiles), ``cold`` (a
            ``cold_item_fraction`` of the items only in valid/test, the rest per user at random).
        split_ratios: train, valid and test fractions (summing to 1) of the random, temporal and cold splits.
        cold_item_fraction: fraction of the items with interactions that ``--split cold`` keeps out of training.
        seed: seed of the random choices of the random and cold splits.
        cold_items: a file naming the designated cold items of a split of your own (``--split source``): a
            table with a header whose first column holds item ids. Recorded, and evaluated as the ``cold`` group
            in place of "the test items without a training interaction" (``--split cold`` records its own).
        max_unusable_fraction: stop when more than this fraction of the images given (or of the items' texts)
            cannot be used — missing, outside the image folder, empty; default: stop only when none can, rather
            than write a dataset whose modality is all placeholders.
    """

    k_core: int = 0
    min_rating: float | None = None
    dedupe: Dedupe = "first"
    drop_items_without: list[Modality] = field(default_factory=list)
    split: SplitMethod = "auto"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    cold_item_fraction: float = 0.1
    seed: int = 0
    cold_items: str | None = None
    max_unusable_fraction: float | None = None

    def __post_init__(self) -> None:
        # The CLI checks the Literal choices; code constructing options directly is checked here.
        for name, kind in (("dedupe", Dedupe), ("split", SplitMethod)):
            if getattr(self, name) not in get_args(kind):
                raise ConfigurationError(f"--{name} {getattr(self, name)!r}: expected one of {get_args(kind)}")
        unknown = sorted(set(self.drop_items_without) - set(get_args(Modality)))
        if unknown:
            raise ConfigurationError(f"--drop_items_without {unknown}: expected a subset of {get_args(Modality)}")
        if self.k_core < 0:
            raise ConfigurationError(f"--k_core must be >= 0, got {self.k_core}")
        ratios = tuple(float(r) for r in self.split_ratios)
        if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0 or abs(sum(ratios) - 1) > 1e-6:
            raise ConfigurationError(
                f"--split_ratios {list(self.split_ratios)}: expected train, valid, test fractions >= 0 summing "
                "to 1, with train > 0"
            )
        object.__setattr__(self, "split_ratios", ratios)  # the CLI may hand over a list
        if self.cold_items is not None and self.split not in ("source", "auto"):
            raise ConfigurationError("--cold_items names the cold items of a split of your own: use --split source")
        if self.max_unusable_fraction is not None and not 0 <= self.max_unusable_fraction <= 1:
            raise ConfigurationError(f"--max_unusable_fraction must be in [0, 1], got {self.max_unusable_fraction}")
        if not 0 <= self.cold_item_fraction < 1:
            raise ConfigurationError(f"--cold_item_fraction must be in [0, 1), got {self.cold_item_fraction}")
        if self.split == "cold" and ratios[1] + ratios[2] == 0:
            raise ConfigurationError("--split cold needs valid or test ratios above 0 for the cold items")


@dataclass
class RawSource:
    """A source's tables as read, before filtering, id mapping and splitting.

    ``interactions``: ``user`` and ``item`` (raw ids as strings), optional ``timestamp`` (int seconds; without
    it the row number stands for time), ``rating`` (float) and ``split`` ('train' / 'valid' / 'test').
    ``items``: ``item`` (raw id), the ``text_columns``, optional ``category`` (a name) and either ``image``
    (encoded bytes) or ``image_path`` (a file, read only when the item is written).
    The two file names are for messages; ``metadata`` is merged into the prepared dataset's metadata.
    ``image_root`` is the folder the user named for the images: an ``image_path`` that resolves outside it
    (``..`` segments, an absolute path, a symbolic link pointing out) is refused and never opened.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    interactions_file: str
    items_file: str
    text_columns: Sequence[str] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    image_root: str | Path | None = None


# --- images ---------------------------------------------------------------------------------------------------


def _warn_each(problems: list[str], what: str) -> None:
    for message in problems[:MAX_WARNINGS]:
        log.warning(message)
    if len(problems) > MAX_WARNINGS:
        log.warning("… and %d more %s", len(problems) - MAX_WARNINGS, what)


def _decode_problem(source: str | bytes) -> str | None:
    """None if ``source`` (a path or encoded bytes) decodes as an image, else why not."""
    if isinstance(source, bytes):
        return image_problem(source)
    try:
        return image_problem(Path(source).read_bytes())
    except FileNotFoundError:
        return "file not found"
    except OSError as error:
        return f"{type(error).__name__}: {error}"


def _confine_images(items: pd.DataFrame, root: str | Path | None, dropped: dict[str, int]) -> pd.DataFrame:
    """``items`` with every image path that resolves outside ``root`` removed (counted and warned about): a
    dataset is someone else's file, and its paths must not make ``prepare`` read anything else."""
    if "image_path" not in items:
        return items
    if root is None:
        raise ValueError("a source with image paths must name their root folder (RawSource.image_root)")
    inside = Path(root).resolve()
    refused = []
    paths = items["image_path"].tolist()
    for row, (raw_id, path) in enumerate(zip(items["item"].tolist(), paths, strict=True)):
        if path is not None and not Path(path).resolve().is_relative_to(inside):  # the adapters' root / name
            refused.append(f"item {raw_id!r}: image path {path} is outside the image folder {root}; refused")
            paths[row] = None
    _warn_each(refused, "image paths outside the image folder")
    _count(dropped, "images_outside_root", len(refused))
    return items.assign(image_path=pd.Series(paths, index=items.index, dtype=object)) if refused else items


def _check_usable(items: pd.DataFrame, raw: RawSource, limit: float | None, dropped: dict[str, int]) -> None:
    """Stops ``prepare`` when a modality the user asked for is (beyond ``limit``) unusable."""
    asked = []
    if "image_path" in items:
        paths = [path for path in items["image_path"] if path is not None]
        tried = len(paths) + dropped.get("images_outside_root", 0)  # those were given too, and refused
        unusable = tried - sum(Path(path).is_file() for path in paths)
        asked.append(("images", tried, unusable, "check --image_root / --images and the image column"))
    if raw.text_columns:
        empty = int(items["text"].isna().sum())
        asked.append(("texts", len(items), empty, f"check --text_columns {list(raw.text_columns)}"))
    for what, tried, unusable, fix in asked:
        if tried == 0:
            continue
        fraction = unusable / tried
        if (limit is None and unusable == tried) or (limit is not None and fraction > limit):
            raise ConfigurationError(
                f"{raw.items_file}: {unusable:,} of the {tried:,} {what} cannot be used ({fraction:.0%}); {fix}, "
                "or raise --max_unusable_fraction"
            )


def _image_problems(items: pd.DataFrame, decode: bool) -> tuple[np.ndarray, dict[int, str]]:
    """Which items have an image, and for each image file that is missing (with ``decode``: each image that does
    not decode) its row and a message naming the item and the path. Images are opened one at a time."""
    column = next((name for name in ("image", "image_path") if name in items), None)
    has = np.zeros(len(items), dtype=bool)
    if column is None:
        return has, {}
    problems: dict[int, str] = {}
    for row, (raw_id, source) in enumerate(zip(items["item"].tolist(), items[column].tolist(), strict=True)):
        if source is None:
            continue
        if decode:
            reason = _decode_problem(source)
        elif column == "image_path":
            reason = None if Path(source).is_file() else "file not found"
        else:
            reason = None  # encoded bytes are decoded by write_prepared
        has[row] = reason is None
        if reason is not None:
            where = source if column == "image_path" else "bytes"
            problems[row] = f"item {raw_id!r}: image {where} unusable ({reason})"
    return has, problems


def _read_image(raw_id: str, path: object, dropped: dict[str, int]) -> bytes | None:
    if is_missing(path):
        return None
    try:
        return Path(str(path)).read_bytes()
    except OSError as error:  # checked before, so this is rare: a file that vanished or cannot be read
        log.warning("item %r: image %s unreadable (%s); kept without an image", raw_id, path, error)
        dropped["missing_images"] = dropped.get("missing_images", 0) + 1
        return None


# --- filtering -------------------------------------------------------------------------------------------------


def _count(dropped: dict[str, int], reason: str, count: int) -> None:
    if count:
        dropped[reason] = dropped.get(reason, 0) + int(count)


def _items(raw: RawSource, dropped: dict[str, int]) -> pd.DataFrame:
    """The item table with one row per raw id, its cleaned text and category, and its image column."""
    items = raw.items
    if "item" not in items:
        raise ConfigurationError(f"{raw.items_file}: the item table has no item id column")
    items = items.assign(item=items["item"].astype(str).str.strip())
    repeated = items["item"].duplicated()
    if repeated.any():
        log.warning(
            "%s: %d rows repeat an item id already seen (first: %r); keeping each id's first row",
            raw.items_file,
            repeated.sum(),
            items["item"][repeated].iloc[0],
        )
        _count(dropped, "duplicate_items", repeated.sum())
        items = items[~repeated.to_numpy()]
    categories = items["category"].tolist() if "category" in items else [None] * len(items)
    columns = {
        "item": items["item"].tolist(),
        "text": join_text(items, list(raw.text_columns)),
        "category": [clean_text(name) for name in categories],
        **{
            column: [None if is_missing(value) else value for value in items[column].tolist()]
            for column in ("image", "image_path")
            if column in items
        },
    }
    # Object columns keep None as None (pandas would otherwise infer a string dtype holding NaN).
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})


def _interactions(raw: RawSource) -> pd.DataFrame:
    """The interactions with string ids, a timestamp (the row number when there is none) and the file order."""
    frame = raw.interactions
    for column in ("user", "item"):
        if column not in frame:
            raise ConfigurationError(f"{raw.interactions_file}: the interactions have no {column} id column")
    table = pd.DataFrame(
        {
            "user": frame["user"].astype(str).str.strip().to_numpy(dtype=object),
            "item": frame["item"].astype(str).str.strip().to_numpy(dtype=object),
            "order": np.arange(len(frame), dtype=np.int64),
        }
    )
    table["timestamp"] = frame["timestamp"].to_numpy(np.int64) if "timestamp" in frame else table["order"]
    if "rating" in frame:
        table["rating"] = frame["rating"].to_numpy(np.float64)
    if "split" in frame:
        codes = frame["split"].map(SPLIT_CODES | {str(code): code for code in SPLIT_CODES.values()})
        if codes.isna().any():
            row = int(np.flatnonzero(codes.isna().to_numpy())[0])
            bad = frame["split"].iloc[row]
            raise ConfigurationError(
                f"{raw.interactions_file}, interaction {row + 1}: split {bad!r} is not train, valid or test (0, 1, 2)"
            )
        table["split"] = codes.to_numpy(np.int8)
    return table


def _drop_unknown_items(
    interactions: pd.DataFrame, items: pd.DataFrame, raw: RawSource, dropped: dict[str, int]
) -> pd.DataFrame:
    known = interactions["item"].isin(items["item"]).to_numpy()
    if not known.any():
        raise ConfigurationError(
            f"none of the {len(interactions)} interactions in {raw.interactions_file} names an item of "
            f"{raw.items_file} (e.g. item {interactions['item'].iloc[0]!r}); check that their item ids match"
        )
    if not known.all():
        log.warning(
            "%s: %d interactions name an item missing from %s (e.g. %r); dropped",
            raw.interactions_file,
            (~known).sum(),
            raw.items_file,
            interactions["item"][~known].iloc[0],
        )
        _count(dropped, "interactions_with_unknown_item", (~known).sum())
    return interactions[known]


def _drop_items_without(
    items: pd.DataFrame, interactions: pd.DataFrame, modalities: Sequence[str], dropped: dict[str, int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    keep = np.ones(len(items), dtype=bool)
    if "text" in modalities:
        has_text = items["text"].notna().to_numpy()
        _count(dropped, "items_without_text", (keep & ~has_text).sum())
        keep &= has_text
    if "image" in modalities:
        # Decoding every image here (one at a time) is what makes "dropped" mean "no usable image".
        has_image, _ = _image_problems(items, decode=True)
        _count(dropped, "items_without_image", (keep & ~has_image).sum())
        keep &= has_image
    items = items[keep]
    known = interactions["item"].isin(items["item"]).to_numpy()
    _count(dropped, "interactions_of_dropped_items", (~known).sum())
    return items, interactions[known]


def _filter_min_rating(
    interactions: pd.DataFrame, min_rating: float | None, raw: RawSource, dropped: dict[str, int]
) -> pd.DataFrame:
    if min_rating is None:
        return interactions
    if "rating" not in interactions:
        raise ConfigurationError(f"--min_rating: {raw.interactions_file} has no ratings; leave --min_rating unset")
    keep = (interactions["rating"] >= min_rating).to_numpy()  # NaN (unrated) compares False: dropped
    _count(dropped, "interactions_below_min_rating", (~keep).sum())
    return interactions[keep]


def _dedupe(interactions: pd.DataFrame, dedupe: str, dropped: dict[str, int]) -> pd.DataFrame:
    if dedupe == "all":
        return interactions
    in_time = interactions.sort_values(["timestamp", "order"], kind="stable")
    repeated = in_time.duplicated(["user", "item"], keep="first")
    _count(dropped, "duplicate_interactions", repeated.sum())
    return in_time[~repeated.to_numpy()].sort_values("order")


def _k_core(
    items: pd.DataFrame, interactions: pd.DataFrame, k: int, dropped: dict[str, int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep users and items with at least ``k`` interactions, repeatedly: removing one can push another below."""
    if k <= 0:
        return items, interactions
    users, user_codes = np.unique(interactions["user"].to_numpy(dtype=str), return_inverse=True)
    item_codes = pd.Index(items["item"]).get_indexer(interactions["item"])
    keep = np.ones(len(interactions), dtype=bool)
    while True:
        user_counts = np.bincount(user_codes[keep], minlength=len(users))
        item_counts = np.bincount(item_codes[keep], minlength=len(items))
        still = keep & (user_counts[user_codes] >= k) & (item_counts[item_codes] >= k)
        if still.sum() == keep.sum():
            break
        keep = still
    _count(dropped, "k_core_interactions", (~keep).sum())
    _count(dropped, "k_core_users", (user_counts < k).sum())
    _count(dropped, "k_core_items", (item_counts < k).sum())
    return items[item_counts >= k], interactions[keep]


# --- ids and splits --------------------------------------------------------------------------------------------


def sorted_ids(ids: Sequence[str]) -> list[str]:
    """Unique raw ids in index order: numerically when every id is an integer (MovieLens movie 2 before movie
    10; MMRec's item ids stay their own indices), else as text."""
    unique = sorted(set(ids))
    if all(raw.isascii() and raw.isdigit() for raw in unique):
        unique.sort(key=lambda raw: (int(raw), raw))
    return unique


def _split(
    interactions: pd.DataFrame, users: np.ndarray, items: np.ndarray, options: CommonOptions, raw: RawSource
) -> tuple[np.ndarray, dict[str, Any]]:
    """Each interaction's split code by the method ``--split`` names, and what ``metadata["split"]`` records."""
    method = options.split
    if method == "auto":
        method = "source" if "split" in interactions else "random"
    if method == "source" and "split" not in interactions:
        raise ConfigurationError(
            f"--split source: {raw.interactions_file} has no split of its own; use random, loo, temporal or cold"
        )
    info: dict[str, Any] = {"method": method}
    if method != "source":  # a given split has no seed or ratios of ours
        info |= {"seed": options.seed, "ratios": list(options.split_ratios)}
    rng = np.random.default_rng(options.seed)
    times, order = interactions["timestamp"].to_numpy(), interactions["order"].to_numpy()
    if method == "source":
        split = interactions["split"].to_numpy(np.int8)
    elif method == "random":
        split = per_user_random_split(users, options.split_ratios, rng)
    elif method == "loo":
        split = leave_one_out_split(users, times, order)
    elif method == "temporal":
        split = temporal_split(times, options.split_ratios)
    else:
        chosen = choose_cold_items(items, options.cold_item_fraction, rng)
        split = cold_item_split(users, np.isin(items, chosen), options.split_ratios, rng)
        info["cold_items_chosen"] = len(chosen)
        info["cold_item_fraction"] = options.cold_item_fraction
        info["designated_cold_items"] = sorted(int(item) for item in chosen)
    return split, info


def _designated_cold_items(path: str, item_ids: list[str]) -> list[int]:
    """The item indices of the ids in the first column of the ``--cold_items`` table."""
    file = require_file(path, "--cold_items")
    try:
        frame = pd.read_csv(file, dtype=str, usecols=[0], keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError) as error:  # ValueError: not UTF-8
        raise ConfigurationError(f"{file}: not a table of item ids with a header ({error}); --cold_items") from None
    ids = frame.iloc[:, 0].str.strip()
    index = pd.Index(item_ids).get_indexer(ids)
    unknown = np.flatnonzero(index < 0)
    if unknown.size:
        raise ConfigurationError(
            f"{file} line {unknown[0] + 2}: item {ids.iloc[unknown[0]]!r} is not in the catalogue "
            f"({unknown.size} such rows; --cold_items)"
        )
    return sorted(set(index.tolist()))


# --- the whole ------------------------------------------------------------------------------------------------


def _item_batches(
    items: pd.DataFrame, categories: np.ndarray, dropped: dict[str, int], batch_size: int = ITEM_BATCH_SIZE
) -> Iterator[pa.RecordBatch]:
    """The item table in record batches; image files are read batch by batch, never all at once."""
    raw_ids, texts = items["item"].tolist(), items["text"].tolist()
    for lo in range(0, len(items), batch_size):
        hi = min(lo + batch_size, len(items))
        if "image_path" in items:
            paths = items["image_path"].iloc[lo:hi].tolist()
            images = [_read_image(raw_id, path, dropped) for raw_id, path in zip(raw_ids[lo:hi], paths, strict=True)]
        elif "image" in items:
            images = items["image"].iloc[lo:hi].tolist()
        else:
            images = [None] * (hi - lo)
        yield pa.record_batch(
            [
                pa.array(np.arange(lo, hi), pa.int32()),
                pa.array(raw_ids[lo:hi], pa.string()),
                pa.array(texts[lo:hi], pa.string()),
                pa.array(categories[lo:hi], pa.int32()),
                pa.array(images, pa.binary()),
            ],
            schema=ITEMS_SCHEMA,
        )


def build(name: str, options: CommonOptions, raw: RawSource) -> SourceData:
    """Filter, index and split a raw source (see the module docstring for the order of the steps).

    Args:
        name: the source's name, recorded in the metadata.
        options: the filtering and splitting options (the adapter's options, which inherit them).
        raw: the source's tables.
    """
    if raw.interactions.empty:
        raise ConfigurationError(f"{raw.interactions_file}: no interactions (only a header?)")
    if raw.items.empty:
        raise ConfigurationError(f"{raw.items_file}: no items (only a header?)")
    dropped: dict[str, int] = {}
    items = _confine_images(_items(raw, dropped), raw.image_root, dropped)
    interactions = _drop_unknown_items(_interactions(raw), items, raw, dropped)
    items, interactions = _drop_items_without(items, interactions, options.drop_items_without, dropped)
    interactions = _filter_min_rating(interactions, options.min_rating, raw, dropped)
    interactions = _dedupe(interactions, options.dedupe, dropped)
    items, interactions = _k_core(items, interactions, options.k_core, dropped)
    if interactions.empty:
        raise ConfigurationError(
            f"no interaction of {raw.interactions_file} is left after filtering (dropped: {dropped}); relax "
            "--k_core, --min_rating or --drop_items_without"
        )
    _check_usable(items, raw, options.max_unusable_fraction, dropped)
    if "image" not in options.drop_items_without:  # else every image was checked (and decoded) already
        has_image, problems = _image_problems(items, decode=False)
        _warn_each([f"{message}; kept without an image" for message in problems.values()], "missing images")
        _count(dropped, "missing_images", len(problems))
        if problems:
            usable = np.where(has_image, items["image_path"].to_numpy(dtype=object), None)
            items = items.assign(image_path=pd.Series(usable, index=items.index, dtype=object))

    item_ids, user_ids = sorted_ids(items["item"].tolist()), sorted_ids(interactions["user"].unique().tolist())
    items = items.iloc[pd.Index(items["item"]).get_indexer(item_ids)]
    item_index = pd.Index(item_ids).get_indexer(interactions["item"])
    user_index = pd.Index(user_ids).get_indexer(interactions["user"])
    category_names = sorted({name for name in items["category"] if name is not None})
    categories = pd.Index(category_names, dtype=object).get_indexer(items["category"].tolist())  # -1: none

    split, split_info = _split(interactions, user_index, item_index, options, raw)
    if options.cold_items is not None:
        split_info["designated_cold_items"] = _designated_cold_items(options.cold_items, item_ids)
    cold_items = np.setdiff1d(np.arange(len(item_ids)), item_index[split == TRAIN])
    split_info["cold_items"] = len(cold_items)
    rating = (
        pa.array(interactions["rating"].to_numpy(), pa.float32(), from_pandas=True)
        if "rating" in interactions
        else pa.nulls(len(split), pa.float32())
    )
    table = pa.table(
        {
            "user": pa.array(user_index, pa.int32()),
            "item": pa.array(item_index, pa.int32()),
            "timestamp": pa.array(interactions["timestamp"].to_numpy(), pa.int64()),
            "rating": rating,
            "split": pa.array(split, pa.int8()),
        }
    )
    metadata: dict[str, Any] = {
        "source": name,
        "source_options": asdict(options),
        "split": split_info,
        "categories": category_names,
        "cold_items": cold_items.tolist(),
        # write_prepared reads this only after the items are written, so the count of images that failed to
        # read while streaming (added by _item_batches) is included.
        "dropped": dropped,
        **raw.metadata,
    }
    if "timestamp" not in raw.interactions:
        metadata["timestamps"] = "row order: the source has no times"
    users = pa.table({"user": pa.array(np.arange(len(user_ids)), pa.int32()), "raw_id": pa.array(user_ids)})
    return SourceData(
        interactions=table, items=_item_batches(items, categories, dropped), users=users, metadata=metadata
    )
