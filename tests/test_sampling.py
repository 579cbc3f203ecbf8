import numpy as np
import pytest

from mmrec_lightning.data.datasets import TrainInteractions
from mmrec_lightning.data.negatives import NegativeSampler
from mmrec_lightning.data.samplers import EpochSampler, shard_sizes
from mmrec_lightning.data.schema import PreparedDataset, SplitIndex


def _dataset(train, num_negatives=5, history_length=4, seed=0):
    return TrainInteractions(train, num_items=40, num_negatives=num_negatives, history_length=history_length, seed=seed)


def test_a_user_who_saw_every_item_has_no_negative():
    # user 0 saw items 0-2, every item that occurs in training (item 3 is cold: never a candidate)
    train = SplitIndex(indptr=np.array([0, 3, 4]), items=np.array([0, 1, 2, 0]), times=np.zeros(4))
    sampler = NegativeSampler(train, num_items=4, num_negatives=2)
    assert set(sampler(np.random.default_rng(0), np.array([1] * 50)).ravel()) == {1, 2}
    with pytest.raises(ValueError, match="every item"):
        sampler(np.random.default_rng(0), np.array([1, 0]))


def test_training_examples_exclude_the_users_training_items(synthetic_dir):
    train = PreparedDataset(synthetic_dir).split("train")
    batch = _dataset(train)[(np.arange(len(train.items)), 0)]
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
    assert negatives_seen <= set(train.items.tolist())  # never an item no one chose in training


def test_an_item_without_training_interactions_is_never_a_negative(synthetic_dir):
    train = PreparedDataset(synthetic_dir).split("train")
    trained = np.unique(train.items)
    num_items = int(trained.max()) + 10  # ten more items, none of them in training
    dataset = TrainInteractions(train, num_items=num_items, num_negatives=50, history_length=0, seed=0)
    negatives = dataset[(np.arange(len(train.items)), 0)]["negatives"]
    assert np.isin(negatives, trained).all()
    assert len(np.unique(negatives)) > 0.9 * len(trained)  # and still spread over all of them


def test_examples_depend_only_on_seed_epoch_and_index(synthetic_dir):
    train = PreparedDataset(synthetic_dir).split("train")
    a, b = _dataset(train, 3), _dataset(train, 3)
    key = (np.arange(7, 40), 2)
    assert np.array_equal(a[key]["negatives"], b[key]["negatives"])
    next_epoch = a[(np.arange(7, 40), 3)]["negatives"]
    assert (next_epoch != a[key]["negatives"]).mean() > 0.8  # a new epoch draws new negatives


@pytest.mark.parametrize(
    ("size", "world", "batch"), [(10, 2, 3), (12, 2, 3), (13, 3, 2), (7, 4, 8), (3, 4, 2), (1000, 4, 64)]
)
def test_every_interaction_is_seen_once_per_epoch_across_ranks_in_equal_batch_counts(size, world, batch):
    shards = [EpochSampler(size, batch, num_replicas=world, rank=r, seed=0) for r in range(world)]
    first = [index for s in shards for indices, _ in s for index in indices.tolist()]
    assert all(len(indices) <= batch for s in shards for indices, _ in s)
    sizes, repeats = shard_sizes(size, world, batch)
    assert len(first) == size + repeats and set(first) == set(range(size))  # none lost
    assert repeats < world  # repeats only to give every rank its last batch
    if (size - 1) // (world * batch) * world * batch + world <= size:
        assert repeats == 0 and sorted(first) == list(range(size))  # each interaction exactly once
    assert len({len(s) for s in shards}) == 1 == len({len(list(s)) for s in shards})  # equal batch counts
    for s in shards:
        s.set_epoch(1)
    second = [index for s in shards for indices, _ in s for index in indices.tolist()]
    assert set(second) == set(first) and second != first
    assert {epoch for s in shards for _, epoch in s} == {1}
