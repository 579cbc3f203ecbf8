import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import TINY_SPEC, write_synthetic
from PIL import Image

from mmrec_lightning.data.schema import SCHEMA_VERSION, PreparedDataset, PreparedDatasetError, write_prepared
from mmrec_lightning.data.sources import synthetic as syn
from mmrec_lightning.errors import ConfigurationError


def _tables(n_users=3, n_items=4):
    interactions = pa.table(
        {
            "user": pa.array([0, 0, 1, 2, 2, 1], pa.int32()),
            "item": pa.array([0, 1, 2, 3, 0, 1], pa.int32()),
            "timestamp": pa.array([5, 1, 2, 3, 4, 9], pa.int64()),
            "rating": pa.nulls(6, pa.float32()),
            "split": pa.array([0, 0, 0, 0, 1, 2], pa.int8()),
        }
    )
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    items = pa.table(
        {
            "item": pa.array(range(n_items), pa.int32()),
            "raw_id": [f"i{i}" for i in range(n_items)],
            "text": ["a", None, "c", "d"][:n_items],
            "category": pa.array([-1] * n_items, pa.int32()),
            "image": pa.array([buffer.getvalue(), None, None, b"not an image"][:n_items], pa.binary()),
        }
    )
    users = pa.table({"user": pa.array(range(n_users), pa.int32()), "raw_id": [f"u{u}" for u in range(n_users)]})
    return interactions, items, users


def test_round_trip_keeps_every_interaction_grouped_by_user_in_time_order(tmp_path):
    interactions, items, users = _tables()
    path = write_prepared(
        tmp_path / "d", interactions=interactions, items=items.to_batches(), users=users, metadata={"source": "test"}
    )
    dataset = PreparedDataset(path)
    dataset.validate()
    assert dataset.metadata["schema_version"] == SCHEMA_VERSION
    assert dataset.metadata["counts"]["interactions"] == {"train": 4, "valid": 1, "test": 1}
    train = dataset.split("train")
    assert list(train.row(0)) == [1, 0]  # user 0 saw item 1 at t=1, item 0 at t=5
    assert list(train.times[train.indptr[0] : train.indptr[1]]) == [1, 5]
    assert list(dataset.split("valid").row(2)) == [0]
    assert list(dataset.split("test").row(1)) == [1]
    assert dataset.items.column("text").to_pylist() == ["a", None, "c", "d"]


def test_an_unreadable_image_is_dropped_with_a_counted_warning(tmp_path, caplog):
    interactions, items, users = _tables()
    path = write_prepared(tmp_path / "d", interactions=interactions, items=items.to_batches(), users=users, metadata={})
    dataset = PreparedDataset(path)
    assert dataset.items.column("image")[3].as_py() is None
    assert dataset.metadata["counts"]["items_with_image"] == 1
    assert dataset.metadata["dropped"]["unreadable_images"] == 1
    assert "item 3" in caplog.text and "raw id 'i3'" in caplog.text
    assert "object at 0x" not in caplog.text  # PIL's message names a BytesIO by its address: left out


def test_a_truncated_jpeg_is_unreadable_at_prepare_not_first_in_training(tmp_path):
    interactions, items, users = _tables()
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="JPEG")
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]  # headers intact: PIL's verify() passes it
    items = items.set_column(4, "image", pa.array([truncated, None, None, None], pa.binary()))
    path = write_prepared(tmp_path / "d", interactions=interactions, items=items.to_batches(), users=users, metadata={})
    dataset = PreparedDataset(path)
    assert dataset.items.column("image")[0].as_py() is None
    assert dataset.metadata["dropped"]["unreadable_images"] == 1


def test_interactions_naming_an_unknown_item_are_refused_with_the_row(tmp_path):
    interactions, items, users = _tables()
    interactions = interactions.set_column(1, "item", pa.array([0, 1, 2, 3, 0, 9], pa.int32()))
    with pytest.raises(PreparedDatasetError, match=r"row 5: item 9 is outside 0\.\.3"):
        write_prepared(tmp_path / "d", interactions=interactions, items=items.to_batches(), users=users, metadata={})
    assert not (tmp_path / "d").exists()
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_a_missing_column_is_named(tmp_path):
    interactions, items, users = _tables()
    with pytest.raises(PreparedDatasetError, match="interactions: missing column 'timestamp'"):
        write_prepared(
            tmp_path / "d",
            interactions=interactions.drop(["timestamp"]),
            items=items.to_batches(),
            users=users,
            metadata={},
        )


def test_a_duplicate_item_is_named(tmp_path):
    interactions, items, users = _tables()
    items = items.set_column(1, "raw_id", pa.array(["i0", "i1", "i0", "i3"]))
    with pytest.raises(PreparedDatasetError, match="raw_id 'i0' appears twice"):
        write_prepared(tmp_path / "d", interactions=interactions, items=items.to_batches(), users=users, metadata={})


def test_an_existing_dataset_is_not_overwritten_by_accident(tmp_path):
    interactions, items, users = _tables()
    write_prepared(tmp_path / "d", interactions=interactions, items=items.to_batches(), users=users, metadata={})
    with pytest.raises(ConfigurationError, match="--overwrite"):
        write_prepared(tmp_path / "d", interactions=interactions, items=items.to_batches(), users=users, metadata={})


def test_a_folder_that_is_not_a_prepared_dataset_says_how_to_make_one(tmp_path):
    with pytest.raises(PreparedDatasetError, match="mmrec_lightning prepare"):
        PreparedDataset(tmp_path)


def test_a_newer_schema_version_is_refused(synthetic_dir, tmp_path):
    import shutil

    copy = shutil.copytree(synthetic_dir, tmp_path / "copy")
    meta = json.loads((copy / "metadata.json").read_text())
    meta["schema_version"] = SCHEMA_VERSION + 1
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(PreparedDatasetError, match="schema_version"):
        PreparedDataset(copy)


def test_synthetic_data_is_deterministic_for_a_seed(tmp_path):
    a, b = write_synthetic(tmp_path / "a"), write_synthetic(tmp_path / "b")
    for table in ("interactions", "items", "users"):
        assert getattr(PreparedDataset(a), table).equals(getattr(PreparedDataset(b), table))


def test_synthetic_data_has_cold_items_modalities_and_categories(synthetic_dir):
    dataset = PreparedDataset(synthetic_dir)
    cold = set(dataset.metadata["cold_items"])
    assert len(cold) == round(TINY_SPEC.cold_item_fraction * TINY_SPEC.items)
    assert not cold & set(dataset.split("train").items.tolist())
    assert cold & set(dataset.split("test").items.tolist())
    assert dataset.category_names == list(syn.CATEGORIES)
    categories = dataset.item_categories()
    assert ((categories >= 0) & (categories < len(syn.CATEGORIES))).all()
    image = Image.open(io.BytesIO(next(x for x in dataset.items.column("image").to_pylist() if x)))
    assert image.size == (TINY_SPEC.image_size, TINY_SPEC.image_size)
    texts = [t for t in dataset.items.column("text").to_pylist() if t]
    for text, category in zip(dataset.items.column("text").to_pylist(), categories, strict=True):
        if text:
            assert syn.CATEGORIES[category] in text.lower()
    assert len(texts) >= 0.9 * TINY_SPEC.items
    users_train = np.diff(dataset.split("train").indptr)
    assert (users_train >= 1).all()  # every user has training history


KILLED_PREPARE = """
import sys, time
from pathlib import Path
from conftest import write_synthetic, TINY_SPEC
import mmrec_lightning.data.schema as schema

original = schema._checked_items
def stalling(batches, report):  # writes some items, says so, then hangs until it is killed
    for number, batch in enumerate(original(batches, report)):
        yield batch
        if number == 0:
            Path(sys.argv[2]).write_text("writing")
            time.sleep(60)
schema._checked_items = stalling
write_synthetic(Path(sys.argv[1]))
"""


def test_a_prepare_killed_half_way_leaves_no_dataset_that_looks_complete(tmp_path):
    output, marker = tmp_path / "prepared", tmp_path / "marker"
    script = tmp_path / "prepare.py"
    script.write_text(KILLED_PREPARE)
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(script), str(output), str(marker)], env=env)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the prepare never started writing"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not output.exists()  # only the hidden staging folder exists, never the dataset's own name
    with pytest.raises(PreparedDatasetError, match="is not a prepared dataset"):
        PreparedDataset(output)
    write_synthetic(output, TINY_SPEC)  # running it again works
    PreparedDataset(output).validate()
