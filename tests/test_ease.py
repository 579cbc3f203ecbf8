"""The EASE item–item term: its closed form, the scores training adds to the logits, and the dot-product
blocks evaluation, export and serving score with."""

import numpy as np
import pytest
import torch

from mmrec_lightning.data.schema import SplitIndex
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.losses import BCELoss, BPRLoss, SampledSoftmaxLoss
from mmrec_lightning.towers.content_neighbours import ContentNeighbours
from mmrec_lightning.towers.ease import EASE

ROWS = [[0, 1, 3], [1, 3], [0, 3, 4], [1, 4], [0, 1, 3, 4]]  # items of users 0..4; item 2 never occurs
NUM_ITEMS = 5


def _split(rows: list[list[int]]) -> SplitIndex:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    items = np.concatenate(rows).astype(np.int64)
    return SplitIndex(indptr, items, np.zeros(len(items)))


def _multi_hot(rows: list[list[int]]) -> np.ndarray:
    matrix = np.zeros((len(rows), NUM_ITEMS))
    for user, items in enumerate(rows):
        matrix[user, items] = 1.0
    return matrix


def _reference(l2: float) -> np.ndarray:
    """EASE as the paper writes it (Steck 2019, Algorithm 1)."""
    x = _multi_hot(ROWS)
    p = np.linalg.inv(x.T @ x + l2 * np.eye(NUM_ITEMS))
    b = p / (-np.diag(p))
    np.fill_diagonal(b, 0.0)
    return b


def test_the_matrix_is_the_closed_form_with_a_zero_diagonal():
    ease = EASE(l2=2.0)
    ease.build(_split(ROWS), NUM_ITEMS)
    np.testing.assert_allclose(ease.matrix.numpy(), _reference(2.0), rtol=1e-5, atol=1e-7)
    assert torch.all(ease.matrix.diagonal() == 0)
    assert torch.all(ease.matrix[:, 2] == 0)  # an item without training interactions gets no votes


def test_training_scores_and_the_evaluation_blocks_agree_with_the_reference():
    ease = EASE(l2=2.0, weight=0.5)
    ease.build(_split(ROWS), NUM_ITEMS)
    users = torch.tensor([4, 0, 4, 2])
    expected = 0.5 * _multi_hot(ROWS)[users.numpy()] @ _reference(2.0)
    np.testing.assert_allclose(ease.training_scores(users).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # evaluation: (weight · multi-hot of the known items) · B[:, i], a plain dot product
    rows = torch.tensor([r for r, u in enumerate(users.tolist()) for _ in ROWS[u]])
    items = torch.tensor([i for u in users.tolist() for i in ROWS[u]])
    user_block = ease.user_block(rows, items, len(users))
    item_block = ease.item_block(torch.arange(NUM_ITEMS))
    np.testing.assert_allclose((user_block @ item_block.T).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(ease.item_block(torch.tensor([-1])) == 0)  # an item outside the catalogue


def test_an_untrained_item_takes_the_mean_column_of_its_content_neighbours():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [0.7, 0.3]])  # item 2 resembles 0 and 4
    neighbours = ContentNeighbours(k=2, image_weight=0.0)
    trained = torch.tensor([True, True, False, True, True])
    neighbours.build({"text": text}, trained)
    ease = EASE(l2=2.0)
    ease.build(_split(ROWS), NUM_ITEMS, neighbours)
    reference = _reference(2.0)
    np.testing.assert_allclose(ease.matrix[:, 2].numpy(), (reference[:, 0] + reference[:, 4]) / 2, rtol=1e-5)
    np.testing.assert_allclose(ease.matrix[:, 1].numpy(), reference[:, 1], rtol=1e-5, atol=1e-7)


def test_a_catalogue_above_max_items_is_refused_with_the_option_to_change():
    with pytest.raises(ConfigurationError, match="max_items"):
        EASE(max_items=4).build(_split(ROWS), NUM_ITEMS)


@pytest.mark.parametrize(
    "loss", [BPRLoss(), BCELoss(), SampledSoftmaxLoss(), SampledSoftmaxLoss(in_batch=False)], ids=repr
)
def test_extra_scores_are_what_a_dot_product_with_a_one_hot_block_would_add(loss):
    generator = torch.Generator().manual_seed(0)
    batch, negatives, dim = 4, 3, 6
    user = torch.randn(batch, dim, generator=generator)
    items = torch.randn(NUM_ITEMS, dim, generator=generator)
    positive_ids = torch.tensor([0, 1, 3, 4])
    negative_ids = torch.randint(0, NUM_ITEMS, (batch, negatives), generator=generator)
    extra = torch.randn(batch, NUM_ITEMS, generator=generator)
    with_extra = loss(user, items[positive_ids], items[negative_ids], positive_ids, negative_ids, extra)
    wide_user, wide_items = torch.cat([user, extra], 1), torch.cat([items, torch.eye(NUM_ITEMS)], 1)
    wide = loss(wide_user, wide_items[positive_ids], wide_items[negative_ids], positive_ids, negative_ids)
    torch.testing.assert_close(with_extra, wide)
    plain = loss(user, items[positive_ids], items[negative_ids], positive_ids, negative_ids)
    assert not torch.allclose(with_extra, plain)
