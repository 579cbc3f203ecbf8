"""Sequential recommendation on MovieLens-100K with posters and plot overviews: popularity, BPR-MF, SASRec
(IDs only), the content-aware sequential model and its ID-free variant, on the leave-one-out split and, for
items new at test time, on the fixed cold-item split.

    python benchmarks/sequential.py --source ../shared/data/ml-100k-posters [--models sasrec sequential ...]
        [--splits loo cold] [--seeds 0 1 2] [--max_epochs N]

Prepares ``data/ml100k-loo`` (``prepare --split loo``: each user's latest interaction to test, the one before
to validation) and ``data/ml100k-cold`` from the source folder, with the image and text features of
``configs/extract/ml100k.yaml``. Each model is trained from its shipped config (``configs/ml100k-loo/`` for
the sequential ones, ``configs/ml100k/`` for popularity and BPR-MF), the checkpoint chosen on validation, and
its test users scored with ``predict``; the numbers reported are computed from that output (and checked
against what ``test`` reported): Recall and NDCG @10 and @20 over all test items and, on the cold split, over
each user's test items among ``cold_items.csv``. Prints mean ± std over the seeds and writes
``benchmarks/results/sequential.json`` after each model and split.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from ml100k import ROOT, record, retarget, run_command, summarise, train_and_score

from mmrec_lightning.tuning.sweep import resolved

CONFIGS = {  # model -> its shipped config, and the dataset that config names
    "popularity": ("configs/ml100k/popularity.yaml", "data/ml100k-warm"),
    "bpr": ("configs/ml100k/bpr.yaml", "data/ml100k-warm"),
    "sasrec": ("configs/ml100k-loo/sasrec.yaml", "data/ml100k-loo"),
    "sequential": ("configs/ml100k-loo/sequential.yaml", "data/ml100k-loo"),
    "sequential_id_free": ("configs/ml100k-loo/sequential_id_free.yaml", "data/ml100k-loo"),
}
CUTOFFS = (10, 20)
SPLIT_OPTIONS = {
    "loo": ["--interactions", "split_warm.csv", "--split", "loo"],  # every interaction; the split is by time
    "cold": ["--interactions", "split_cold.csv", "--split_column", "split", "--split", "source"],
}


def prepare(source: Path, split: str, output: Path) -> None:
    """The prepared dataset of one split and its features (each made once)."""
    if not (output / "metadata.json").is_file():
        options = [str(source / value) if value.endswith(".csv") else value for value in SPLIT_OPTIONS[split]]
        run_command(
            "prepare", "--source", "table", "--output", str(output), *options, "--items", str(source / "items.csv"),
            "--timestamp_column", "timestamp", "--rating_column", "rating", "--text_columns", "[title, description]",
            "--category_column", "category", "--image_column", "image",
        )  # fmt: skip
    if not (output / "features" / "text_feat.npy").is_file():
        run_command("extract-features", "--config", str(ROOT / "configs/extract/ml100k.yaml"), "--data", str(output))


def run_config(model: str, data: Path, run_dir: Path, seed: int, max_epochs: int | None) -> Path:
    """The model's shipped config (included files resolved) for this dataset, seed and run folder."""
    path, named = CONFIGS[model]
    config = retarget(resolved(ROOT / path), named, str(data))
    config["seed_everything"] = config["data"]["seed"] = seed
    trainer = config["trainer"]
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir)}}
    for callback in trainer.get("callbacks") or []:
        if "dirpath" in callback.get("init_args", {}):
            callback["init_args"]["dirpath"] = str(run_dir / "checkpoints")
    if max_epochs is not None:
        trainer["max_epochs"] = max_epochs
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir / "config.yaml"


def table(results: dict[str, dict[str, dict]]) -> str:
    columns = [("loo", f"{m}@{k}", f"{m} @{k}") for m in ("recall", "ndcg") for k in CUTOFFS]
    columns += [("cold", "recall@20", "cold split R@20"), ("cold", "cold_only/recall@20", "cold items only R@20")]
    lines = [["model", *(title for *_, title in columns)]]
    for model, splits in results.items():
        cells = [splits.get(split, {}).get("summary", {}).get(name) for split, name, _ in columns]
        lines.append([model, *(f"{c['mean']:.4f} ± {c['std']:.4f}" if c else "-" for c in cells)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the ml-100k-posters folder")
    parser.add_argument("--models", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--splits", nargs="+", choices=list(SPLIT_OPTIONS), default=list(SPLIT_OPTIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_epochs", type=int, help="cap every run's epochs (a quick check, not a result)")
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="where the prepared datasets go")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/sequential.json")
    args = parser.parse_args()
    source = args.source.resolve()
    cold_items = set(pd.read_csv(source / "cold_items.csv", dtype=str)["item_id"].str.strip())
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="sequential-runs-") as runs:
        for split in args.splits:
            data = (args.data / f"ml100k-{split}").resolve()
            prepare(source, split, data)
            for model in args.models:
                per_seed = {}
                for seed in [0] if model == "popularity" else args.seeds:  # popularity: nothing random
                    run_dir = Path(runs) / f"{split}-{model}-{seed}"
                    cold = cold_items if split == "cold" else None
                    config = str(run_config(model, data, run_dir, seed, args.max_epochs))
                    per_seed[seed] = train_and_score(model, config, data, seed, cold, CUTOFFS)
                    shutil.rmtree(run_dir, ignore_errors=True)
                    print(f"{split} {model} seed {seed}: {json.dumps(per_seed[seed])}", flush=True)
                entry = {"runs": per_seed, "summary": summarise(list(per_seed.values()))}
                results = record(args.output, source, args.seeds, {}, model, split, entry)
    print(f"\nMovieLens-100K posters, test split, mean ± std over seeds {args.seeds} (from predict's output)")
    print(table(results))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
