"""Train and test one config under several seeds; report mean ± std of every test metric per model.

    python benchmarks/seeds.py --config configs/demo.yaml --seeds 0 1 2 [-- extra CLI options]

Prints a table and writes ``benchmarks/results/seeds-<config name>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from results_file import publish

from mmrec_lightning.callbacks import TestMetricsWriter
from mmrec_lightning.cli import RecommenderCLI

REPORTED = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "cold/recall@20", "warm/recall@20")


def run(config: str, seed: int, extra: list[str]) -> dict[str, dict[str, float]]:
    args = ["fit", "--config", config, f"--seed_everything={seed}", f"--data.seed={seed}", "--test_after_fit=true"]
    cli = RecommenderCLI(args=args + extra)
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, TestMetricsWriter))
    return json.loads(writer.path.read_text())


def summarise(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for model in runs[0]:
        for metric in runs[0][model]:
            values = [r[model][metric] for r in runs if metric in r.get(model, {})]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary.setdefault(model, {})[metric] = {"mean": statistics.fmean(values), "std": spread, "n": len(values)}
    return summary


def table(summary: dict[str, dict[str, dict[str, float]]], reported: tuple[str, ...] = REPORTED) -> str:
    """mean ± std of each ``reported`` metric that some model has, one row per model."""
    metrics = [m for m in reported if any(m in s for s in summary.values())]
    rows = [["model", *metrics]]
    for model, values in summary.items():
        rows.append(
            [model, *(f"{values[m]['mean']:.4f} ± {values[m]['std']:.4f}" if m in values else "-" for m in metrics)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/seeds-<config>.json)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    runs = [run(args.config, seed, extra) for seed in args.seeds]
    summary = summarise(runs)
    output = args.output or Path(__file__).parent / "results" / f"seeds-{Path(args.config).stem}.json"
    publish(
        f"\n{args.config}, seeds {args.seeds}: test metrics, mean ± std\n" + table(summary),
        {"config": args.config, "seeds": args.seeds, "summary": summary, "runs": runs},
        output,
    )


if __name__ == "__main__":
    main()
