import math

import pytest
import torch

from mmrec_lightning.evaluation import hits_of, rank_items
from mmrec_lightning.metrics import RankingMetrics

INF = float("inf")


def test_one_user_by_hand():
    # ranking 0,1,2,3,4; relevant {1, 3}
    metric = RankingMetrics([2, 4])
    relevant = torch.tensor([[False, True, False, True, False]])
    metric.update_from_scores(torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]]), relevant)
    out = {k: float(v) for k, v in metric.compute().items()}
    d2, d3, d5 = 1 / math.log2(2), 1 / math.log2(3), 1 / math.log2(5)
    assert out["recall@2"] == pytest.approx(0.5)
    assert out["precision@2"] == pytest.approx(0.5)
    assert out["ndcg@2"] == pytest.approx(d3 / (d2 + d3))
    assert out["map@2"] == pytest.approx((1 / 2) / 2)
    assert out["hit@2"] == 1.0
    assert out["recall@4"] == pytest.approx(1.0)
    assert out["precision@4"] == pytest.approx(0.5)
    assert out["ndcg@4"] == pytest.approx((d3 + d5) / (d2 + d3))
    assert out["map@4"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_ideal_dcg_is_capped_at_k_and_map_divides_by_min_relevant_k():
    # 3 relevant items, K = 2, the top 2 both relevant: perfect NDCG@2 and MAP@2 although recall is 2/3
    metric = RankingMetrics([2])
    metric.update_from_scores(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([[True, True, False, True]]))
    out = metric.compute()
    assert float(out["ndcg@2"]) == pytest.approx(1.0)
    assert float(out["map@2"]) == pytest.approx(1.0)
    assert float(out["recall@2"]) == pytest.approx(2 / 3)


def test_masked_training_items_and_averaging_over_users_with_relevant_items():
    metric = RankingMetrics([1])
    # user 0: item 0 is a training item (masked), so item 2 ranks first and is relevant
    # user 1: its best item is irrelevant; user 2 has no relevant item and is not counted
    scores = torch.tensor([[-INF, 0.1, 0.8], [0.9, 0.1, 0.2], [0.3, 0.2, 0.1]])
    relevant = torch.tensor([[False, False, True], [False, True, False], [False, False, False]])
    metric.update_from_scores(scores, relevant)
    out = metric.compute()
    assert int(metric.users) == 2
    assert float(out["recall@1"]) == pytest.approx(0.5)
    assert float(out["hit@1"]) == pytest.approx(0.5)


def test_ties_among_relevant_items_do_not_change_the_result():
    metric = RankingMetrics([3])
    metric.update_from_scores(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), torch.tensor([[True, True, True, False]]))
    assert float(metric.compute()["ndcg@3"]) == pytest.approx(1.0)
    assert float(metric.compute()["map@3"]) == pytest.approx(1.0)


def test_ties_across_the_cutoff_count_one_of_the_tied_items():
    # items 0 and 1 tie for the single slot at K=1; exactly one of them is relevant
    metric = RankingMetrics([1])
    metric.update_from_scores(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[True, False, False]]))
    assert float(metric.compute()["recall@1"]) in (0.0, 1.0)


def test_batches_accumulate_like_one_batch():
    torch.manual_seed(0)
    scores, relevant = torch.randn(50, 30), torch.rand(50, 30) < 0.1
    whole, parts = RankingMetrics([5, 10]), RankingMetrics([5, 10])
    whole.update_from_scores(scores, relevant)
    for s, r in zip(scores.split(7), relevant.split(7), strict=True):
        parts.update_from_scores(s, r)
    for name, value in whole.compute().items():
        assert float(parts.compute()[name]) == pytest.approx(float(value), abs=1e-6)


def test_k_larger_than_catalogue_is_refused():
    with pytest.raises(ValueError, match="larger than the catalogue"):
        RankingMetrics([10]).update_from_scores(torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool))


def test_chunked_ranking_with_exclusions_equals_dense_masking():
    torch.manual_seed(0)
    users, items = torch.randn(20, 8), torch.randn(103, 8)
    exclude_rows = torch.randint(0, 20, (60,))
    exclude_items = torch.randint(0, 103, (60,))
    dense = users @ items.T
    dense[exclude_rows, exclude_items] = -INF
    expected_scores, expected = dense.topk(10, dim=1)
    scores, top = rank_items(users, items, exclude_rows, exclude_items, k=10, chunk_size=16)
    assert torch.allclose(scores, expected_scores)
    assert torch.equal(top, expected)


def test_sparse_hits_match_dense_relevance():
    top = torch.tensor([[4, 2, 7], [1, 0, 3]])
    hits = hits_of(top, target_rows=torch.tensor([0, 0, 1]), target_items=torch.tensor([7, 5, 1]))
    assert hits.tolist() == [[False, False, True], [True, False, False]]


def test_warm_and_cold_targets_are_scored_on_the_same_ranking():
    from torch import nn

    from mmrec_lightning.evaluation import USERS
    from mmrec_lightning.models import Popularity

    model = Popularity(num_users=1, num_items=5, top_k=[2])
    model._item_table = {"vectors": torch.tensor([[5.0], [4.0], [3.0], [0.0], [0.0]])}
    model._cold_group = torch.tensor([False, False, False, True, True])
    batch = {
        "users": torch.tensor([0]),
        "exclude_rows": torch.tensor([0]),
        "exclude_items": torch.tensor([0]),  # ranking: 1, 2, then the cold items
        "target_rows": torch.tensor([0, 0]),
        "target_items": torch.tensor([1, 3]),
    }
    groups = nn.ModuleDict({"warm": RankingMetrics([2]), "cold": RankingMetrics([2])})
    model._evaluation_step(batch, USERS, model.test_metrics, groups)
    assert float(model.test_metrics.compute()["recall@2"]) == pytest.approx(0.5)
    assert float(groups["warm"].compute()["recall@2"]) == pytest.approx(1.0)
    assert float(groups["cold"].compute()["recall@2"]) == pytest.approx(0.0)
    assert int(groups["cold"].compute()["users"]) == 1
