"""The EASE item–item term: its closed form, the dot-product blocks evaluation, export and serving score with,
and its weight chosen on validation."""

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY_SPEC

from mmrec_lightning.connect import connect
from mmrec_lightning.data.schema import SplitIndex
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features import ItemFeatures
from mmrec_lightning.features.files import feature_file
from mmrec_lightning.models import MultimodalRecommender
from mmrec_lightning.models.base import RecommenderModule
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


def test_the_dot_product_of_the_blocks_is_the_weighted_reference_score():
    ease = EASE(l2=2.0, weights=[0.5])
    ease.build(_split(ROWS), NUM_ITEMS)
    users = [4, 0, 2]
    rows = torch.tensor([r for r, u in enumerate(users) for _ in ROWS[u]])
    items = torch.tensor([i for u in users for i in ROWS[u]])
    scores = ease.user_block(rows, items, len(users)) @ ease.item_block(torch.arange(NUM_ITEMS)).T
    expected = 0.5 * _multi_hot(ROWS)[users] @ _reference(2.0)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_an_untrained_item_borrows_its_content_neighbours_mean_column_at_the_chosen_length():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [0.7, 0.3]])  # item 2 resembles 0 and 4
    neighbours = ContentNeighbours(k=2, image_weight=0.0)
    trained = torch.tensor([True, True, False, True, True])
    neighbours.build({"text": text}, trained)
    ease = EASE(l2=2.0)
    ease.build(_split(ROWS), NUM_ITEMS, neighbours)
    reference = _reference(2.0)
    mean = (reference[:, 0] + reference[:, 4]) / 2
    length = (np.linalg.norm(reference[:, 0]) + np.linalg.norm(reference[:, 4])) / 2
    full = mean / np.linalg.norm(mean) * length
    np.testing.assert_allclose(ease.matrix[:, 2].numpy(), full, rtol=1e-5)
    np.testing.assert_allclose(ease.matrix[:, 1].numpy(), reference[:, 1], rtol=1e-5, atol=1e-7)
    for cold_length, expected in ((0.0, mean), (0.5, (mean + full) / 2), (1.0, full)):
        ease.cold_length.fill_(cold_length)
        columns = ease.item_block(torch.tensor([2, 1])).numpy()
        np.testing.assert_allclose(columns[0], expected, rtol=1e-5)  # between the plain mean and full length
        np.testing.assert_allclose(columns[1], reference[:, 1], rtol=1e-5, atol=1e-7)  # a trained item: as solved


def test_a_checkpoint_from_before_the_cold_length_loads_with_borrowed_columns_at_full_length():
    saved = EASE(weights=[0.5]).state_dict()
    del saved["cold_length"]  # as written before the length was chosen on validation
    restored = EASE(cold_lengths=[0.0, 0.5])
    restored.load_state_dict(saved)  # strict
    assert restored.cold_length.item() == 1.0 and restored.weight.item() == 0.5


def test_a_catalogue_above_max_items_is_refused_with_the_option_to_change():
    with pytest.raises(ConfigurationError, match="max_items"):
        EASE(max_items=4).build(_split(ROWS), NUM_ITEMS)


class _OneCandidate(EASE):
    """An EASE term that validation can only score under one ``(cold_length, weight)`` pair."""

    def __init__(self, pair: tuple[float, float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.pair = pair

    @property
    def candidates(self) -> list[tuple[float, float]]:
        return [self.pair]


def _validated(data_dir, item_item: EASE) -> dict[str, float]:
    """Validation metrics of the same (seeded, untrained) model with this EASE term; with features in
    ``data_dir``, cold items borrow their content neighbours' columns."""
    torch.manual_seed(0)
    featured = feature_file(data_dir, "text").exists()
    content = (
        {
            "image_encoder": ItemFeatures(str(feature_file(data_dir, "image"))),
            "text_encoder": ItemFeatures(str(feature_file(data_dir, "text"))),
            "content_neighbours": ContentNeighbours(k=3),
        }
        if featured
        else {}
    )
    model = MultimodalRecommender(
        num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, embed_dim=8, top_k=[5, 20], item_item=item_item,
        **content,
    )  # fmt: skip
    data = RecDataModule(path=str(data_dir), batch_size=32, history_length=3)
    connect(model, data)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.validate(model, datamodule=data, verbose=False)[-1]


@pytest.mark.parametrize(
    ("data", "weights", "cold_lengths"),
    [("synthetic_dir", [0.3, 30.0], [1.0]), ("featured_dir", [0.3, 3.0], [0.0, 1.0])],
    ids=["weights", "weights-and-cold-lengths"],
)
def test_validation_keeps_the_pair_that_ranks_best_and_logs_the_towers_alone(data, weights, cold_lengths, request):
    data_dir = request.getfixturevalue(data)
    chosen = _validated(data_dir, EASE(l2=5.0, weights=weights, cold_lengths=cold_lengths, select_by="recall@20"))
    candidates = EASE(weights=weights, cold_lengths=cold_lengths).candidates
    assert candidates == [(cold_lengths[0], 0.0)] + [(c, w) for c in cold_lengths for w in weights]
    alone = {pair: _validated(data_dir, _OneCandidate(pair, l2=5.0)) for pair in candidates}
    best = max(candidates, key=lambda pair: alone[pair]["val/recall@20"])
    assert (chosen["val/item_item_cold_length"], chosen["val/item_item_weight"]) == best
    for name in ("recall@20", "ndcg@20", "hit@5"):
        assert chosen[f"val/{name}"] == pytest.approx(alone[best][f"val/{name}"], abs=1e-6)
        assert chosen[f"val/towers/{name}"] == pytest.approx(alone[candidates[0]][f"val/{name}"], abs=1e-6)
    assert len({round(result["val/recall@20"], 6) for result in alone.values()}) > 2  # the candidates do differ
    if len(cold_lengths) > 1:  # the borrowed columns' length changes the ranking
        assert alone[(0.0, 3.0)]["val/recall@20"] != pytest.approx(alone[(1.0, 3.0)]["val/recall@20"], abs=1e-6)


@pytest.mark.parametrize("pair", [(1.0, 0.0), (0.0, 3.0), (1.0, 3.0)])
def test_validation_ranks_as_the_served_vectors_do(pair, featured_dir, monkeypatch):
    # validation adds the towers' scores and the history's votes per pair; serving ranks [user, w·x_u] · [item, B_i]
    shared = _validated(featured_dir, _OneCandidate(pair, l2=5.0))

    def served_validation_step(model, batch, batch_idx, dataloader_idx=0):
        model.item_item.choose(*pair)
        return RecommenderModule.validation_step(model, batch, batch_idx, dataloader_idx)

    monkeypatch.setattr(MultimodalRecommender, "validation_step", served_validation_step)
    monkeypatch.setattr(MultimodalRecommender, "on_validation_epoch_end", RecommenderModule.on_validation_epoch_end)
    served = _validated(featured_dir, _OneCandidate(pair, l2=5.0))
    for name in ("recall@20", "ndcg@20", "hit@5", "map@20"):
        assert shared[f"val/{name}"] == pytest.approx(served[f"val/{name}"], abs=1e-6)


def test_item_vectors_carry_their_column_and_a_new_item_a_zero_block(synthetic_dir):
    torch.manual_seed(0)
    model = MultimodalRecommender(
        num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, embed_dim=8, top_k=[5, 20], item_item=EASE(l2=5.0)
    )
    connect(model, RecDataModule(path=str(synthetic_dir), batch_size=32, history_length=3))
    model.setup("predict")
    model.eval()
    items = {"item_ids": torch.tensor([3, -1]), "id_mask": torch.tensor([True, False])}
    vectors = model.encode_items(items)["vectors"]
    assert vectors.shape == (2, 8 + TINY_SPEC.items)
    torch.testing.assert_close(vectors[0, 8:], model.item_item.matrix[:, 3])
    assert torch.all(vectors[1, 8:] == 0)
