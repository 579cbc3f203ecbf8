import numpy as np
import pytest

from mmrec_lightning.data.datasets import TrainInteractions
from mmrec_lightning.data.sampling import EpochSampler, sample_negatives
from mmrec_lightning.data.schema import PreparedDataset


def test_negatives_are_never_training_items():
    rng = np.random.default_rng(0)
    exclude = rng.choice(50, size=45, replace=False)
    negatives = sample_negatives(rng, 50, exclude, size=500)
    assert not np.isin(negatives, exclude).any()
    assert set(negatives) == set(range(50)) - set(exclude)


def test_a_user_who_saw_every_item_has_no_negative():
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(np.random.default_rng(0), 5, np.arange(5), 1)


def test_training_examples_exclude_the_users_training_items(synthetic_dir):
    train = PreparedDataset(synthetic_dir).split("train")
    dataset = TrainInteractions(train, num_items=40, num_negatives=5, history_length=4, seed=0)
    for index in range(len(dataset)):
        example = dataset[(index, 0)]
        assert not np.isin(example["negatives"], train.row(example["user"])).any()
        row = train.row(example["user"])
        position = index - train.indptr[example["user"]]
        assert example["item"] == row[position]
        assert list(example["history"]) == list(row[max(0, position - 4) : position])


def test_examples_depend_only_on_seed_epoch_and_index(synthetic_dir):
    train = PreparedDataset(synthetic_dir).split("train")
    a = TrainInteractions(train, 40, 3, 4, seed=0)
    b = TrainInteractions(train, 40, 3, 4, seed=0)
    assert np.array_equal(a[(7, 2)]["negatives"], b[(7, 2)]["negatives"])
    changed = [not np.array_equal(a[(i, 2)]["negatives"], a[(i, 3)]["negatives"]) for i in range(50)]
    assert sum(changed) > 40  # a new epoch draws new negatives


def test_epoch_sampler_shards_cover_every_index_and_reshuffle_per_epoch():
    shards = [EpochSampler(10, num_replicas=2, rank=r, seed=0) for r in range(2)]
    first = [index for s in shards for index, _ in s]
    assert sorted(first) == list(range(10))
    for s in shards:
        s.set_epoch(1)
    second = [index for s in shards for index, _ in s]
    assert sorted(second) == list(range(10)) and second != first
    assert {epoch for s in shards for _, epoch in s} == {1}
