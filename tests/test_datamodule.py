import numpy as np
import pytest
import torch
from conftest import TINY_BERT, TINY_SPEC

from mmrec_lightning.data.datamodule import RecDataModule
from mmrec_lightning.data.items import ItemPreprocessing
from mmrec_lightning.data.schema import PreparedDatasetError
from mmrec_lightning.encoders.image import TimmImageEncoder
from mmrec_lightning.encoders.text import HFTextEncoder


@pytest.fixture(scope="module")
def preprocessing(tokenizer_dir):
    image = TimmImageEncoder("test_efficientnet", image_size=32)
    text = HFTextEncoder(config=TINY_BERT, tokenizer=str(tokenizer_dir), max_length=16)
    return ItemPreprocessing(image.transform(True), image.transform(False), text.tokenizer(), text.max_length)


def _datamodule(path, preprocessing, **kwargs):
    dm = RecDataModule(path=str(path), batch_size=16, num_negatives=2, history_length=5, **kwargs)
    dm.preprocessing = preprocessing
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
        seen = dm.train_split.row(user)
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
    valid = dm.dataset.split("valid")
    seen_users = []
    for batch in users:
        for row, user in enumerate(batch["users"].tolist()):
            seen_users.append(user)
            targets = batch["target_items"][batch["target_rows"] == row]
            excluded = batch["exclude_items"][batch["exclude_rows"] == row]
            assert sorted(targets.tolist()) == sorted(valid.row(user).tolist())
            assert sorted(excluded.tolist()) == sorted(dm.train_split.row(user).tolist())
    assert seen_users == np.flatnonzero(valid.lengths() > 0).tolist()


def test_recbole_protocol_also_masks_validation_items_at_test(synthetic_dir, preprocessing):
    dm = _datamodule(synthetic_dir, preprocessing, mask_valid_at_test=True)
    batch = next(iter(dm.test_dataloader()[1]))
    user = int(batch["users"][0])
    excluded = batch["exclude_items"][batch["exclude_rows"] == 0].tolist()
    expected = dm.train_split.row(user).tolist() + dm.dataset.split("valid").row(user).tolist()
    assert sorted(excluded) == sorted(expected)


def test_a_missing_dataset_without_a_synthetic_spec_says_what_to_do(tmp_path):
    with pytest.raises(PreparedDatasetError, match="prepare --source"):
        RecDataModule(path=str(tmp_path / "nothing"))
