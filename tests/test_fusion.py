import pytest
import torch

from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.fusion import (
    AttentionFusion,
    ConcatFusion,
    GatedFusion,
    MeanFusion,
    ScoreFusion,
    TransformerFusion,
    WeightedSumFusion,
)

FUSIONS = [AttentionFusion, MeanFusion, ConcatFusion, WeightedSumFusion, ScoreFusion, GatedFusion, TransformerFusion]
MASK = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)


def _randomised(fusion):
    """The fusion with every parameter random, so no formula holds by the accident of a zero init."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in fusion.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return fusion.eval()


@pytest.mark.parametrize("fusion_class", FUSIONS)
def test_shapes_weights_and_the_zero_vector_for_an_item_without_modalities(fusion_class):
    fusion = _randomised(fusion_class(3, 8))
    z, weights = fusion(torch.randn(5, 3, 8), MASK)
    assert z.shape == (5, fusion.output_dim) and weights.shape == (5, 3)
    assert torch.allclose(weights[:4].sum(1), torch.ones(4), atol=1e-6)
    assert (weights[~MASK] == 0).all()
    assert torch.equal(z[4], torch.zeros(fusion.output_dim)) and not torch.isnan(z).any()


@pytest.mark.parametrize("fusion_class", FUSIONS)
def test_gradients_reach_every_modality_and_every_parameter(fusion_class):
    torch.manual_seed(0)
    fusion = fusion_class(3, 8)
    h = torch.randn(4, 3, 8, requires_grad=True)
    z, _ = fusion(h, torch.ones(4, 3, dtype=torch.bool))
    z.pow(2).sum().backward()
    assert (h.grad.abs().sum(dim=(0, 2)) > 0).all()
    for name, parameter in fusion.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("fusion_class", FUSIONS)
def test_a_missing_modality_does_not_change_the_fused_vector(fusion_class):
    fusion = _randomised(fusion_class(3, 8))
    h = torch.randn(5, 3, 8)
    changed = h.clone()
    changed[~MASK] = 100.0
    assert torch.allclose(fusion(h, MASK)[0], fusion(changed, MASK)[0], atol=1e-5)


def test_attention_weights_follow_the_formula():
    fusion = _randomised(AttentionFusion(num_modalities=3, dim=4))
    h = torch.randn(5, 3, 4)
    z, alpha = fusion(h, MASK)
    for b in range(4):
        available = MASK[b].nonzero().flatten()
        expected_alpha = torch.softmax(h[b, available] @ fusion.query, 0)
        assert torch.allclose(alpha[b, available], expected_alpha, atol=1e-6)
        assert torch.allclose(z[b], (expected_alpha[:, None] * h[b, available]).sum(0), atol=1e-6)


def test_weighted_sum_is_the_learned_combination_of_per_modality_scores():
    fusion = WeightedSumFusion(3, 2)
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]).expand(2, -1, -1)
    mask = torch.tensor([[True, True, True], [True, False, True]])
    z, w = fusion(h, mask)
    e = torch.exp(torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(w[0], e / e.sum()) and torch.allclose(
        w[1], torch.stack([e[0], 0 * e[1], e[2]]) / (e[0] + e[2])
    )
    user = torch.tensor([2.0, -1.0])
    per_modality_scores = h[0] @ user  # with one shared user vector: the learned combination of scores
    assert torch.allclose(z @ user, w @ per_modality_scores)


def test_score_fusion_combines_one_score_per_modality_each_with_its_own_user_vector():
    fusion = ScoreFusion(3, 2)
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]).expand(2, -1, -1)
    mask = torch.tensor([[True, True, True], [True, False, True]])
    z, w = fusion(h, mask)
    assert fusion.output_dim == 6 and z.shape == (2, 6)
    user_blocks = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-1.0, 1.0]])  # u_m, one per modality
    scores = (h[0] * user_blocks).sum(1)  # s_m = u_mᵀh_m
    for b in range(2):
        assert torch.allclose(z[b] @ user_blocks.flatten(), w[b] @ scores)
    assert w[1, 1] == 0 and torch.allclose(w[1, [0, 2]].sum(), torch.tensor(1.0))


def test_gated_fusion_normalises_sigmoid_gates_computed_from_each_modality():
    fusion = _randomised(GatedFusion(3, 4))
    h = torch.randn(5, 3, 4)
    z, weights = fusion(h, MASK)
    for b in range(4):
        available = MASK[b].nonzero().flatten()
        gates = torch.sigmoid((h[b, available] * fusion.gate_weight[available]).sum(-1) + fusion.gate_bias[available])
        assert torch.allclose(weights[b, available], gates / gates.sum(), atol=1e-6)
        assert torch.allclose(z[b], (gates[:, None] * h[b, available]).sum(0) / gates.sum(), atol=1e-6)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_transformer_weights_are_the_cls_attention_of_the_last_layer(num_layers):
    torch.manual_seed(0)
    fusion = TransformerFusion(3, 8, num_layers=num_layers, num_heads=2).eval()
    h = torch.randn(5, 3, 8)
    _, weights = fusion(h, MASK)
    # the reference: run the layers and ask the last one's attention module for its (head-averaged) weights
    tokens = torch.cat([fusion.cls_token.expand(5, -1, -1), h + fusion.modality_embedding], 1)
    ignored = torch.cat([torch.zeros(5, 1, dtype=torch.bool), ~MASK], 1)
    for layer in fusion.layers[:-1]:
        tokens = layer(tokens, src_key_padding_mask=ignored)
    last = fusion.layers[-1]
    x = last.norm1(tokens)
    _, attention = last.self_attn(x, x, x, key_padding_mask=ignored, need_weights=True)
    expected = attention[:, 0, 1:] / attention[:, 0, 1:].sum(1, keepdim=True)
    assert torch.allclose(weights[:4], expected[:4], atol=1e-6)


def test_transformer_fusion_tells_modalities_apart():
    fusion = _randomised(TransformerFusion(2, 8, num_heads=2))
    h = torch.randn(1, 2, 8)
    swapped = h.flip(1)  # same vectors, other modalities: without modality embeddings z would be equal
    all_available = torch.ones(1, 2, dtype=torch.bool)
    assert not torch.allclose(fusion(h, all_available)[0], fusion(swapped, all_available)[0])


def test_transformer_fusion_refuses_a_dimension_its_heads_do_not_divide():
    with pytest.raises(ConfigurationError, match="divisible by num_heads"):
        TransformerFusion(3, 10, num_heads=4)
