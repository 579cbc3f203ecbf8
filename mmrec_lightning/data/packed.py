"""Item content packed into litData's chunk format, for clusters that stream it from an object store.

``python -m mmrec_lightning pack`` (:mod:`.pack`) writes one sample per item, in item order — its index, raw id,
stored image bytes and text — with ``litdata.optimize``; :class:`PackedItems` reads them back by item index through
``litdata.StreamingDataset``, from a local folder or a URL (``s3://``, ``gs://``, ``azure://`` …) whose chunks it
fetches into a local cache as items in them are first read. The image is the encoded file exactly as
``items.arrow`` holds it, so decoding and augmentation, hence batches, are the same whichever of the two is read.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrec_lightning.data.schema import PreparedDataset, PreparedDatasetError
from mmrec_lightning.errors import ConfigurationError, reason

if TYPE_CHECKING:  # litData (and boto3 with it) is imported only by runs that pack or read packed items
    from litdata import StreamingDataset

PACKED_FOLDER = "packed"  # where `pack` writes, inside the dataset, unless told otherwise
INDEX_FILE = "index.json"  # litData writes it last: a folder without it holds no complete shards


def is_url(location: str) -> bool:
    """Whether ``location`` names an object store (``s3://…``) or litData's stand-in for one (``local:…``)."""
    return "://" in location or location.startswith("local:")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class _ItemSample:
    """The sample ``optimize`` writes for an item, run in its worker processes: it holds only the dataset's path
    until first called, so it pickles into them cheaply and each opens its own memory map."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._dataset: PreparedDataset | None = None

    def __call__(self, item: int) -> tuple[int, str, bytes, str]:
        if self._dataset is None:
            self._dataset = PreparedDataset(self.path)
        raw_id, image, text = (self._dataset.items.column(name)[item].as_py() for name in ("raw_id", "image", "text"))
        # A tuple, not a dict: litData stores dict samples as an Arrow table that it decodes 256 rows at a time,
        # which makes reading one item at random 50 times slower. Every sample must have the same types, so a
        # missing image or text is stored empty; both read back as None, as `prepare` stores them (never empty).
        return item, raw_id, image or b"", text or ""


def pack_items(
    data: str | Path,
    output: str | None = None,
    chunk_bytes: str = "64MB",
    num_workers: int = 1,
    overwrite: bool = False,
) -> str:
    """Write the images and text of every item of the prepared dataset at ``data`` as litData chunks.

    Args:
        data: folder of the prepared dataset.
        output: local folder or object-store URL to write to; default ``<data>/packed``.
        chunk_bytes: target size of a chunk (litData's ``"64MB"`` notation): the unit fetched from a URL.
        num_workers: processes writing chunks; the samples stay in item order whatever their number.
        overwrite: replace shards already at ``output`` (a local folder is checked here, litData checks a URL).

    Returns:
        where the shards were written.
    """
    import litdata

    dataset = PreparedDataset(data)
    try:
        num_items = dataset.items.num_rows  # opens items.arrow: a truncated copy fails here, not in a worker
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise PreparedDatasetError(
            f"{dataset.path}/items.arrow cannot be read ({reason(error)}); copy or prepare the dataset again"
        ) from error
    output = str(dataset.path / PACKED_FOLDER) if output is None else output
    if not is_url(output) and (Path(output) / INDEX_FILE).exists() and not overwrite:
        raise ConfigurationError(f"{output} already holds packed items; pass --overwrite true to replace them")
    # optimize sets the start method of the whole process (to spawn); the caller's is put back, or its data
    # loaders would then start each worker by spawning, seconds each
    start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        litdata.optimize(
            fn=_ItemSample(str(dataset.path)),
            inputs=list(range(num_items)),
            output_dir=output,
            chunk_bytes=chunk_bytes,
            num_workers=num_workers,
            # a static, contiguous slice of the items per worker and chunks indexed in worker order: sample i is item i
            keep_data_ordered=True,
            reorder_files=False,
            mode="overwrite" if overwrite else None,
            verbose=False,
        )
    finally:
        multiprocessing.set_start_method(start_method, force=True)
    written = _packed_count(output)
    if written != num_items:  # litData logs a worker's failure but returns as if it had finished
        raise RuntimeError(
            f"packing {dataset.path} into {output} stopped part way: {written:,} of {num_items:,} items written "
            "(the error is above); pack again with --overwrite true"
        )
    return output


def _packed_count(location: str) -> int:
    """The number of samples the index of the shards at ``location`` lists (0: no index)."""
    if is_url(location):
        return _LocalCopy(location, None).count
    try:
        index = json.loads((Path(location) / INDEX_FILE).read_text())
    except FileNotFoundError:
        return 0
    return sum(chunk["chunk_size"] for chunk in index["chunks"])


def _no_shards(location: str, error: BaseException) -> PreparedDatasetError:
    return PreparedDatasetError(
        f"{location} holds no packed items (no complete {INDEX_FILE}: {reason(error)}); write them with "
        "`python -m mmrec_lightning pack --data DATASET --output LOCATION`"
    )


class _LocalCopy:
    """A local copy of the shards at a URL, made chunk by chunk as items in them are first read.

    litData reads an item at random from a chunk it fetched from a URL by reading the whole chunk file again, so
    the shards are read from this copy in place instead (memory-mapped, as a local folder is). Its folder is named
    after the URL and the digest of the index, so shards packed again at the same URL get a copy of their own. Each
    chunk is fetched once per machine: litData's downloader locks it, and the other processes wait for it.
    """

    def __init__(self, url: str, cache_dir: str | None) -> None:
        from litdata.streaming.downloader import get_downloader
        from litdata.utilities.dataset_utilities import get_default_cache_dir

        self.url = url.rstrip("/")
        root = Path(cache_dir or get_default_cache_dir()) / "mmrec_lightning-packed" / _digest(self.url.encode())
        root.mkdir(parents=True, exist_ok=True)
        fresh = root / f"{INDEX_FILE}.{os.getpid()}"  # read anew on every start: the URL may have been packed again
        fresh.unlink(missing_ok=True)
        try:
            get_downloader(self.url, str(root), []).download_file(f"{self.url}/{INDEX_FILE}", str(fresh))
            index = fresh.read_bytes()
        except Exception as error:  # FileNotFoundError, or each object store's own "no such key"
            raise _no_shards(url, error) from error
        self.folder = root / _digest(index)
        self.folder.mkdir(exist_ok=True)
        os.replace(fresh, self.folder / INDEX_FILE)
        chunks = json.loads(index)["chunks"]
        self._filenames = [chunk["filename"] for chunk in chunks]
        self._ends = np.cumsum([chunk["chunk_size"] for chunk in chunks])
        self.count = int(self._ends[-1]) if chunks else 0
        self._downloader = get_downloader(self.url, str(self.folder), chunks)
        self._fetched: set[int] = set()

    def fetch(self, item: int) -> None:
        """Make sure the chunk holding ``item`` is here."""
        chunk = int(np.searchsorted(self._ends, item, side="right"))
        if chunk in self._fetched or chunk >= len(self._filenames):  # past the end: the read says so
            return
        path = self.folder / self._filenames[chunk]
        while not path.exists():  # published whole, by an atomic rename
            self._downloader.download_file(f"{self.url}/{path.name}", str(path))
            if not path.exists():  # another process holds the chunk's lock and is fetching it
                time.sleep(0.05)
        self._fetched.add(chunk)


class PackedItems:
    """The images and text of a dataset's items, by item index, from the shards ``pack`` wrote.

    Opens litData's ``StreamingDataset`` on first use and holds only its location until then, so it pickles into
    data-loader workers cheaply and each worker streams through its own. Each item read is checked against the
    dataset — its index, raw id and image size — so shards packed from another dataset, or from an older version of
    this one, are refused.

    Args:
        location: local folder or object-store URL of the shards.
        cache_dir: local folder for the chunks fetched from a URL (default: litData's, ``~/.lightning/chunks`` or
            ``$LITDATA_CACHE_DIR``); a local folder is read in place.
    """

    def __init__(self, location: str, cache_dir: str | None = None) -> None:
        self.location = location
        self.cache_dir = cache_dir
        self._dataset: StreamingDataset | None = None
        self._copy: _LocalCopy | None = None
        self._expected: tuple[pa.ChunkedArray, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None, "_copy": None, "_expected": None}

    @property
    def dataset(self) -> StreamingDataset:
        if self._dataset is None:
            from litdata import StreamingDataset

            folder = self.location
            if is_url(self.location):
                self._copy = _LocalCopy(self.location, self.cache_dir)
                folder = str(self._copy.folder)
            try:
                # batch_decode=0: items are read one at a time in random order, so decoding their neighbours
                # with them would be wasted work
                self._dataset = StreamingDataset(folder, batch_decode=0)
            except FileNotFoundError as error:
                raise _no_shards(self.location, error) from error
        return self._dataset

    def __len__(self) -> int:
        """The number of items packed (litData's own ``len`` counts this process's share under DDP)."""
        return sum(end - start for start, end in self.dataset.region_of_interest)

    def check(self, dataset: PreparedDataset) -> None:
        """Raise if these shards do not hold one sample per item of ``dataset``."""
        if len(self) != dataset.num_items:
            raise PreparedDatasetError(
                f"{self.location} holds {len(self):,} packed items but {dataset.path} has {dataset.num_items:,}; "
                f"pack it again (`python -m mmrec_lightning pack --data {dataset.path} --overwrite true`)"
            )

    def _identity(self, dataset: PreparedDataset) -> tuple[pa.ChunkedArray, np.ndarray]:
        """The raw ids and image sizes in bytes (0: none) of the dataset's items, to check samples against: the
        sizes come from the image column's offsets, without reading an image."""
        if self._expected is None:
            items = dataset.items
            sizes = pc.binary_length(items.column("image")).fill_null(0).to_numpy()
            self._expected = (items.column("raw_id"), sizes)
        return self._expected

    def read(self, items: Sequence[int], dataset: PreparedDataset) -> dict[str, list]:
        """The stored ``image`` bytes and ``text`` of each of ``items`` (None where it has none), each checked to
        be what ``dataset`` holds for that item."""
        shards = self.dataset
        raw_ids, sizes = self._identity(dataset)
        content: dict[str, list] = {"image": [], "text": []}
        for item in items:
            if self._copy is not None:
                self._copy.fetch(item)
            packed_item, packed_raw_id, image, text = shards[item]
            packed = (packed_item, packed_raw_id, len(image))
            expected = (item, raw_ids[item].as_py(), int(sizes[item]))
            if packed != expected:
                raise PreparedDatasetError(
                    f"{self.location}: packed sample {item} is item {packed[0]} (raw id {packed[1]!r}, image of "
                    f"{packed[2]:,} bytes) but {dataset.path} has item {item} as raw id {expected[1]!r} with an image "
                    f"of {expected[2]:,} bytes; these shards were packed from another dataset or an older version "
                    f"of it: pack it again (`python -m mmrec_lightning pack --data {dataset.path} --overwrite true`)"
                )
            content["image"].append(image or None)
            content["text"].append(text or None)
        return content
