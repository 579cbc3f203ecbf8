"""How often the approximate indexes of ``export`` return the exact top-20, and how much faster.

    python benchmarks/ann_agreement.py [--export runs/demo/version_0/export] [--items 200000 --dim 64]

With ``--export``, the exported model's own vectors: every user queries the ``recommend`` index (inner
product) and every item the ``similar`` index (cosine). Without, clustered random vectors of the given size
(a catalogue much larger than the demo's, where approximation matters). Agreement is the mean fraction of
the exact top-k found by the index; the target is ≥ 0.95. Prints a table and writes
``benchmarks/results/ann_agreement.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from results_file import publish

from mmrec_lightning.export.index import Metric, build_index, normalized, search


def clustered(rows: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Vectors around random centres with varied norms, shaped like learned embeddings (not uniform noise)."""
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(clusters, size=rows)] + 0.5 * rng.normal(size=(rows, dim))
    return (vectors * rng.lognormal(0.0, 0.3, size=(rows, 1))).astype(np.float32)


def agreement(exact: np.ndarray, approximate: np.ndarray) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k."""
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approximate, exact, strict=True)]))


def compare(items: np.ndarray, queries: np.ndarray, metric: Metric, k: int) -> dict[str, float]:
    """Agreement and query time of the approximate index against the exact one, on the same queries."""
    if metric == "cosine":
        queries = normalized(queries)
    exact_index, approximate_index = (build_index(items, metric, kind) for kind in ("exact", "approximate"))
    timings = {}
    for name, index in (("exact", exact_index), ("approximate", approximate_index)):
        start = time.perf_counter()
        _, found = search(index, queries, k)
        timings[name] = (time.perf_counter() - start, found)
    exact_seconds, exact = timings["exact"]
    approximate_seconds, approximate = timings["approximate"]
    return {
        "queries": len(queries),
        "items": len(items),
        f"agreement@{k}": agreement(exact, approximate),
        "exact_ms_per_query": 1000 * exact_seconds / len(queries),
        "approximate_ms_per_query": 1000 * approximate_seconds / len(queries),
        "speedup": exact_seconds / approximate_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", default=None, help="an export folder; default clustered random vectors")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "ann_agreement.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.export:
        items = np.load(Path(args.export) / "item_vectors.npy")
        users = np.load(Path(args.export) / "user_vectors.npy")
        source = args.export
    else:
        items = clustered(args.items, args.dim, 256, rng)
        users = clustered(args.queries, args.dim, 256, rng)
        source = f"clustered random, {args.items:,} x {args.dim}"
    users = users[rng.permutation(len(users))[: args.queries]]
    sample = items[rng.permutation(len(items))[: args.queries]]
    results = {
        "recommend: inner product, IVF, user queries": compare(items, users, "inner_product", args.k),
        "similar: cosine, HNSW, item queries": compare(items, sample, "cosine", args.k),
    }
    key = f"agreement@{args.k}"
    lines = [
        f"\n{source}; load average {os.getloadavg()[0]:.1f}",
        f"{'index':<44} {'queries':>8} {key:>14} {'exact ms/q':>11} {'ann ms/q':>9} {'speed-up':>9}  target",
    ]
    for name, r in results.items():
        verdict = "PASS" if r[key] >= 0.95 else "FAIL"
        lines.append(
            f"{name:<44} {r['queries']:>8} {r[key]:>14.4f} {r['exact_ms_per_query']:>11.3f} "
            f"{r['approximate_ms_per_query']:>9.3f} {r['speedup']:>8.1f}x  ≥ 0.95 {verdict}"
        )
    publish("\n".join(lines), {"source": source, "k": args.k, "results": results}, args.output)


if __name__ == "__main__":
    main()
