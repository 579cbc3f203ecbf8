"""Item images from packed litData shards against one JPEG file per item, on the same disk.

    python benchmarks/packed_images.py [--items 3000] [--distinct 200] [--source-size 256] [--size 224] [--passes 1]

Writes a synthetic catalogue's images (``--distinct`` drawn, repeated over ``--items``) three ways into a
temporary folder: one JPEG file per item (``<item>.jpg``, as raw sources hold them), the prepared dataset's
``items.arrow`` (the loader's default) and litData shards written by ``pack`` (``data.packed_items``) — the same
bytes in all three. Each arm fetches the stored images of a batch of
items in random order (the catalogue shuffled once, as training touches it), then decodes them and runs the
model's training transform (``TimmImageEncoder.transform(True)``, random-resized crop to ``size`` px), as
``ItemContent.load`` does. The three take turns on each batch in one process on one thread — one data-loader
worker each, so the same workers — and the ratio is the median over turns of the ratios within a turn (see
``data_loading.py``). Fetching alone is timed the same way.

Twice: with the files in the page cache (warm: read once, as on a second epoch), and cold — before each batch,
untimed, the files that arm reads are dropped from the page cache (``posix_fadvise(DONTNEED)``, which needs no
privileges), so every batch reads the disk, as a first epoch or a catalogue larger than memory does. The disk is
local; a network file system or an object store adds a round trip per file to the per-file arm.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from data_loading import interleaved, loading_parser, paired_ratio
from peers import machine
from results_file import publish

from mmrec_lightning.data.items import decode_image, image_batch
from mmrec_lightning.data.packed import PackedItems, pack_items
from mmrec_lightning.data.schema import PreparedDataset, write_prepared
from mmrec_lightning.data.sources.synthetic import SyntheticSpec, generate
from mmrec_lightning.encoders.image import TimmImageEncoder

ARMS = ("files", "arrow", "packed")
LABELS = {"files": "one JPEG file per item", "arrow": "items.arrow (default)", "packed": "packed litData shards"}


def write_copies(folder: Path, items: int, distinct: int, source_size: int) -> tuple[Path, Path, Path]:
    """A catalogue's images as a prepared dataset, one file per item and packed shards: ``distinct`` synthetic
    product images (drawing one takes longer than decoding it 20 times), item ``i`` showing image ``i % distinct``."""
    data = generate(SyntheticSpec(users=50, items=distinct, image_size=source_size))
    drawn = pa.Table.from_batches(list(data.items))
    rows = [i % distinct for i in range(items)]
    catalogue = drawn.take(pa.array(rows))
    for name, values in (
        ("item", pa.array(range(items), pa.int32())),
        ("raw_id", pa.array([f"{i}" for i in range(items)])),
    ):
        catalogue = catalogue.set_column(catalogue.schema.get_field_index(name), name, values)
    dataset = write_prepared(
        folder / "dataset", interactions=data.interactions, items=[catalogue], users=data.users, metadata=data.metadata
    )
    files = folder / "jpegs"
    files.mkdir()
    for item, image in enumerate(PreparedDataset(dataset).items.column("image").to_pylist()):
        if image:
            (files / f"{item}.jpg").write_bytes(image)
    return dataset, files, Path(pack_items(dataset, str(folder / "packed")))


class Stores:
    """The three copies of the images, opened for reading."""

    def __init__(self, dataset: Path, files: Path, packed: Path) -> None:
        self.paths = (dataset, files, packed)
        self.reopen()

    def reopen(self) -> None:
        """Open the dataset and the shards afresh, so that no page of them stays mapped: a mapped page is not
        dropped from the page cache. Reading an item from each checks its image against the dataset's once."""
        dataset, _, packed = self.paths
        self.prepared = PreparedDataset(dataset)
        self.column = self.prepared.items.column("image")
        self.shards = PackedItems(str(packed))
        self.shards.read([0], self.prepared)
        gc.collect()  # unmap what the previous ones mapped

    def fetch(self, arm: str, items: list[int]) -> list[bytes | None]:
        """The stored images of ``items`` (None where an item has none) as ``arm`` reads them."""
        if arm == "arrow":
            return [self.column[item].as_py() for item in items]
        if arm == "packed":
            return self.shards.read(items, self.prepared)["image"]
        files = self.paths[1]
        images = []
        for item in items:
            try:
                images.append((files / f"{item}.jpg").read_bytes())
            except FileNotFoundError:  # the item has no image
                images.append(None)
        return images


def evict(paths: list[Path]) -> None:
    """Drop ``paths`` from the page cache (they are clean: written and synced)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_by(dataset: Path, files: Path, packed: Path, batches: list[list[int]]) -> dict[str, Callable[[int], list]]:
    """The files each arm reads for batch ``b``."""
    jpegs = [[files / f"{item}.jpg" for item in batch if (files / f"{item}.jpg").exists()] for batch in batches]
    chunks = sorted(packed.glob("*.bin"))
    return {
        "files": lambda b: jpegs[b],
        "arrow": lambda b: [dataset / "items.arrow"],
        "packed": lambda b: chunks,
    }


def measure(
    stores: Stores,
    transform: Callable,
    batches: list[list[int]],
    passes: int,
    reads: dict[str, Callable[[int], list]],
) -> dict[str, dict[str, list[float]]]:
    """Seconds per item of each arm on each turn: fetching alone, and fetching, decoding and transforming; with the
    files in the page cache and with the files of the batch dropped from it."""

    def load(name: str) -> Callable[[int], int]:
        def run(b: int) -> int:
            fetched = stores.fetch(name, batches[b])
            image_batch([decode_image(data, transform.min_side) if data else None for data in fetched], transform)
            return len(batches[b])

        return run

    def fetch_only(name: str) -> Callable[[int], int]:
        return lambda b: len(stores.fetch(name, batches[b]))

    def cold(name: str, b: int) -> None:
        stores.reopen()
        evict(reads[name](b))

    fetch_arms = {name: fetch_only(name) for name in ARMS}
    load_arms = {name: load(name) for name in ARMS}
    os.sync()  # only clean pages can be dropped
    return {
        "warm_fetch": interleaved(fetch_arms, len(batches), passes),
        "warm_decode": interleaved(load_arms, len(batches), passes),
        "cold_fetch": interleaved(fetch_arms, len(batches), passes, cold),
        "cold_decode": interleaved(load_arms, len(batches), passes, cold),
    }


def summarise(per_item: dict[str, dict[str, list[float]]]) -> dict:
    """Items per second of each arm (median turn) and the paired ratios against one file per item."""
    return {
        kind: {
            "items_per_s": {arm: 1 / float(np.median(times[arm])) for arm in ARMS},
            "over_files": {arm: paired_ratio(times[arm], times["files"]) for arm in ARMS},
        }
        for kind, times in per_item.items()
    }


def table(result: dict) -> str:
    lines = [
        f"item images, one thread, {result['items']} items in random order, {result['source_size']}px JPEG -> "
        f"{result['size']}px training transform, batches of {result['batch_size']}, {result['turns']} turns; "
        f"1-min load average {result['load_average']:.2f}",
        f"{'':28}{'fetch items/s':>15}{'/ files':>9}{'+ decode items/s':>18}{'/ files':>9}",
    ]
    for cache in ("warm", "cold"):
        fetch, decode = result[f"{cache}_fetch"], result[f"{cache}_decode"]
        lines += [
            f"{cache} page cache",
            *(
                f"  {LABELS[arm]:26}{fetch['items_per_s'][arm]:>15.0f}{fetch['over_files'][arm]:>9.2f}"
                f"{decode['items_per_s'][arm]:>18.0f}{decode['over_files'][arm]:>9.2f}"
                for arm in ARMS
            ),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = loading_parser(__doc__, items=3000, passes=1, output="packed_images.json")
    parser.add_argument("--distinct", type=int, default=200, help="distinct images drawn, repeated over the items")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a data-loader worker process

    transform = TimmImageEncoder("efficientnet_lite0", image_size=args.size).transform(True)
    order = np.random.default_rng(0).permutation(args.items).tolist()
    batches = [order[lo : lo + args.batch_size] for lo in range(0, args.items, args.batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        dataset, files, packed = write_copies(Path(tmp), args.items, args.distinct, args.source_size)
        written = time.perf_counter() - start
        sizes = {
            "files": sum(path.stat().st_size for path in files.iterdir()),
            "packed": sum(path.stat().st_size for path in packed.iterdir()),
        }
        reads = read_by(dataset, files, packed, batches)
        per_item = measure(Stores(dataset, files, packed), transform, batches, args.passes, reads)
    result = {
        "machine": machine(),
        "items": args.items,
        "distinct_images": args.distinct,
        "source_size": args.source_size,
        "size": args.size,
        "batch_size": args.batch_size,
        "turns": args.passes * len(batches),
        **summarise(per_item),
        "bytes": sizes,
        "setup_seconds": written,
        "load_average": os.getloadavg()[0],
    }
    publish(table(result), result, args.output)
    return result


if __name__ == "__main__":
    main()
