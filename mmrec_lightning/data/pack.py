"""``python -m mmrec_lightning pack --data DATASET [--output DIR_OR_URL]``: write a prepared dataset's item images and
text as litData shards, for training runs that stream them (``data.packed_items``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import ArgumentParser

from mmrec_lightning.data.packed import PACKED_FOLDER, pack_items
from mmrec_lightning.data.schema import PreparedDataset

PROG = "python -m mmrec_lightning pack"


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Pack every item's stored image and text into litData chunks, in item order, for training to "
        "stream from a local folder or an object store (data.packed_items: the output).",
    )
    parser.add_argument("--data", type=str, required=True, help="folder of the prepared dataset")
    parser.add_argument(
        "--output",
        type=str | None,
        default=None,
        help=f"local folder or object-store URL (s3://bucket/prefix) to write to; default <data>/{PACKED_FOLDER}",
    )
    parser.add_argument("--chunk_bytes", type=str, default="64MB", help="size of a chunk, the unit fetched and cached")
    parser.add_argument("--num_workers", type=int, default=1, help="processes writing chunks (item order is kept)")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace items packed at --output before")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    config = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    output = pack_items(config.data, config.output, config.chunk_bytes, config.num_workers, config.overwrite)
    counts = PreparedDataset(config.data).metadata["counts"]
    print(
        f"packed {counts['items']:,} items ({counts['items_with_image']:,} with image, "
        f"{counts['items_with_text']:,} with text) into {output}; train on them with --data.packed_items {output}"
    )
