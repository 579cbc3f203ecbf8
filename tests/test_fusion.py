import pytest
import torch

from mmrec_lightning.fusion import AttentionFusion, ConcatFusion, MeanFusion


def test_attention_weights_follow_the_formula_and_sum_to_one():
    torch.manual_seed(0)
    fusion = AttentionFusion(num_modalities=3, dim=4)
    with torch.no_grad():
        fusion.query.copy_(torch.randn(4))
    h = torch.randn(5, 3, 4)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    z, alpha = fusion(h, mask)
    for b in range(5):
        available = mask[b].nonzero().flatten()
        logits = h[b, available] @ fusion.query
        expected_alpha = torch.softmax(logits, 0)
        assert torch.allclose(alpha[b, available], expected_alpha, atol=1e-6)
        assert torch.allclose(z[b], (expected_alpha[:, None] * h[b, available]).sum(0), atol=1e-6)
    assert torch.allclose(alpha.sum(1), torch.ones(5))
    assert (alpha[~mask] == 0).all()


def test_an_item_without_any_modality_gets_the_zero_vector():
    fusion = AttentionFusion(2, 3)
    z, alpha = fusion(torch.randn(2, 2, 3), torch.tensor([[False, False], [True, False]]))
    assert torch.equal(z[0], torch.zeros(3)) and torch.equal(alpha[0], torch.zeros(2))
    assert not torch.isnan(z).any()


@pytest.mark.parametrize("fusion_class", [AttentionFusion, MeanFusion, ConcatFusion])
def test_gradients_reach_every_available_modality(fusion_class):
    torch.manual_seed(0)
    fusion = fusion_class(3, 8)
    h = torch.randn(4, 3, 8, requires_grad=True)
    z, weights = fusion(h, torch.ones(4, 3, dtype=torch.bool))
    assert z.shape == (4, 8) and weights.shape == (4, 3)
    assert torch.allclose(weights.sum(1), torch.ones(4))
    z.pow(2).sum().backward()
    assert (h.grad.abs().sum(dim=(0, 2)) > 0).all()
