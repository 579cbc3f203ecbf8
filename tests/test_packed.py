"""Item content packed into litData shards (``pack``, ``data.packed_items``): the same batches as items.arrow,
through workers, a stand-in object store and a mid-epoch resume, and clear errors for shards that do not fit."""

import multiprocessing
import shutil
import signal

import lightning as L
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
from conftest import TINY_SPEC, Interrupt, resumable_fit, write_synthetic

from mmrec_lightning.__main__ import run
from mmrec_lightning.data.schema import PreparedDataset, PreparedDatasetError
from mmrec_lightning.data.sources.synthetic import SyntheticSpec
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.encoders.image import TimmImageEncoder
from mmrec_lightning.errors import ConfigurationError


@pytest.fixture(scope="module")
def shards(synthetic_dir, tmp_path_factory):
    """The synthetic dataset packed by the command, in small chunks so that items span several."""
    output = tmp_path_factory.mktemp("packed") / "shards"
    start_method = multiprocessing.get_start_method()
    run(["pack", "--data", str(synthetic_dir), "--output", str(output), "--chunk_bytes", "16KB"])
    assert len(list(output.glob("*.bin"))) > 2
    assert multiprocessing.get_start_method() == start_method  # litData's change undone
    return output


def _datamodule(path, preprocessing, **kwargs):
    data = RecDataModule(path=str(path), batch_size=16, num_negatives=2, history_length=5, seed=3, **kwargs)
    data.connect(preprocessing)
    data.setup("fit")
    return data


def _batches(data, train_batches=2):
    loader = iter(data.train_dataloader())
    return [next(loader) for _ in range(train_batches)], list(data.catalogue_dataloader())


def _assert_equal(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{index}]")
    else:
        assert torch.equal(a, b), where


def test_packed_items_give_exactly_the_batches_of_items_arrow_also_through_a_worker(
    synthetic_dir, shards, preprocessing
):
    train, catalogue = _batches(_datamodule(synthetic_dir, preprocessing))
    assert not all(batch["image_mask"].all() for batch in catalogue)  # items without an image are packed as such
    for workers in (0, 1):  # a worker opens its own StreamingDataset
        packed = _datamodule(synthetic_dir, preprocessing, packed_items=str(shards), num_workers=workers)
        packed_train, packed_catalogue = _batches(packed)
        _assert_equal(train, packed_train, f"train, {workers} workers")
        _assert_equal(catalogue, packed_catalogue, f"catalogue, {workers} workers")


def test_shards_behind_a_url_are_fetched_into_the_cache_and_give_the_same_batches(
    synthetic_dir, shards, preprocessing, tmp_path
):
    train, catalogue = _batches(_datamodule(synthetic_dir, preprocessing))
    cache = tmp_path / "cache"
    # litData's `local:` URL is read as an object store is: chunks are fetched into the cache
    remote = _datamodule(synthetic_dir, preprocessing, packed_items=f"local:{shards}", packed_items_cache=str(cache))
    assert not list(cache.rglob("*.bin"))  # setup reads the index alone; chunks come as their items are read
    remote_train, remote_catalogue = _batches(remote)
    _assert_equal(train, remote_train, "train")
    _assert_equal(catalogue, remote_catalogue, "catalogue")
    cached = {path.name for path in cache.rglob("*.bin")}
    assert cached == {path.name for path in shards.glob("*.bin")}  # the catalogue touched every chunk


def _image_model():
    from mmrec_lightning.models import MultimodalRecommender

    return MultimodalRecommender(
        num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, num_categories=6, embed_dim=8, top_k=[5],
        image_encoder=TimmImageEncoder("test_efficientnet", image_size=32),
        # no dropout: it draws from torch's global generator, which a resumed run does not get back
        modality_dropout=0.0, dropout=0.0, history_dropout=0.0,
    )  # fmt: skip


def _fit(synthetic_dir, directory, packed_items=None, interrupt=None, ckpt_path=None):
    L.seed_everything(0)
    data = RecDataModule(path=str(synthetic_dir), batch_size=64, history_length=2, packed_items=packed_items)
    return resumable_fit(_image_model(), data, directory, 2, Interrupt(*interrupt) if interrupt else None, ckpt_path)


def test_a_run_on_packed_items_resumed_mid_epoch_ends_like_an_uninterrupted_run_on_items_arrow(
    synthetic_dir, shards, tmp_path
):
    reference = _fit(synthetic_dir, tmp_path / "reference")
    steps_per_epoch = -(-len(PreparedDataset(synthetic_dir).split("train").items) // 64)
    run = tmp_path / "packed"
    assert _fit(synthetic_dir, run, str(shards), (steps_per_epoch + 2, signal.SIGTERM)) is None
    resumed = _fit(synthetic_dir, run, str(shards), ckpt_path="last")
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_packing_a_dataset_whose_items_file_is_damaged_names_the_file(synthetic_dir, tmp_path):
    copy = shutil.copytree(synthetic_dir, tmp_path / "damaged")
    (copy / "items.arrow").write_bytes((copy / "items.arrow").read_bytes()[:1000])  # a copy cut short
    with pytest.raises(PreparedDatasetError, match=r"damaged/items\.arrow cannot be read .*prepare the dataset"):
        run(["pack", "--data", str(copy)])
    assert not (copy / "packed").exists()


def test_packing_over_packed_items_asks_for_overwrite(synthetic_dir, shards):
    with pytest.raises(ConfigurationError, match=r"already holds packed items; pass --overwrite true"):
        run(["pack", "--data", str(synthetic_dir), "--output", str(shards)])


def test_missing_shards_say_how_to_write_them(synthetic_dir, preprocessing, tmp_path):
    with pytest.raises(PreparedDatasetError, match=r"holds no packed items .*mmrec_lightning pack --data"):
        _datamodule(synthetic_dir, preprocessing, packed_items=str(tmp_path / "nothing"))


def test_shards_of_another_dataset_are_refused(synthetic_dir, shards, preprocessing, tmp_path):
    smaller = write_synthetic(tmp_path / "smaller", SyntheticSpec(users=60, items=30, seed=1, image_size=32))
    with pytest.raises(PreparedDatasetError, match=r"holds 40 packed items but .*smaller has 30; pack it again"):
        _datamodule(smaller, preprocessing, packed_items=str(shards))
    # the same items with other images (prepared again from changed files): refused at the first one read
    swapped = shutil.copytree(synthetic_dir, tmp_path / "swapped")
    items = ipc.open_file(pa.BufferReader((swapped / "items.arrow").read_bytes())).read_all()
    images = items.column("image").to_pylist()
    first, second = [item for item, image in enumerate(images) if image][:2]
    assert len(images[first]) != len(images[second])
    images[first], images[second] = images[second], images[first]
    table = items.set_column(items.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    with pa.OSFile(str(swapped / "items.arrow"), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = _datamodule(swapped, preprocessing, packed_items=str(shards))
    with pytest.raises(PreparedDatasetError, match=rf"packed sample {first} is item {first} .*pack it again"):
        list(data.catalogue_dataloader())


def test_the_benchmark_times_three_stores_warm_and_cold_on_the_same_batches(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import packed_images

    output = tmp_path / "packed_images.json"
    args = ["--items", "24", "--distinct", "12", "--source-size", "64", "--size", "32", "--batch-size", "8"]
    result = packed_images.main([*args, "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(result))
    assert result["turns"] == 3
    for kind in ("warm_fetch", "warm_decode", "cold_fetch", "cold_decode"):
        assert set(result[kind]["items_per_s"]) == {"files", "arrow", "packed"}
        assert all(rate > 0 for rate in result[kind]["items_per_s"].values())
        assert result[kind]["over_files"]["files"] == 1.0
