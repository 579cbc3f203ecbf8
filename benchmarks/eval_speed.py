"""Full-ranking evaluation speed, given the user and item vectors: ours against a tight plain-torch floor and,
with ``--mmrec DIR``, against MMRec's own evaluation, all measured in the same run on the machine at hand.

    python benchmarks/eval_speed.py --data data/baby [--mmrec ~/src/MMRec] [--repeats 6] [--batch-size 512]

Each side is timed as one whole evaluation, from the split's arrays and the vectors to the metrics, batch
building included:

- ours: the harness's evaluation path as the validation loop runs it — ``EvalUsers`` batches and
  ``collate_eval_users`` (each user's training items to mask and test items to find), the user vectors looked
  up, ``rank_items`` (scores, mask, top-k), ``hits_of``, ``RankingMetrics`` (Recall, NDCG, Precision, MAP, Hit
  at 10, 20, 50), ``--batch-size`` users per batch (512, ``data.eval_batch_size``'s default);
- floor: the tightest plain-torch computation we could write for the same numbers — per block of users, the
  mask and target coordinates sliced straight out of the CSR arrays (vectorised numpy), one matrix product,
  the training items set to -inf, ``topk``, the top-k compared with the targets' coordinates, the metrics as
  float64 sums. Several user-block sizes are timed; the fastest is the floor;
- MMRec (``--mmrec``, see ``peers.py``): its ``Trainer.evaluate`` on the test split with the same vectors in its
  BPR (batches of ``--mmrec-batch-size`` users, 4,096 as its ``eval_batch_size``; ``full_sort_predict``, the
  mask, ``topk``, ``TopKEvaluator``), in a subprocess with the same threads; its ``EvalDataLoader``, built once
  per run, is not timed.

Ours and the floor run ``--repeats`` times each, interleaved, before and after the MMRec job; reported are
medians with min and max. The floor's metrics must equal ours (to 1e-6: ours come back in float32), and
MMRec's (rounded by it to 4 decimals) must match ours to 5e-5. With ``--data`` (a prepared dataset) the real
split is used; otherwise a random one of Baby's sizes (19,445 users x 7,050 items, 6 training and 1 test item
per user). Vectors are random, ``--dim``-d. A large catalogue, ranked in chunks: ``large_catalogue.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peers import MMRecPeer, describe, machine, write_mmrec_data
from results_file import publish

from mmrec_lightning.data.schema import PreparedDataset, SplitIndex
from mmrec_lightning.evaluation import EvalUsers, collate_eval_users, hits_of, rank_items
from mmrec_lightning.metrics import METRICS, RankingMetrics

TOP_K = (10, 20, 50)
TARGET = 1.05  # ours / floor
FLOOR_BLOCKS = (128, 256, 512, 1024, 4096)
MMREC_METRICS = {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision", "map": "MAP"}


def _csr(rows: list[np.ndarray]) -> SplitIndex:
    lengths = np.array([len(r) for r in rows])
    items = np.concatenate(rows).astype(np.int64)
    return SplitIndex(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), items, np.zeros(len(items)))


def random_split(num_users: int, num_items: int, per_user: int, seed: int = 0) -> tuple[SplitIndex, SplitIndex]:
    """``per_user`` training items and one test item for every user, as CSR splits."""
    rng = np.random.default_rng(seed)
    rows = [rng.choice(num_items, size=per_user + 1, replace=False) for _ in range(num_users)]
    return _csr([r[:-1] for r in rows]), _csr([r[-1:] for r in rows])


def real_split(path: str) -> tuple[SplitIndex, SplitIndex, int, int]:
    dataset = PreparedDataset(path)
    return dataset.split("train"), dataset.split("test"), dataset.num_users, dataset.num_items


def ours(user_vectors, items, train: SplitIndex, test: SplitIndex, batch_size: int) -> dict[str, float]:
    """The harness's path: the evaluation loader's batches, ``rank_items``, ``hits_of``, ``RankingMetrics``."""
    users = EvalUsers(train, test, history_length=0)
    metric = RankingMetrics(TOP_K)
    for lo in range(0, len(users), batch_size):
        batch = collate_eval_users(users.__getitems__(list(range(lo, min(lo + batch_size, len(users))))))
        vectors = user_vectors[batch["users"]]
        _, top = rank_items(vectors, items, batch["exclude_rows"], batch["exclude_items"], max(TOP_K))
        num_relevant = torch.bincount(batch["target_rows"], minlength=len(vectors))
        metric.update(hits_of(top, batch["target_rows"], batch["target_items"]), num_relevant)
    return {name: float(value) for name, value in metric.compute().items() if name != "users"}


def coordinates(split: SplitIndex, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(row in the block, item) of every interaction of ``users`` in ``split``, sliced from its CSR arrays."""
    starts, lengths = split.indptr[users], split.indptr[users + 1] - split.indptr[users]
    rows = np.repeat(np.arange(len(users)), lengths)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    return torch.from_numpy(rows), torch.from_numpy(split.items[offsets].astype(np.int64))


def floor(user_vectors, items, train: SplitIndex, test: SplitIndex, block: int) -> dict[str, float]:
    """The same metrics computed directly: per block of users a product, a mask, ``topk``, a comparison."""
    k_max = max(TOP_K)
    positions = torch.arange(1, k_max + 1, dtype=torch.float64)
    discount = 1.0 / torch.log2(positions + 1.0)
    ideal = discount.cumsum(0)
    evaluated = np.flatnonzero(np.diff(test.indptr) > 0)
    sums = torch.zeros(len(METRICS), len(TOP_K), dtype=torch.float64)
    for lo in range(0, len(evaluated), block):
        users = evaluated[lo : lo + block]
        mask_rows, mask_items = coordinates(train, users)
        target_rows, target_items = coordinates(test, users)
        scores = user_vectors[torch.from_numpy(users)] @ items.T
        scores.index_put_((mask_rows, mask_items), torch.tensor(float("-inf")))
        top = scores.topk(k_max, dim=1).indices
        hits = torch.zeros(len(users), k_max, dtype=torch.float64)
        hits.index_put_((target_rows,), (top[target_rows] == target_items[:, None]).double(), accumulate=True)
        num_relevant = torch.from_numpy(np.diff(test.indptr)[users]).double()
        cum = hits.cumsum(1)
        dcg = (hits * discount).cumsum(1)
        precision_at_hits = (cum / positions * hits).cumsum(1)
        for j, k in enumerate(TOP_K):
            capped = num_relevant.clamp(max=k)
            sums[0, j] += (cum[:, k - 1] / num_relevant).sum()
            sums[1, j] += (dcg[:, k - 1] / ideal[capped.long() - 1]).sum()
            sums[2, j] += cum[:, k - 1].sum() / k
            sums[3, j] += (precision_at_hits[:, k - 1] / capped).sum()
            sums[4, j] += (cum[:, k - 1] > 0).sum()
    means = sums / len(evaluated)
    return {f"{metric}@{k}": float(means[i, j]) for i, metric in enumerate(METRICS) for j, k in enumerate(TOP_K)}


def timed(fn) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def spread(seconds: list[float]) -> dict:
    return {"seconds": seconds, "median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds)}


def check_same(reference: dict[str, float], other: dict[str, float], tolerance: float, what: str) -> None:
    for name, value in other.items():
        if abs(value - reference[name]) > tolerance:
            raise AssertionError(f"{what}: {name} = {value}, ours {reference[name]}")


def mmrec_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """MMRec's ``recall@20`` … keys as ours."""
    return {name.lower(): value for name, value in metrics.items()}


def table(result: dict) -> str:
    rows = [("", "median s", "min s", "max s", "/ floor")]
    floor_median = result["floor"]["median_s"]
    sides = [("ours", result["ours"]), (f"floor (blocks of {result['floor']['block']})", result["floor"])]
    for block, side in result["floor"]["blocks"].items():
        if int(block) != result["floor"]["block"]:
            sides.append((f"floor, blocks of {block}", side))
    if result["mmrec"] is not None:
        sides.append(("MMRec Trainer.evaluate", result["mmrec"]))
    for name, side in sides:
        rows.append((name, f"{side['median_s']:.3f}", f"{side['min_s']:.3f}", f"{side['max_s']:.3f}",
                     f"{side['median_s'] / floor_median:.2f}"))  # fmt: skip
    width = max(len(r[0]) for r in rows)
    return "\n".join(r[0].ljust(width) + "".join(c.rjust(10) for c in r[1:]) for r in rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="a prepared dataset to take the split from")
    parser.add_argument("--mmrec", default=None, help="a checkout of MMRec (holding src/main.py); needs --data")
    parser.add_argument("--mmrec-python", default=sys.executable, help="the Python that runs MMRec's code")
    parser.add_argument("--random-users", type=int, default=19445, help="users of the random split (no --data)")
    parser.add_argument("--random-items", type=int, default=7050, help="items of the random split (no --data)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512, help="users per batch, ours (the package's default)")
    parser.add_argument("--mmrec-batch-size", type=int, default=4096, help="users per batch, MMRec's (its default)")
    parser.add_argument("--floor-blocks", type=int, nargs="+", default=list(FLOOR_BLOCKS))
    parser.add_argument("--repeats", type=int, default=6, help="evaluations of each side, half before MMRec's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, all sides (default: torch's)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "eval_speed.json"))
    args = parser.parse_args(argv)
    if args.mmrec and not args.data:
        sys.exit("--mmrec needs --data: MMRec reads the split from its own files, written from a prepared dataset")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.data:
        train, test, num_users, num_items = real_split(args.data)
    else:
        num_users, num_items = args.random_users, args.random_items
        train, test = random_split(num_users, num_items, per_user=6)
    user_vectors, items = torch.randn(num_users, args.dim), torch.randn(num_items, args.dim)

    times = {"ours": [], **{block: [] for block in args.floor_blocks}}
    reference, mmrec = None, None

    def measure(repeats: int) -> None:
        nonlocal reference
        for _ in range(repeats):  # the sides interleaved, each timed whole
            seconds, reference = timed(lambda: ours(user_vectors, items, train, test, args.batch_size))
            times["ours"].append(seconds)
            for block in args.floor_blocks:
                seconds, metrics = timed(lambda block=block: floor(user_vectors, items, train, test, block))
                times[block].append(seconds)
                check_same(reference, metrics, 1e-6, f"floor, blocks of {block}")

    measure((args.repeats + 1) // 2)
    if args.mmrec:
        with tempfile.TemporaryDirectory() as tmp:
            vectors = Path(tmp) / "vectors.npz"
            np.savez(vectors, users=user_vectors.numpy(), items=items.numpy())
            peer = MMRecPeer(args.mmrec, write_mmrec_data(args.data, Path(tmp) / "mmrec"), torch.get_num_threads(),
                             args.mmrec_python)  # fmt: skip
            settings = {"topk": list(TOP_K), "metrics": list(MMREC_METRICS.values()), "eval_batch_size":
                        args.mmrec_batch_size, "embedding_size": args.dim, "reg_weight": 1e-4, "seed": 0,
                        "save_recommended_topk": False}  # fmt: skip
            mmrec = peer.evaluate(vectors, args.repeats, settings)
            mmrec["peer"] = peer.describe()
    measure(args.repeats // 2)
    if mmrec is not None:
        check_same(reference, mmrec_metrics(mmrec["metrics"]), 5e-5 + 1e-9, "MMRec")

    floors = {str(block): spread(times[block]) for block in args.floor_blocks}
    best = min(args.floor_blocks, key=lambda b: floors[str(b)]["median_s"])
    ours_spread = spread(times["ours"])
    ratio = ours_spread["median_s"] / floors[str(best)]["median_s"]
    info = machine()
    result = {
        "data": args.data,
        "users": len(np.flatnonzero(np.diff(test.indptr) > 0)),
        "items": num_items,
        "dim": args.dim,
        "batch_size": args.batch_size,
        "mmrec_batch_size": args.mmrec_batch_size if args.mmrec else None,
        "repeats": args.repeats,
        "machine": info,
        "included": "everything from the split's CSR arrays and the vectors to the metrics: batch building, "
        "scores, mask, top-k, hits, metrics (MMRec: its EvalDataLoader's precomputed masks excluded)",
        "ours": ours_spread,
        "floor": {**floors[str(best)], "block": best, "blocks": floors},
        "ratio": ratio,
        "target": TARGET,
        "passed": ratio <= TARGET,
        "mmrec": None if mmrec is None else {**spread(mmrec["seconds"]), **mmrec},
        "speedup_over_mmrec": None if mmrec is None else statistics.median(mmrec["seconds"]) / ours_spread["median_s"],
        "metrics": reference,
    }
    where = f"{args.data} test split" if args.data else "a random split"
    text = (
        f"\nfull-ranking evaluation, {where}: {result['users']:,} users x {num_items:,} items, {args.dim}-d, "
        f"{args.repeats} timed evaluations per side, batch building included\n{describe(info)}\n{table(result)}\n"
        f"ours / floor {ratio:.2f} (target <= {TARGET}): {'pass' if result['passed'] else 'FAIL'}"
        + ("" if mmrec is None else f"; {result['speedup_over_mmrec']:.1f}x faster than MMRec's, same metrics")
    )
    publish(text, result, args.output)
    return result


if __name__ == "__main__":
    main()
