"""``python -m mmrec_lightning prepare --source NAME --output DIR [source options]``: build a prepared dataset."""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
from jsonargparse import ArgumentParser
from tqdm import tqdm

from mmrec_lightning.data.schema import PreparedDataset, write_prepared
from mmrec_lightning.data.sources import SOURCES

PROG = "python -m mmrec_lightning prepare"


def _parser(source: str | None) -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Convert a raw dataset into the prepared format that training reads "
        f"(sources: {', '.join(sorted(SOURCES))}; `--source NAME --help` lists a source's options).",
    )
    parser.add_argument("--source", required=True, choices=sorted(SOURCES), help="the raw layout to read")
    parser.add_argument("--output", required=True, help="folder to write the prepared dataset to")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace an existing dataset at --output")
    if source in SOURCES:
        options, _ = SOURCES[source]
        parser.add_class_arguments(options, nested_key=None, as_group=True)
    return parser


def _list_options(options: type) -> set[str]:
    """The ``--name`` of every option of the source that takes a list."""
    hints = typing.get_type_hints(options)
    return {
        f"--{name}"
        for name, hint in hints.items()
        if typing.get_origin(hint) is list or any(typing.get_origin(arg) is list for arg in typing.get_args(hint))
    }


def as_typed_lists(argv: Sequence[str], list_options: set[str]) -> list[str]:
    """``argv`` with the values of each list option as people type them — ``--text_columns title overview``,
    as argparse's ``nargs="+"`` reads them — turned into the one JSON list jsonargparse reads; a value given
    already in list form (``'[title, overview]'``) is left as it is."""
    result, rest = [], list(argv)
    while rest:
        token = rest.pop(0)
        result.append(token)
        if token not in list_options:
            continue
        values = []
        while rest and not rest[0].startswith("--"):
            values.append(rest.pop(0))
        if len(values) == 1 and values[0].lstrip().startswith("["):
            result.append(values[0])
        elif values:
            result.append(json.dumps(values))
    return result


def _counted(split: dict) -> dict:
    """The split's metadata with its list of designated cold items shown by their number."""
    designated = split.get("designated_cold_items")
    return split if designated is None else {**split, "designated_cold_items": len(designated)}


def summary(dataset: PreparedDataset) -> str:
    """A human-readable account of what was prepared."""
    counts = dataset.metadata["counts"]
    lines = [
        f"prepared {dataset.path} ({dataset.metadata.get('source')})",
        f"  users {counts['users']:,}  items {counts['items']:,}",
        "  interactions " + "  ".join(f"{k} {v:,}" for k, v in counts["interactions"].items()),
        f"  items with image {counts['items_with_image']:,}  with text {counts['items_with_text']:,}  "
        f"without training interactions (cold) {counts['items_without_training_interactions']:,}",
        f"  split: {json.dumps(_counted(dataset.metadata.get('split', {})))}",
    ]
    for modality, copied in dataset.metadata.get("features", {}).items():
        lines.append(
            f"  {modality} features {copied['shape'][1]}-d for {copied['items_with_features']:,} items "
            f"(from {copied['source_file']})"
        )
    dropped = {reason: count for reason, count in dataset.metadata.get("dropped", {}).items() if count}
    lines.append("  dropped: " + (", ".join(f"{reason} {count:,}" for reason, count in dropped.items()) or "nothing"))
    return "\n".join(lines)


def with_progress(batches: Iterable[pa.RecordBatch | pa.Table]) -> Iterator[pa.RecordBatch | pa.Table]:
    """``batches`` unchanged, counted on a progress bar as they are written: reading and checking the items'
    images is the long part of ``prepare``. The bar shows on a terminal only, and never in CI."""
    in_ci = os.environ.get("CI", "").lower() in ("1", "true")
    with tqdm(desc="items", unit=" items", disable=True if in_ci else None) as bar:  # None: off without a TTY
        for batch in batches:
            yield batch
            bar.update(batch.num_rows)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--source")
    source = peek.parse_known_args(argv)[0].source
    parser = _parser(source)
    if source in SOURCES:
        argv = as_typed_lists(argv, _list_options(SOURCES[source][0]))
    config = parser.parse_args(argv)
    options_class, build = SOURCES[config.source]
    common = {"source", "output", "overwrite", "__path__"}
    options = options_class(**{k: v for k, v in config.as_dict().items() if k not in common})
    data = build(options)
    path = write_prepared(
        config.output,
        interactions=data.interactions,
        items=with_progress(data.items),
        users=data.users,
        metadata=data.metadata,
        features=data.features,
        overwrite=config.overwrite,
    )
    print(summary(PreparedDataset(path)))
