"""Full-ranking evaluation speed, given the user and item vectors, against the plain-torch floor.

    python benchmarks/eval_speed.py [--data data/baby] [--repeats 3]

Ours: the harness's evaluation path (``rank_items`` + ``hits_of`` + ``RankingMetrics``), batch by batch as
the test loop runs it. Floor: the same computation written directly — one chunked matrix product, the
training items set to -inf, top-k, relevance gathered, the same metrics — timed in the same process.
With ``--data`` (a prepared dataset) the real split is used; otherwise a random one of Baby's sizes
(19,445 users x 7,050 items, 6 training and 1 test item per user). Vectors are 64-d and random.
Also reports a large catalogue (``--large-items``) evaluated in item chunks, with peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.metrics import RankingMetrics
from mmrec_lightning.evaluation import hits_of, rank_items

TOP_K = (10, 20, 50)


def random_split(num_users: int, num_items: int, per_user: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = [rng.choice(num_items, size=per_user + 1, replace=False) for _ in range(num_users)]
    train = [r[:-1] for r in rows]
    test = [r[-1:] for r in rows]
    return train, test


def real_split(path: str):
    dataset = PreparedDataset(path)
    train, test = dataset.split("train"), dataset.split("test")
    users = np.flatnonzero(test.lengths() > 0)
    return [train.row(u) for u in users], [test.row(u) for u in users], dataset.num_items


def coordinates(rows: list[np.ndarray], lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    part = rows[lo:hi]
    r = np.repeat(np.arange(len(part)), [len(x) for x in part])
    return torch.from_numpy(r), torch.from_numpy(np.concatenate(part).astype(np.int64))


def batches(train, test, batch_size):
    """Pre-built batches, as the data loader hands them to the model (not part of either timing)."""
    return [
        (lo, *coordinates(train, lo, lo + batch_size), *coordinates(test, lo, lo + batch_size))
        for lo in range(0, len(train), batch_size)
    ]


def ours(users, items, prepared, batch_size, chunk_size) -> dict[str, float]:
    metric = RankingMetrics(TOP_K)
    for lo, ex_r, ex_i, t_r, t_i in prepared:
        u = users[lo : lo + batch_size]
        _, top = rank_items(u, items, ex_r, ex_i, max(TOP_K), chunk_size)
        metric.update(hits_of(top, t_r, t_i), torch.bincount(t_r, minlength=len(u)))
    return {k: float(v) for k, v in metric.compute().items()}


def floor(users, items, prepared, batch_size) -> dict[str, float]:
    k_max = max(TOP_K)
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))
    sums = {f"{m}@{k}": 0.0 for m in ("recall", "ndcg", "precision", "map", "hit") for k in TOP_K}
    count = 0
    for lo, ex_r, ex_i, t_r, t_i in prepared:
        scores = users[lo : lo + batch_size] @ items.T
        scores[ex_r, ex_i] = float("-inf")
        top = scores.topk(k_max, dim=1).indices
        relevant = torch.zeros_like(scores, dtype=torch.bool)
        relevant[t_r, t_i] = True
        hits = relevant.gather(1, top).double()
        n_rel = relevant.sum(1).double()
        cum = hits.cumsum(1)
        prec_at_hit = (cum / torch.arange(1, k_max + 1) * hits).cumsum(1)
        ideal = discount.cumsum(0)
        dcg = (hits * discount).cumsum(1)
        for k in TOP_K:
            capped = n_rel.clamp(max=k)
            sums[f"recall@{k}"] += float((cum[:, k - 1] / n_rel).sum())
            sums[f"ndcg@{k}"] += float((dcg[:, k - 1] / ideal[capped.long() - 1]).sum())
            sums[f"precision@{k}"] += float((cum[:, k - 1] / k).sum())
            sums[f"map@{k}"] += float((prec_at_hit[:, k - 1] / capped).sum())
            sums[f"hit@{k}"] += float((cum[:, k - 1] > 0).sum())
        count += len(n_rel)
    return {k: v / count for k, v in sums.items()}


def best_time(fn, repeats: int) -> tuple[float, dict[str, float]]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="a prepared dataset to take the split from")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-items", type=int, default=1_000_000)
    parser.add_argument("--large-users", type=int, default=100_000)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "eval_speed.json"))
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.data:
        train, test, num_items = real_split(args.data)
    else:
        num_items = 7050
        train, test = random_split(19445, num_items, per_user=6)
    users, items = torch.randn(len(train), args.dim), torch.randn(num_items, args.dim)
    prepared = batches(train, test, args.batch_size)
    t_ours, m_ours = best_time(lambda: ours(users, items, prepared, args.batch_size, 1 << 16), args.repeats)
    t_floor, m_floor = best_time(lambda: floor(users, items, prepared, args.batch_size), args.repeats)
    for name, value in m_floor.items():
        assert abs(value - m_ours[name]) < 1e-6, (name, value, m_ours[name])

    # A large catalogue: items scored in chunks and the per-chunk top-k merged; memory bounded by chunks.
    large_items = torch.randn(args.large_items, 16)
    large_users = torch.randn(args.large_users, 16)
    large_train, large_test = random_split(args.large_users, args.large_items, per_user=5, seed=1)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    ours(large_users, large_items, batches(large_train, large_test, 1024), 1024, chunk_size=1 << 17)
    t_large = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    result = {
        "users": len(train),
        "items": num_items,
        "dim": args.dim,
        "ours_s": t_ours,
        "floor_s": t_floor,
        "ratio": t_ours / t_floor,
        "large": {
            "users": args.large_users,
            "items": args.large_items,
            "dim": 16,
            "seconds": t_large,
            "peak_rss_mb": rss_after / 1024,
            "peak_rss_growth_mb": (rss_after - rss_before) / 1024,
        },
        "threads": torch.get_num_threads(),
    }
    print(f"full-ranking evaluation, {len(train):,} users x {num_items:,} items, {args.dim}-d, best of {args.repeats}")
    print(f"{'':10}{'seconds':>10}")
    print(f"{'ours':10}{t_ours:>10.3f}\n{'floor':10}{t_floor:>10.3f}\n{'ratio':10}{t_ours / t_floor:>10.2f}")
    large = result["large"]
    print(
        f"large catalogue: {large['users']:,} users x {large['items']:,} items: {large['seconds']:.1f} s, "
        f"peak RSS {large['peak_rss_mb']:.0f} MB"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
