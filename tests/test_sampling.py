import numpy as np
import pytest

from mmrec_lightning.data.datasets import TrainInteractions
from mmrec_lightning.data.sampling import EpochSampler
from mmrec_lightning.data.schema import PreparedDataset


def _dataset(train, num_negatives=5, history_length=4, seed=0):
    return TrainInteractions(train, num_items=40, num_negatives=num_negatives, history_length=history_length, seed=seed)


def test_a_user_who_saw_every_item_has_no_negative(synthetic_dir):
    train = PreparedDataset(synthetic_dir).split("train")
    dataset = TrainInteractions(train, num_items=int(train.items.max()) + 1, num_negatives=1, history_length=1, seed=0)
    dataset._full_users = np.array([int(dataset[(0, 0)]["users"][0])])
    with pytest.raises(ValueError, match="every item"):
        dataset[(0, 0)]


def test_training_examples_exclude_the_users_training_items(synthetic_dir):
    train = PreparedDataset(synthetic_dir).split("train")
    batch = _dataset(train).__getitems__([(index, 0) for index in range(len(train.items))])
    negatives_seen = set()
    for index, user in enumerate(batch["users"]):
        row = train.row(user)
        assert not np.isin(batch["negatives"][index], row).any()
        negatives_seen.update(batch["negatives"][index].tolist())
        position = index - train.indptr[user]
        assert batch["items"][index] == row[position]
        history = batch["history"][index][batch["history_mask"][index]]
        assert list(history) == list(row[max(0, position - 4) : position])
    assert len(negatives_seen) > 30  # uniform over the catalogue, not a few items


def test_examples_depend_only_on_seed_epoch_and_index(synthetic_dir):
    train = PreparedDataset(synthetic_dir).split("train")
    a, b = _dataset(train, 3), _dataset(train, 3)
    keys = [(i, 2) for i in range(7, 40)]
    assert np.array_equal(a.__getitems__(keys)["negatives"], b.__getitems__(keys)["negatives"])
    next_epoch = a.__getitems__([(i, 3) for i in range(7, 40)])["negatives"]
    assert (next_epoch != a.__getitems__(keys)["negatives"]).mean() > 0.8  # a new epoch draws new negatives


def test_epoch_sampler_shards_cover_every_index_and_reshuffle_per_epoch():
    shards = [EpochSampler(10, num_replicas=2, rank=r, seed=0) for r in range(2)]
    first = [index for s in shards for index, _ in s]
    assert sorted(first) == list(range(10))
    for s in shards:
        s.set_epoch(1)
    second = [index for s in shards for index, _ in s]
    assert sorted(second) == list(range(10)) and second != first
    assert {epoch for s in shards for _, epoch in s} == {1}
