"""Sequential user modelling: the causal encoder, the sequence training stream, SASRec and the content-aware
sequential model (with and without item IDs)."""

import json
import shutil
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY_SPEC, Interrupt, losses_on_one_batch, resumable_fit

from mmrec_lightning.connect import connect
from mmrec_lightning.data.datasets import TrainSequences
from mmrec_lightning.data.schema import PreparedDataset, SplitIndex
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.evaluation import CATALOGUE, USERS
from mmrec_lightning.features import ItemFeatures, feature_file
from mmrec_lightning.models import MultimodalRecommender, SASRec
from mmrec_lightning.towers.sequence import SequenceEncoder

MAX_LENGTH = 6


def _encoder(seed: int = 0, history_mean: bool = False) -> SequenceEncoder:
    torch.manual_seed(seed)
    encoder = SequenceEncoder(8, MAX_LENGTH, num_layers=2, num_heads=2, dropout=0.0, history_mean=history_mean)
    return encoder.eval()


@pytest.mark.parametrize("history_mean", [False, True])
def test_a_position_never_sees_later_items(history_mean):
    encoder = _encoder(history_mean=history_mean)
    items, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    changed = items.clone()
    changed[:, 3] = torch.randn(2, 8)
    with torch.no_grad():
        before, after = encoder(items, mask), encoder(changed, mask)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3:], after[:, 3:])


@pytest.mark.parametrize("history_mean", [False, True])
def test_padding_changes_no_state_and_the_user_is_the_state_after_the_latest_item(history_mean):
    encoder = _encoder(history_mean=history_mean)
    items = torch.randn(1, 3, 8)
    padded = torch.cat([items, torch.randn(1, 2, 8)], dim=1)  # two padding positions with garbage in them
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        plain = encoder(items, torch.ones(1, 3, dtype=torch.bool))
        with_padding = encoder(padded, mask)
        user = encoder.last(padded, mask)
        nobody = encoder.last(padded, torch.zeros_like(mask))
    torch.testing.assert_close(with_padding[:, :3], plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(user, plain[:, 2], atol=1e-5, rtol=1e-5)
    assert torch.equal(nobody, torch.zeros(1, 8))  # a user without history: no NaN, no signal


def test_the_history_mean_adds_the_average_of_the_items_so_far_to_each_state():
    items = torch.randn(1, 4, 8)
    mask = torch.tensor([[True, True, True, False]])
    with torch.no_grad():
        plain, with_mean = _encoder()(items, mask), _encoder(history_mean=True)(items, mask)  # the same weights
    means = torch.stack([items[0, : t + 1].mean(0) for t in range(3)]) * 8**0.5  # scaled as the inputs are
    torch.testing.assert_close(with_mean[0, :3], plain[0, :3] + means)


@pytest.mark.parametrize(("method", "expected"), [("random", True), ("loo", False), ("temporal", False)])
def test_an_automatic_history_mean_is_on_for_random_splits_only(method, expected, synthetic_dir, tmp_path):
    path = tmp_path / "data"
    shutil.copytree(synthetic_dir, path)
    metadata = json.loads((path / "metadata.json").read_text())
    metadata["split"]["method"] = method
    (path / "metadata.json").write_text(json.dumps(metadata))
    model = _sasrec(history_mean="auto")
    connect(model, RecDataModule(path=str(path)))
    with pytest.raises(RuntimeError, match="use_split"):
        model.sequence_encoder(torch.randn(1, 2, model.sequence_encoder.dim), torch.ones(1, 2, dtype=torch.bool))
    model.setup("fit")
    assert model.sequence_encoder.history_mean is expected


def test_training_sequences_predict_each_next_item_of_the_latest_items_against_unseen_negatives():
    # user 0: items 0..9 in time order; user 1: a single item (nothing to predict); user 2: 5, 6, 7
    train = SplitIndex(indptr=np.array([0, 10, 11, 14]), items=np.array([*range(10), 11, 5, 6, 7]), times=np.zeros(14))
    dataset = TrainSequences(train, num_items=12, num_negatives=2, max_length=4, seed=0)
    assert dataset.users.tolist() == [0, 2]
    batch = dataset[(np.array([0, 1]), 0)]
    assert batch["sequence"].tolist() == [[5, 6, 7, 8], [5, 6, 0, 0]]  # the latest max_length + 1, padded
    assert batch["targets"].tolist() == [[6, 7, 8, 9], [6, 7, 0, 0]]
    assert batch["sequence_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert batch["negatives"].shape == (2, 4, 2)
    assert not np.isin(batch["negatives"][0], train.row(0)).any()
    assert not np.isin(batch["negatives"][1], train.row(2)).any()


def test_training_sequences_for_a_random_split_target_the_items_each_position_has_not_seen():
    # history="others": the latest max_length items as evaluation reads them; a position's target is any of the
    # user's training items outside the sequence so far (before it or later in it), drawn anew each epoch
    train = SplitIndex(indptr=np.array([0, 10, 11, 14]), items=np.array([*range(10), 11, 5, 6, 7]), times=np.zeros(14))
    dataset = TrainSequences(train, num_items=12, num_negatives=2, max_length=4, seed=0, history="others")
    batch = dataset[(np.array([0, 1]), 0)]
    assert batch["sequence"].tolist() == [[6, 7, 8, 9], [5, 6, 0, 0]]  # user 2's last item has nothing left
    assert batch["sequence_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert batch["negatives"].shape == (2, 4, 2)
    seen = [[set() for _ in range(4)], [set() for _ in range(2)]]
    for epoch in range(200):
        batch = dataset[(np.array([0, 1]), epoch)]
        for row, width in enumerate((4, 2)):
            for position in range(width):
                seen[row][position].add(int(batch["targets"][row, position]))
    assert seen[0] == [{*range(6), 7, 8, 9}, {*range(6), 8, 9}, {*range(6), 9}, {*range(6)}]
    assert seen[1] == [{6, 7}, {7}]
    again = dataset[(np.array([0, 1]), 199)]
    assert all(np.array_equal(again[key], batch[key]) for key in ("targets", "negatives"))


def _sasrec(history_mean: bool | str = False) -> SASRec:
    torch.manual_seed(0)
    return SASRec(
        num_users=TINY_SPEC.users,
        num_items=TINY_SPEC.items,
        embed_dim=8,
        sequence_encoder=partial(SequenceEncoder, max_length=MAX_LENGTH, dropout=0.0, history_mean=history_mean),
        top_k=[5],
    )


def _content(path, use_item_id: bool = True) -> MultimodalRecommender:
    torch.manual_seed(0)
    return MultimodalRecommender(
        num_users=TINY_SPEC.users,
        num_items=TINY_SPEC.items,
        text_encoder=ItemFeatures(str(feature_file(path, "text"))),
        use_item_id=use_item_id,
        embed_dim=8,
        sequence_encoder=partial(SequenceEncoder, max_length=MAX_LENGTH, num_heads=2, dropout=0.0),
        modality_dropout=0.0,
        top_k=[5],
    )


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("kind", ["sasrec", "content", "id-free"])
def test_next_item_loss_falls(kind, featured_dir):
    model = _sasrec() if kind == "sasrec" else _content(featured_dir, use_item_id=kind == "content")
    data = RecDataModule(path=str(featured_dir), batch_size=32, num_negatives=4)
    connect(model, data)
    data.setup("fit")
    model.setup("fit")
    loader = data.train_dataloader()
    assert loader.dataset.history == "others"  # the synthetic split is random: held-out items fall anywhere
    batch = next(iter(loader))
    assert batch["sequence"].shape[1] == MAX_LENGTH  # the model's history length reached the data
    losses = losses_on_one_batch(model, batch, 25, torch.optim.Adam(model.parameters(), lr=1e-2))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_without_item_ids_every_item_gets_a_vector_from_its_content_cold_ones_too(featured_dir):
    model = _content(featured_dir, use_item_id=False).eval()
    data = RecDataModule(path=str(featured_dir), item_batch_size=TINY_SPEC.items)
    connect(model, data)
    data.setup("test")
    with torch.no_grad():
        vectors = model.encode_items(next(iter(data.test_dataloader()[CATALOGUE])))["vectors"]
        users = next(iter(data.test_dataloader()[USERS]))
        scores = model.encode_users(users, vectors) @ vectors.T
    cold = torch.as_tensor(data.facts.item_train_counts == 0)
    assert cold.any() and (vectors[cold].norm(dim=1) > 0.5).all()  # unit vectors (cosine), never trained on
    assert (scores[:, cold].max(0).values > scores.min()).all()  # cold items take part in the ranking
    assert model.modalities == ["text"]


def _fit_sasrec(path, directory, interrupt=None, ckpt_path=None):
    L.seed_everything(0)
    data = RecDataModule(path=str(path), batch_size=16, num_negatives=2)
    return resumable_fit(_sasrec(), data, directory, 2, Interrupt(interrupt) if interrupt else None, ckpt_path)


def test_a_sequential_run_stopped_mid_epoch_resumes_to_the_same_weights(synthetic_dir, tmp_path):
    steps_per_epoch = -(-int((PreparedDataset(synthetic_dir).split("train").lengths() >= 2).sum()) // 16)
    assert steps_per_epoch > 2
    reference = _fit_sasrec(synthetic_dir, tmp_path / "reference")
    assert _fit_sasrec(synthetic_dir, tmp_path / "killed", interrupt=steps_per_epoch + 1) is None
    resumed = _fit_sasrec(synthetic_dir, tmp_path / "killed", ckpt_path="last")
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_a_sequential_model_trains_a_partly_trained_image_encoder_end_to_end(synthetic_dir):
    from mmrec_lightning.encoders import TimmImageEncoder

    torch.manual_seed(0)
    model = MultimodalRecommender(
        num_users=TINY_SPEC.users,
        num_items=TINY_SPEC.items,
        image_encoder=TimmImageEncoder("test_efficientnet", image_size=32, train_blocks=1),
        embed_dim=8,
        sequence_encoder=partial(SequenceEncoder, max_length=MAX_LENGTH, dropout=0.0),
        top_k=[5],
    )
    data = RecDataModule(path=str(synthetic_dir), batch_size=8, num_negatives=2)
    connect(model, data)
    data.setup("fit")
    model.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["items"]["image"].dtype == torch.uint8  # decoded images, not features
    model.training_step(batch, 0).backward()
    encoder = model.item_tower.image_encoder
    trained = [p for p in encoder.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)
    assert all(p.grad is None for p in encoder.parameters() if not p.requires_grad)
