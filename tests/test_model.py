import torch
from conftest import TINY_BERT, TINY_SPEC

from mmrec_lightning.data.datamodule import RecDataModule
from mmrec_lightning.encoders.image import TimmImageEncoder
from mmrec_lightning.encoders.text import HFTextEncoder
from mmrec_lightning.losses import BPRLoss, SampledSoftmaxLoss
from mmrec_lightning.models import MultimodalRecommender


def _model(tokenizer_dir, freeze=False, **kwargs):
    torch.manual_seed(0)
    return MultimodalRecommender(
        num_users=TINY_SPEC.users,
        num_items=TINY_SPEC.items,
        num_categories=6,
        image_encoder=TimmImageEncoder("test_efficientnet", image_size=32, freeze=freeze),
        text_encoder=HFTextEncoder(config=TINY_BERT, tokenizer=str(tokenizer_dir), max_length=16, freeze=freeze),
        embed_dim=16,
        top_k=[5],
        **kwargs,
    )


def _batch(model, synthetic_dir):
    dm = RecDataModule(path=str(synthetic_dir), batch_size=32, num_negatives=2, history_length=5)
    dm.preprocessing = model.item_preprocessing()
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_training_loss_falls(synthetic_dir, tokenizer_dir):
    model = _model(tokenizer_dir)
    batch = _batch(model, synthetic_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(30):
        loss = model.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_frozen_encoders_are_cached_and_the_cache_equals_a_direct_encode(synthetic_dir, tokenizer_dir):
    model = _model(tokenizer_dir, freeze=True).eval()
    items = _batch(model, synthetic_dir)["items"]
    tower = model.item_tower
    with torch.no_grad():
        first, _ = tower(items)
        cached_text = tower._text_cache[items["item_ids"]].clone()
        direct = tower.text_encoder(items["input_ids"], items["attention_mask"])
        again, _ = tower(items)
    assert tower._text_cached[items["item_ids"]].all()
    assert torch.allclose(cached_text, direct, atol=1e-6)
    assert torch.allclose(first, again)
    assert not model.item_tower.augment_images  # cached image features must not depend on random crops


def test_cold_items_do_not_use_their_untrained_id_embedding(synthetic_dir, tokenizer_dir):
    model = _model(tokenizer_dir).eval()
    items = _batch(model, synthetic_dir)["items"]
    items["id_mask"][:] = False
    with torch.no_grad():
        vectors, weights = model.item_tower(items)
        model.item_tower.item_embedding.weight.mul_(100)
        changed, _ = model.item_tower(items)
    assert torch.allclose(vectors, changed)
    assert (weights[:, model.modalities.index("id")] == 0).all()


def test_bpr_and_sampled_softmax_by_hand():
    user = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[2.0, 0.0]])
    negatives = torch.tensor([[[1.0, 0.0], [0.0, 5.0]]])
    # BPR: s+ = 2, s- = (1, 0): mean(-log σ(1), -log σ(2))
    expected = (
        -(torch.nn.functional.logsigmoid(torch.tensor(1.0)) + torch.nn.functional.logsigmoid(torch.tensor(2.0))) / 2
    )
    assert torch.allclose(BPRLoss()(user, positive, negatives, torch.tensor([3])), expected)
    # softmax over [s+, s-1, s-2] / T with T = 1: -log(e^2 / (e^2 + e^1 + e^0))
    loss = SampledSoftmaxLoss(temperature=1.0)(user, positive, negatives, torch.tensor([3]))
    assert torch.allclose(loss, -torch.log_softmax(torch.tensor([2.0, 1.0, 0.0]), 0)[0])


def test_in_batch_softmax_does_not_count_the_same_item_as_a_negative():
    user = torch.tensor([[1.0], [1.0]])
    positive = torch.tensor([[1.0], [1.0]])
    negatives = torch.zeros(2, 1, 1)
    same = SampledSoftmaxLoss(temperature=1.0)(user, positive, negatives, torch.tensor([7, 7]))
    different = SampledSoftmaxLoss(temperature=1.0)(user, positive, negatives, torch.tensor([7, 8]))
    assert torch.allclose(same, -torch.log_softmax(torch.tensor([1.0, 0.0]), 0)[0])
    assert different > same


def test_lightgcn_propagation_and_its_gradient_match_a_dense_reference():
    from mmrec_lightning.models.id_based import SymmetricSparseMatmul, normalized_adjacency

    indptr, items = [0, 2, 3], [0, 2, 1]  # user 0: items 0, 2; user 1: item 1
    graph = normalized_adjacency(indptr, items, num_users=2, num_items=3)
    dense = torch.zeros(5, 5)
    for user, item in ((0, 0), (0, 2), (1, 1)):
        dense[user, 2 + item] = dense[2 + item, user] = 1.0
    degree = dense.sum(1)
    expected = dense / torch.sqrt(degree[:, None] * degree[None, :])
    assert torch.allclose(graph.to_dense(), expected)
    x = torch.randn(5, 3, requires_grad=True)
    SymmetricSparseMatmul.apply(graph, x).pow(2).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    (expected @ reference).pow(2).sum().backward()
    assert torch.allclose(x.grad, reference.grad, atol=1e-6)


def test_a_cutoff_larger_than_the_catalogue_is_refused_when_the_model_is_built():
    import pytest

    from mmrec_lightning.errors import ConfigurationError
    from mmrec_lightning.models import Popularity

    with pytest.raises(ConfigurationError, match=r"model.top_k: K=50 is larger than the catalogue \(40 items\)"):
        Popularity(num_users=3, num_items=40, top_k=[10, 50])
