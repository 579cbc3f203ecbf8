"""Every model on the synthetic data's cold-start split: ID-only, image-only, text-only and fused models and
the baselines, test Recall@20 / NDCG@20 over all, warm and cold target items.

    python benchmarks/cold_start.py [--seeds 0 1 2] [--models "ID only" fused ...]

The content models train from features extracted once (configs/extract/synthetic.yaml: ImageNet
EfficientNet-Lite0 and all-MiniLM-L6-v2, offline), so each run is embedding speed; the dataset and the
features are made first if missing. A tenth of the items occur only in validation/test (cold). Checks that
each fused model beats ID-only on cold items by a wide margin (at least +0.05 Recall@20 and 3x) and is not
worse on warm items (Recall@20, NDCG@20). Prints a table and writes ``benchmarks/results/cold_start.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from results_file import publish
from seeds import run, summarise, table

from mmrec_lightning.data.prepare import main as prepare
from mmrec_lightning.features.extract import main as extract
from mmrec_lightning.features.files import feature_file

DATA = "data/synthetic"  # where the configs below read it
FEATURES = "configs/synthetic/from_features.yaml"
NO_IMAGE, NO_TEXT, NO_ID = (
    "--model.init_args.image_encoder=null",
    "--model.init_args.text_encoder=null",
    "--model.init_args.use_item_id=false",
)
MODELS: dict[str, tuple[str, list[str]]] = {
    "ID only": (FEATURES, [NO_IMAGE, NO_TEXT]),
    "image only": (FEATURES, [NO_TEXT, NO_ID]),
    "text only": (FEATURES, [NO_IMAGE, NO_ID]),
    "fused (attention)": (FEATURES, []),
    "fused (score)": (FEATURES, ["--model.init_args.fusion=mmrec_lightning.fusion.ScoreFusion"]),
    "fused (gated)": (FEATURES, ["--model.init_args.fusion=mmrec_lightning.fusion.GatedFusion"]),
    "fused (concat)": (FEATURES, ["--model.init_args.fusion=mmrec_lightning.fusion.ConcatFusion"]),
    "BPR-MF": ("configs/synthetic/bpr.yaml", []),
    "LightGCN": ("configs/synthetic/lightgcn.yaml", []),
    "VBPR": ("configs/synthetic/vbpr.yaml", []),
    "FREEDOM": ("configs/synthetic/freedom.yaml", []),
}
COLUMNS = ("recall@20", "ndcg@20", "warm/recall@20", "warm/ndcg@20", "cold/recall@20", "cold/ndcg@20")


def ensure_features(data: str) -> None:
    """The synthetic dataset of the demo and its extracted features, made if missing."""
    if not (Path(data) / "metadata.json").is_file():
        prepare(["--source", "synthetic", "--output", data])
    if not (feature_file(data, "image").is_file() and feature_file(data, "text").is_file()):
        extract(["--config", "configs/extract/synthetic.yaml", f"--data={data}"])


def evaluate(models: list[str], seeds: list[int], extra: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """mean / std / n of each test metric per model over ``seeds`` (the popularity baseline from the first)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in models:
        config, overrides = MODELS[name]
        runs = [run(config, seed, overrides + extra) for seed in seeds]
        model_class = next(key for key in runs[0] if key != "Popularity")
        summary[name] = summarise([{name: r[model_class]} for r in runs])[name]
        summary.setdefault("Popularity", summarise([{"Popularity": r["Popularity"]} for r in runs])["Popularity"])
    return summary


def checks(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, bool]:
    """The issue's acceptance, for each fused model: it beats ID-only on cold items by a wide margin, and is not
    worse on warm items (Recall@20 and NDCG@20)."""
    if "ID only" not in summary:
        return {}
    ids = {metric: values["mean"] for metric, values in summary["ID only"].items()}
    passed = {}
    for name in (name for name in summary if name.startswith("fused")):
        fused = {metric: values["mean"] for metric, values in summary[name].items()}
        cold, cold_ids = fused["cold/recall@20"], ids["cold/recall@20"]
        passed[f"{name}, cold: Recall@20 >= ID only + 0.05 and >= 3x"] = (
            cold >= cold_ids + 0.05 and cold >= 3 * cold_ids
        )
        for metric in ("warm/recall@20", "warm/ndcg@20"):
            passed[f"{name}, warm: {metric.split('/')[1]} >= ID only"] = fused[metric] >= ids[metric]
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "cold_start.json"))
    args, extra = parser.parse_known_args()
    ensure_features(DATA)
    summary = evaluate(args.models, args.seeds, [a for a in extra if a != "--"])
    passed = checks(summary)
    lines = [f"\nsynthetic cold-start split, seeds {args.seeds}: test metrics, mean ± std", table(summary, COLUMNS)]
    lines += [f"{'PASS' if ok else 'FAIL'}  {check}" for check, ok in passed.items()]
    publish("\n".join(lines), {"seeds": args.seeds, "summary": summary, "checks": passed}, args.output)


if __name__ == "__main__":
    main()
