import io

import lightning as L
import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import TINY_BERT, TINY_SPEC, fit_steps, losses_on_one_batch, write_synthetic
from PIL import Image

from mmrec_lightning.connect import connect
from mmrec_lightning.data.schema import PreparedDataset, write_prepared
from mmrec_lightning.data.sources import synthetic as syn
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.encoders.image import TimmImageEncoder
from mmrec_lightning.encoders.text import HFTextEncoder
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.fusion import TransformerFusion
from mmrec_lightning.heads import CategoryHead, ImageTextContrastiveHead, RatingHead
from mmrec_lightning.losses import SampledSoftmaxLoss
from mmrec_lightning.models import MultimodalRecommender

TWO_LAYER_BERT = {**TINY_BERT, "num_hidden_layers": 2}


def _model(tokenizer_dir, freeze=False, image_args=None, text_args=None, **kwargs):
    torch.manual_seed(0)
    image_args = image_args or {"freeze": freeze}
    text_args = text_args or {"config": TINY_BERT, "freeze": freeze}
    return MultimodalRecommender(
        num_users=TINY_SPEC.users,
        num_items=TINY_SPEC.items,
        num_categories=6,
        image_encoder=TimmImageEncoder("test_efficientnet", image_size=32, **image_args),
        text_encoder=HFTextEncoder(tokenizer=str(tokenizer_dir), max_length=16, **text_args),
        embed_dim=16,
        top_k=[5],
        **kwargs,
    )


def _datamodule(model, data_dir):
    dm = RecDataModule(path=str(data_dir), batch_size=32, num_negatives=2, history_length=5)
    connect(model, dm)
    dm.setup("fit")
    return dm


def _batch(model, data_dir):
    return next(iter(_datamodule(model, data_dir).train_dataloader()))


def _rating(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The ratings of the rated dataset: 1..5, missing where user + item is a multiple of 7."""
    return np.where((users + items) % 7 == 0, np.nan, (users + items) % 5 + 1).astype(np.float32)


@pytest.fixture(scope="module")
def rated_dir(tmp_path_factory):
    data = syn.generate(TINY_SPEC)
    interactions = data.interactions
    users, items = (interactions.column(c).to_numpy().astype(np.int64) for c in ("user", "item"))
    ratings = pa.array(_rating(users, items), pa.float32(), from_pandas=True)  # NaN -> null
    interactions = interactions.set_column(interactions.schema.get_field_index("rating"), "rating", ratings)
    return write_prepared(
        tmp_path_factory.mktemp("data") / "rated",
        interactions=interactions,
        items=data.items,
        users=data.users,
        metadata=data.metadata,
    )


def test_training_loss_falls(synthetic_dir, tokenizer_dir):
    model = _model(tokenizer_dir, dropout=0.0, modality_dropout=0.0, history_dropout=0.0)  # no noise in the curve
    dm = _datamodule(model, synthetic_dir)
    model.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    losses = losses_on_one_batch(model, batch, 30, torch.optim.AdamW(model.parameters(), lr=3e-3))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_frozen_encoders_are_cached_and_the_cache_equals_a_direct_encode(synthetic_dir, tokenizer_dir):
    model = _model(tokenizer_dir, freeze=True).eval()
    items = _batch(model, synthetic_dir)["items"]
    tower = model.item_tower
    with torch.no_grad():
        first = tower(items).vectors
        cached_text = tower._text_cache[items["item_ids"]].clone()
        direct = tower.text_encoder(items["input_ids"], items["attention_mask"])
        again = tower(items).vectors
    assert tower._text_cached[items["item_ids"]].all()
    assert torch.allclose(cached_text, direct, atol=1e-6)
    assert torch.allclose(first, again)
    assert not model.item_tower.augment_images  # cached image features must not depend on random crops


def test_cold_items_do_not_use_their_untrained_id_embedding(synthetic_dir, tokenizer_dir):
    model = _model(tokenizer_dir).eval()
    items = _batch(model, synthetic_dir)["items"]
    items["id_mask"][:] = False
    with torch.no_grad():
        vectors, weights, _, _ = model.item_tower(items)
        model.item_tower.item_embedding.weight.mul_(100)
        changed = model.item_tower(items).vectors
    assert torch.allclose(vectors, changed)
    assert (weights[:, model.modalities.index("id")] == 0).all()


def test_lightgcn_propagation_and_its_gradient_match_a_dense_reference():
    from mmrec_lightning.models.id_based import SparseMatmul, normalized_adjacency

    indptr, items = [0, 2, 3], [0, 2, 1]  # user 0: items 0, 2; user 1: item 1
    graph = normalized_adjacency(indptr, items, num_users=2, num_items=3)
    dense = torch.zeros(5, 5)
    for user, item in ((0, 0), (0, 2), (1, 1)):
        dense[user, 2 + item] = dense[2 + item, user] = 1.0
    degree = dense.sum(1)
    expected = dense / torch.sqrt(degree[:, None] * degree[None, :])
    assert torch.allclose(graph.to_dense(), expected)
    x = torch.randn(5, 3, requires_grad=True)
    SparseMatmul.apply(graph, graph, x).pow(2).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    (expected @ reference).pow(2).sum().backward()
    assert torch.allclose(x.grad, reference.grad, atol=1e-6)


def test_a_cutoff_larger_than_the_catalogue_is_refused_when_the_model_is_built():
    import pytest

    from mmrec_lightning.errors import ConfigurationError
    from mmrec_lightning.models import Popularity

    with pytest.raises(ConfigurationError, match=r"model.top_k: K=50 is larger than the catalogue \(40 items\)"):
        Popularity(num_users=3, num_items=40, top_k=[10, 50])


def test_ratings_reach_the_training_batch_and_missing_ones_are_nan(rated_dir, synthetic_dir, tokenizer_dir):
    model = _model(tokenizer_dir)
    batch = _batch(model, rated_dir)
    item_ids = batch["items"]["item_ids"][batch["positives"]]
    expected = _rating(batch["users"].numpy(), item_ids.numpy())
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    np.testing.assert_array_equal(batch["ratings"].numpy(), expected)
    assert "ratings" not in _batch(model, synthetic_dir)  # the synthetic data has no ratings at all


def test_a_rating_head_without_ratings_in_the_data_is_refused(synthetic_dir, tokenizer_dir):
    model = _model(tokenizer_dir, rating_head=RatingHead)
    dm = RecDataModule(path=str(synthetic_dir), batch_size=32, history_length=5)
    connect(model, dm)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigurationError, match="no ratings"):
        trainer.fit(model, datamodule=dm)


def test_the_contrastive_head_needs_both_encoders():
    with pytest.raises(ConfigurationError, match="both an image_encoder and a text_encoder"):
        MultimodalRecommender(num_users=3, num_items=10, top_k=[5], contrastive_head=ImageTextContrastiveHead())


def test_one_fit_step_with_every_head_learned_weights_logq_and_partly_trained_encoders(rated_dir, tokenizer_dir):
    model = _model(
        tokenizer_dir,
        image_args={"train_blocks": 1},
        text_args={"config": TWO_LAYER_BERT, "train_blocks": 1},
        fusion=TransformerFusion,
        loss=SampledSoftmaxLoss(logq_correction=True),
        category_head=CategoryHead,
        contrastive_head=ImageTextContrastiveHead(),
        rating_head=RatingHead,
        loss_weighting="uncertainty",
        encoder_lr=1e-2,
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    dm = RecDataModule(path=str(rated_dir), batch_size=32, num_negatives=2, history_length=5)
    connect(model, dm)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert torch.equal(model.loss.item_counts, torch.as_tensor(dm.facts.item_train_counts, dtype=torch.float32))
    assert model.task_weighting.names == ["category", "contrastive", "rating"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    for name in ("task_weighting.log_variance", "contrastive_head.log_scale", "rating_head.mlp.0.weight"):
        assert name in changed
    image = {name for name in before if name.startswith("item_tower.image_encoder.")}
    text = {name for name in before if name.startswith("item_tower.text_encoder.")}
    last_image_block = tuple(f"item_tower.image_encoder.model.{p}" for p in ("blocks.4.", "conv_head.", "bn2."))
    assert image & changed == {n for n in image if n.startswith(last_image_block)}
    assert text & changed == {n for n in text if n.startswith("item_tower.text_encoder.model.encoder.layer.1.")}


@pytest.mark.parametrize(
    "make, trainable",
    [
        (lambda: TimmImageEncoder("test_vit", image_size=32, train_blocks=1), ("model.blocks.5.", "model.norm.")),
        (
            lambda: TimmImageEncoder("test_efficientnet", image_size=32, train_blocks=2),
            ("model.blocks.3.", "model.blocks.4.", "model.conv_head.", "model.bn2."),
        ),
        (
            lambda: TimmImageEncoder("test_convnext", image_size=32, train_blocks=1),
            ("model.stages.3.", "model.head.norm."),
        ),
        (lambda: HFTextEncoder(config=TWO_LAYER_BERT, tokenizer="unused", train_blocks=1), ("model.encoder.layer.1.",)),
    ],
    ids=["vit", "efficientnet", "convnext", "bert"],
)
def test_train_blocks_trains_only_the_last_blocks_and_the_final_norm(make, trainable):
    torch.manual_seed(0)
    encoder = make().train()
    assert {n for n, p in encoder.named_parameters() if p.requires_grad} == {
        n for n, _ in encoder.named_parameters() if n.startswith(trainable)
    }
    params = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    buffers = {name: b.clone() for name, b in encoder.named_buffers()}
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=0.1, weight_decay=0.1)
    if isinstance(encoder, HFTextEncoder):
        out = encoder(torch.randint(5, 128, (4, 8)), torch.ones(4, 8, dtype=torch.long))
    else:
        out = encoder(torch.randn(4, 3, 32, 32))
    out.pow(2).mean().backward()
    optimizer.step()
    for name, p in encoder.named_parameters():
        assert torch.equal(p, params[name]) != name.startswith(trainable), name
    for name, b in encoder.named_buffers():  # batch-norm statistics of the frozen part are not updated either
        if not name.startswith(trainable) and b.is_floating_point():
            assert torch.equal(b, buffers[name]), name


def test_train_blocks_zero_is_freezing_and_impossible_counts_are_refused():
    encoder = TimmImageEncoder("test_resnet", train_blocks=0)
    assert encoder.frozen and not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(ConfigurationError, match="train_blocks=5, but the model has 4 blocks"):
        TimmImageEncoder("test_resnet", train_blocks=5)
    with pytest.raises(ConfigurationError, match="contradicts"):
        TimmImageEncoder("test_resnet", freeze=True, train_blocks=2)


def test_encoder_lr_puts_the_encoders_trainable_parameters_in_their_own_group(tokenizer_dir):
    model = _model(tokenizer_dir, image_args={"train_blocks": 1}, encoder_lr=1e-5)
    model.optimizer_factory = lambda groups: torch.optim.AdamW(groups, lr=1e-3)
    rest, encoders = model.configure_optimizers().param_groups
    encoder_parameters = [
        p for e in (model.item_tower.image_encoder, model.item_tower.text_encoder) for p in e.parameters()
    ]
    assert rest["lr"] == 1e-3 and encoders["lr"] == 1e-5
    assert {id(p) for p in encoders["params"]} == {id(p) for p in encoder_parameters if p.requires_grad}
    assert {id(p) for p in rest["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad and id(p) not in {id(q) for q in encoder_parameters}
    }


def test_a_new_item_is_placed_from_its_content_as_a_cold_catalogue_item_is(synthetic_dir, tokenizer_dir):
    model = _model(tokenizer_dir, freeze=True)
    dm = _datamodule(model, synthetic_dir)
    cold = np.flatnonzero(dm.facts.item_train_counts == 0)[:3]
    catalogue = dm.catalogue_dataloader().collate_fn(cold.tolist())
    dataset = PreparedDataset(synthetic_dir)
    images = [Image.open(io.BytesIO(dataset.items.column("image")[int(i)].as_py())) for i in cold]
    texts = [dataset.items.column("text")[int(i)].as_py() for i in cold]
    model.train()  # encode_new_items must evaluate whatever mode the model is in, and leave it as it was
    new = model.encode_new_items(images, texts)
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = model.encode_items(catalogue)["vectors"]
    torch.testing.assert_close(new, expected, atol=1e-5, rtol=1e-4)
    text_only = model.encode_new_items([None], [texts[0]])
    assert text_only.shape == (1, 16) and not torch.allclose(text_only, new[:1])


@pytest.mark.parametrize(("per_user", "expected"), [(12, False), (40, True)])  # about 8 and 27 in training
def test_the_user_id_is_decided_by_the_interactions_per_user_and_kept_in_the_checkpoint(per_user, expected, tmp_path):
    spec = syn.SyntheticSpec(users=20, items=80, seed=1, image_size=32, interactions_per_user=per_user)
    path = write_synthetic(tmp_path / "data", spec)
    model = MultimodalRecommender(num_users=spec.users, num_items=spec.items, embed_dim=8, top_k=[5])
    assert model.user_tower.embedding is None  # undecided until the data is seen
    trainer = fit_steps(model, RecDataModule(path=str(path), batch_size=64, history_length=3), 2)
    assert (model.user_tower.embedding is not None) is expected
    assert model.hparams.use_user_id is expected
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["use_user_id"] is expected
    restored = MultimodalRecommender(num_users=spec.users, num_items=spec.items, embed_dim=8, top_k=[5],
                                     use_user_id=checkpoint["hyper_parameters"]["use_user_id"])  # fmt: skip
    restored.load_state_dict(checkpoint["state_dict"])  # strict: the saved decision builds the same tower
