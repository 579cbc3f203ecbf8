import math

import pytest
import torch
import torch.nn.functional as F

from mmrec_lightning.heads import CategoryHead, ImageTextContrastiveHead, RatingHead
from mmrec_lightning.losses import BCELoss, BPRLoss, SampledSoftmaxLoss, TaskWeighting

# --- heads -----------------------------------------------------------------------------------------------


def test_category_head_is_cross_entropy_over_the_items_with_a_known_category():
    head = CategoryHead(dim=2, num_categories=2)
    with torch.no_grad():
        head.classifier[1].weight.copy_(torch.eye(2))
        head.classifier[1].bias.zero_()
    vectors = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    loss = head.loss(vectors, torch.tensor([0, 0, -1]))
    assert head.loss(vectors, torch.tensor([0, 0, -7])).item() == loss.item()  # any negative is unknown
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "head, args",
    [
        (CategoryHead(2, 3), (torch.randn(4, 2), torch.full((4,), -1))),
        (ImageTextContrastiveHead(), (torch.randn(0, 2), torch.randn(0, 2))),
        (RatingHead(2), (torch.randn(4, 2), torch.randn(4, 2), torch.full((4,), float("nan")))),
    ],
    ids=["category", "contrastive", "rating"],
)
def test_a_batch_without_examples_gives_zero_still_computed_from_the_heads_parameters(head, args):
    loss = head.loss(*args)
    assert loss.item() == 0.0
    loss.backward()  # under DDP every parameter must take part in every step
    assert all(p.grad is not None for p in head.parameters())


def test_contrastive_loss_is_symmetric_infonce_over_cosine_similarities():
    head = ImageTextContrastiveHead(temperature=0.5, learnable_temperature=False)
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    text = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    cosine = torch.tensor(
        [
            [math.cos(math.pi / 4), 0.0, -1.0],
            [math.cos(math.pi / 4), 1.0, 0.0],
            [1.0, math.cos(math.pi / 4), -(0.5**0.5)],
        ]
    )
    logits = cosine / 0.5
    image_to_text = -torch.diagonal(torch.log_softmax(logits, dim=1)).mean()
    text_to_image = -torch.diagonal(torch.log_softmax(logits, dim=0)).mean()
    assert image_to_text != pytest.approx(text_to_image.item())  # so the test tells the directions apart
    assert head.loss(image, text).item() == pytest.approx(((image_to_text + text_to_image) / 2).item(), rel=1e-5)
    assert list(head.parameters()) == []


def test_contrastive_loss_over_the_items_with_both_equals_the_loss_of_those_items_alone():
    torch.manual_seed(0)
    head = ImageTextContrastiveHead(temperature=0.2)
    image, text = torch.randn(5, 3), torch.randn(5, 3)
    both = torch.tensor([True, False, True, True, False])
    masked = head.loss(image, text, both)
    assert masked.item() == pytest.approx(head.loss(image[both], text[both]).item(), rel=1e-6)
    none = head.loss(image, text, torch.zeros(5, dtype=torch.bool))
    assert none.item() == 0.0
    none.backward()
    assert head.log_scale.grad is not None


def test_contrastive_temperature_is_learned_when_asked():
    head = ImageTextContrastiveHead(temperature=0.1)
    torch.manual_seed(0)
    head.loss(torch.randn(4, 3), torch.randn(4, 3)).backward()
    assert head.log_scale.item() == pytest.approx(math.log(10.0)) and head.log_scale.grad != 0


def test_rating_head_is_bce_of_rating_at_least_threshold_over_the_rated_interactions():
    torch.manual_seed(0)
    head = RatingHead(dim=2, threshold=4.0)
    user, item = torch.randn(4, 2), torch.randn(4, 2)
    ratings = torch.tensor([5.0, 4.0, 3.5, float("nan")])
    logits = head(user, item)
    expected = -(F.logsigmoid(logits[0]) + F.logsigmoid(logits[1]) + F.logsigmoid(-logits[2])) / 3
    assert head.loss(user, item, ratings).item() == pytest.approx(expected.item(), rel=1e-6)


# --- recommendation losses ---------------------------------------------------------------------------------

USER = torch.tensor([[1.0, 0.0]])
POSITIVE = torch.tensor([[2.0, 0.0]])
NEGATIVES = torch.tensor([[[1.0, 0.0], [0.0, 5.0]]])  # scores: s+ = 2, s- = (1, 0)


def test_bpr_by_hand():
    expected = -(F.logsigmoid(torch.tensor(1.0)) + F.logsigmoid(torch.tensor(2.0))) / 2
    assert torch.allclose(BPRLoss()(USER, POSITIVE, NEGATIVES, torch.tensor([3])), expected)


def test_bce_labels_the_positive_one_and_the_negatives_zero():
    expected = -(F.logsigmoid(torch.tensor(2.0)) + F.logsigmoid(torch.tensor(-1.0)) + F.logsigmoid(torch.tensor(0.0)))
    assert torch.allclose(BCELoss()(USER, POSITIVE, NEGATIVES, torch.tensor([3])), expected / 3)


def test_sampled_softmax_by_hand():
    # softmax over [s+, s-1, s-2] / T with T = 1: -log(e^2 / (e^2 + e^1 + e^0))
    loss = SampledSoftmaxLoss(temperature=1.0)(USER, POSITIVE, NEGATIVES, torch.tensor([3]))
    assert torch.allclose(loss, -torch.log_softmax(torch.tensor([2.0, 1.0, 0.0]), 0)[0])


def test_in_batch_softmax_does_not_count_the_same_item_as_a_negative():
    user = torch.tensor([[1.0], [1.0]])
    positive = torch.tensor([[1.0], [1.0]])
    negatives = torch.zeros(2, 1, 1)
    same = SampledSoftmaxLoss(temperature=1.0)(user, positive, negatives, torch.tensor([7, 7]))
    different = SampledSoftmaxLoss(temperature=1.0)(user, positive, negatives, torch.tensor([7, 8]))
    assert torch.allclose(same, -torch.log_softmax(torch.tensor([1.0, 0.0]), 0)[0])
    assert different > same


def test_without_in_batch_candidates_each_positive_competes_with_its_own_negatives_only():
    user = torch.tensor([[1.0], [2.0]])
    positive = torch.tensor([[1.0], [3.0]])
    negatives = torch.tensor([[[0.5], [0.0]], [[1.0], [-1.0]]])
    loss = SampledSoftmaxLoss(temperature=0.5, in_batch=False)(user, positive, negatives, torch.tensor([1, 2]))
    by_hand = [  # softmax over [s+, s-1, s-2] / T, row by row; the other row's positive takes no part
        -torch.log_softmax(torch.tensor([1.0, 0.5, 0.0]) / 0.5, 0)[0],
        -torch.log_softmax(torch.tensor([6.0, 2.0, -2.0]) / 0.5, 0)[0],
    ]
    assert torch.allclose(loss, torch.stack(by_hand).mean())


def test_logq_correction_lowers_popular_candidates_relative_to_rare_ones():
    counts = torch.tensor([90.0, 10.0, 0.0, 0.0])  # item 0 popular, item 1 rare; 4 items
    user = torch.ones(2, 1)
    positive = torch.ones(2, 1)
    negatives = torch.ones(2, 1, 1)  # every candidate scores the same: only the correction differs
    positive_ids, negative_ids = torch.tensor([0, 1]), torch.tensor([[0], [2]])
    plain = SampledSoftmaxLoss(temperature=1.0).logits(user, positive, negatives, positive_ids, negative_ids)
    loss = SampledSoftmaxLoss(temperature=1.0, logq_correction=True)
    loss.set_item_counts(counts)
    corrected = loss.logits(user, positive, negatives, positive_ids, negative_ids)
    assert torch.equal(plain, torch.ones(2, 3))
    # expected occurrences among a row's candidates: B·c/C as an in-batch positive + N/I as a sampled negative,
    # negatives uniform over the I = 2 items that occur in training
    expected = {item: 2 * counts[item] / 100 + 1 / 2 for item in range(4)}
    for row in range(2):
        for column, item in enumerate([0, 1, int(negative_ids[row, 0])]):
            assert corrected[row, column].item() == pytest.approx(1 - math.log(expected[item]), rel=1e-6)
    assert (corrected[:, 0] < corrected[:, 1]).all()  # popular item 0 below rare item 1
    assert corrected[1, 2] > corrected[1, 1]  # a never-seen item's sampled negative above both


def test_logq_correction_without_item_counts_is_a_clear_error():
    loss = SampledSoftmaxLoss(logq_correction=True)
    with pytest.raises(RuntimeError, match="set_item_counts"):
        loss(USER, POSITIVE, NEGATIVES, torch.tensor([3]), torch.tensor([[1, 2]]))


# --- multi-task weighting ------------------------------------------------------------------------------------


def test_fixed_weighting_is_the_weighted_sum():
    weighting = TaskWeighting({"a": 0.5, "b": 2.0})
    total = weighting({"a": torch.tensor(3.0), "b": torch.tensor(0.25)})
    assert total.item() == pytest.approx(0.5 * 3.0 + 2.0 * 0.25)
    assert list(weighting.parameters()) == []


def test_uncertainty_weighting_starts_at_the_configured_weights_and_learns_s():
    weighting = TaskWeighting({"a": 0.5, "b": 2.0, "absent": 1.0}, learned=True)
    assert torch.allclose(weighting.weights(), torch.tensor([0.5, 2.0, 1.0]))
    losses = {"a": torch.tensor(3.0), "b": torch.tensor(0.25), "absent": torch.tensor(0.0)}
    total = weighting(losses)
    s = weighting.log_variance.detach()
    assert total.item() == pytest.approx((torch.exp(-s[:2]) * torch.tensor([3.0, 0.25]) + s[:2]).sum().item())
    total.backward()
    # d/ds (exp(-s)·L + s) = 1 - exp(-s)·L; a task without examples in the batch leaves its s alone
    assert torch.allclose(weighting.log_variance.grad, torch.tensor([1 - 0.5 * 3.0, 1 - 2.0 * 0.25, 0.0]))
