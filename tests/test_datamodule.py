import numpy as np
import pytest
import torch
from conftest import TINY_SPEC

from mmrec_lightning.data.schema import PreparedDatasetError
from mmrec_lightning.datamodule import RecDataModule


def _datamodule(path, preprocessing, **kwargs):
    dm = RecDataModule(path=str(path), batch_size=16, num_negatives=2, history_length=5, **kwargs)
    dm.connect(preprocessing)
    dm.setup("fit")
    return dm


def test_training_batches_load_each_distinct_item_once_with_its_content(synthetic_dir, preprocessing):
    dm = _datamodule(synthetic_dir, preprocessing)
    batch = next(iter(dm.train_dataloader()))
    items = batch["items"]
    ids = items["item_ids"]
    assert len(torch.unique(ids)) == len(ids)
    assert items["image"].shape == (len(ids), 3, 32, 32)
    assert items["input_ids"].shape[0] == len(ids) and items["input_ids"].shape[1] <= 16
    assert batch["negatives"].shape == (16, 2)
    for row in range(16):
        user = int(batch["users"][row])
        seen = dm.facts.train.row(user)
        assert int(ids[batch["positives"][row]]) in seen
        assert not np.isin(ids[batch["negatives"][row]].numpy(), seen).any()
    missing_image = ~items["image_mask"]
    assert missing_image.any(), "the batch should include an item without image"
    mean_colour = torch.tensor(preprocessing.image_train.fill, dtype=torch.uint8).view(3, 1, 1)
    assert items["image"].dtype == torch.uint8  # normalised by the model, on its device
    assert (items["image"][missing_image] == mean_colour).all()


def test_workers_give_the_same_batches_as_the_main_process(synthetic_dir, preprocessing):
    inline = next(iter(_datamodule(synthetic_dir, preprocessing).train_dataloader()))
    workers = next(iter(_datamodule(synthetic_dir, preprocessing, num_workers=2).train_dataloader()))
    for key in ("users", "positives", "negatives", "history", "stats"):
        assert torch.equal(inline[key], workers[key])
    assert torch.equal(inline["items"]["image"], workers["items"]["image"])  # augmentation seeded per batch


def test_evaluation_users_come_with_targets_and_training_items_to_mask(synthetic_dir, preprocessing):
    dm = _datamodule(synthetic_dir, preprocessing)
    catalogue, users = dm.val_dataloader()
    assert sum(len(b["item_ids"]) for b in catalogue) == TINY_SPEC.items
    valid = dm.facts.dataset.split("valid")
    seen_users = []
    for batch in users:
        for row, user in enumerate(batch["users"].tolist()):
            seen_users.append(user)
            targets = batch["target_items"][batch["target_rows"] == row]
            excluded = batch["exclude_items"][batch["exclude_rows"] == row]
            assert sorted(targets.tolist()) == sorted(valid.row(user).tolist())
            assert sorted(excluded.tolist()) == sorted(dm.facts.train.row(user).tolist())
    assert seen_users == np.flatnonzero(valid.lengths() > 0).tolist()


def test_recbole_protocol_also_masks_validation_items_at_test(synthetic_dir, preprocessing):
    dm = _datamodule(synthetic_dir, preprocessing, mask_valid_at_test=True)
    batch = next(iter(dm.test_dataloader()[1]))
    user = int(batch["users"][0])
    excluded = batch["exclude_items"][batch["exclude_rows"] == 0].tolist()
    expected = dm.facts.train.row(user).tolist() + dm.facts.dataset.split("valid").row(user).tolist()
    assert sorted(excluded) == sorted(expected)


def test_a_missing_dataset_without_a_synthetic_spec_says_what_to_do(tmp_path):
    with pytest.raises(PreparedDatasetError, match="prepare --source"):
        RecDataModule(path=str(tmp_path / "nothing"))


def test_merged_splits_keep_each_users_interactions_in_time_order():
    from mmrec_lightning.data.schema import SplitIndex

    train = SplitIndex(np.array([0, 2, 3]), np.array([5, 6, 7]), np.array([1.0, 5.0, 2.0]))
    valid = SplitIndex(np.array([0, 1, 2]), np.array([8, 9]), np.array([3.0, 2.0]))  # user 1's ties train's time
    merged = train.merged(valid)
    assert [merged.row(0).tolist(), merged.row(1).tolist()] == [[5, 8, 6], [7, 9]]
    assert merged.times.tolist() == [1.0, 3.0, 5.0, 2.0, 2.0] and merged.ratings is None


def test_after_a_leave_one_out_split_test_and_predict_read_the_validation_item_as_history(tmp_path):
    from mmrec_lightning.data.prepare import main as prepare

    rows = "".join(f"u{u},i{(u + k) % 9},{1000 + k}\n" for u in range(6) for k in range(5))
    (tmp_path / "events.csv").write_text("user,item,time\n" + rows)
    prepare(["--source", "table", "--interactions", str(tmp_path / "events.csv"), "--user_column", "user",
             "--item_column", "item", "--timestamp_column", "time", "--split", "loo",
             "--output", str(tmp_path / "d")])  # fmt: skip
    dm = RecDataModule(path=str(tmp_path / "d"), history_length=10)
    dm.setup("test")
    valid, train = dm.facts.dataset.split("valid"), dm.facts.train

    def first(batch: dict) -> tuple[int, list[int]]:  # the first user of a batch and their history
        return int(batch["users"][0]), batch["history"][0][batch["history_mask"][0]].tolist()

    for split in ("test", None):  # prediction sees what test sees
        batch = dm.users_dataloader(split).dataset[0]
        user, history = first(batch)
        assert history == [*train.row(user).tolist(), *valid.row(user).tolist()]
        assert sorted(batch["exclude_items"].tolist()) == sorted(history)
    validated, history = first(dm.users_dataloader("valid").dataset[0])
    assert history == train.row(validated).tolist()
    plain = RecDataModule(path=str(tmp_path / "d"), history_length=10, test_history="train")
    plain.setup("test")
    assert first(plain.users_dataloader("test").dataset[0])[1] == train.row(user).tolist()
