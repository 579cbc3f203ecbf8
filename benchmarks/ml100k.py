"""MovieLens-100K with posters and plot overviews: every model on the fixed warm and cold-item splits, next to
MMRec's numbers on the same splits.

    python benchmarks/ml100k.py --source ../shared/data/ml-100k-posters [--models multimodal bpr ...]
        [--splits warm cold] [--seeds 0 1 2]

Prepares ``data/ml100k-{warm,cold}`` from the source folder's ``split_*.csv`` and ``items.csv`` (kept splits),
extracts the image and text features once (``configs/extract/ml100k.yaml``), then for each split, model and
seed trains ``configs/ml100k/<model>.yaml`` (the checkpoint chosen on validation Recall@20) and scores its
test users with ``predict``. The numbers reported are computed from that ``predict`` output: Recall and
NDCG @20 over all test items and, on the cold split, over each user's test items among ``cold_items.csv``
("cold items only", as the source README defines it); each run also checks that they equal what ``test``
reported. Prints mean ± std over the seeds beside the README's reference table and writes
``benchmarks/results/ml100k.json`` (after each model and split, so a run that stops keeps what it finished);
the results of an earlier run on the same source and seeds that this run did not repeat are kept there and in
the table, so one model can be re-run alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from mmrec_lightning.callbacks import TestMetricsWriter, TopKWriter
from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.data.schema import PreparedDataset

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("popularity", "ease", "bpr", "lightgcn", "vbpr", "freedom", "multimodal")
NOTHING_TO_TRAIN = ("popularity", "ease")  # tested directly; deterministic, so one seed
K = 20
CONFIG_DATA = "data/ml100k-warm"  # the dataset the shipped configs name, replaced by each split's folder


def prepare(source: Path, split: str, output: Path) -> None:
    """The prepared dataset of one split and its features (each made once)."""
    if not (output / "metadata.json").is_file():
        run_command(
            "prepare", "--source", "table", "--output", str(output),
            "--interactions", str(source / f"split_{split}.csv"), "--items", str(source / "items.csv"),
            "--timestamp_column", "timestamp", "--rating_column", "rating", "--split_column", "split",
            "--split", "source", "--text_columns", "[title, description]", "--category_column", "category",
            "--image_column", "image",
        )  # fmt: skip
    if not (output / "features" / "text_feat.npy").is_file():
        run_command("extract-features", "--config", str(ROOT / "configs/extract/ml100k.yaml"), "--data", str(output))


def run_command(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mmrec_lightning", *args], check=True, cwd=ROOT)


def retarget(value: Any, old: str, new: str) -> Any:
    """``value`` with every path under ``old`` (the dataset a config names) moved to ``new``."""
    if isinstance(value, dict):
        return {key: retarget(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [retarget(item, old, new) for item in value]
    return new + value[len(old) :] if isinstance(value, str) and value.startswith(old) else value


def run_config(model: str, data: Path, run_dir: Path, seed: int) -> Path:
    """``configs/ml100k/<model>.yaml`` for this dataset, seed and run folder, written to ``run_dir``."""
    config = yaml.safe_load((ROOT / "configs/ml100k" / f"{model}.yaml").read_text())
    config = retarget(config, CONFIG_DATA, str(data))
    config["seed_everything"] = seed
    config["data"]["seed"] = seed
    trainer = config["trainer"]
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir)}}
    for callback in trainer.get("callbacks", []):
        if "dirpath" in callback.get("init_args", {}):
            callback["init_args"]["dirpath"] = str(run_dir / "checkpoints")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metrics_at_k(
    ranked: dict[str, list[str]], relevant: dict[str, set[str]], cutoffs: Sequence[int] = (K,)
) -> dict[str, float]:
    """MMRec's Recall@K and NDCG@K (binary gains, ideal DCG over min(|relevant|, K)) averaged over the users
    with relevant items, for each K of ``cutoffs``."""
    discounts = 1.0 / np.log2(np.arange(2, max(cutoffs) + 2))
    result: dict[str, float] = {}
    for k in cutoffs:
        recall, ndcg = [], []
        for user, items in relevant.items():
            hits = np.array([item in items for item in ranked[user][:k]], dtype=float)
            recall.append(hits.sum() / len(items))
            ndcg.append((hits * discounts[: len(hits)]).sum() / discounts[: min(len(items), k)].sum())
        result |= {f"recall@{k}": float(np.mean(recall)), f"ndcg@{k}": float(np.mean(ndcg))}
    return result | {"users": len(relevant)}


def predicted_metrics(
    predictions: Path, dataset: PreparedDataset, cold_items: set[str] | None, cutoffs: Sequence[int] = (K,)
) -> dict[str, float]:
    """Test metrics from ``predict``'s top-K table: all test items, and the cold items only."""
    table = pq.read_table(predictions, columns=["user", "rank", "item"]).to_pandas().sort_values(["user", "rank"])
    ranked = {user: list(group["item"]) for user, group in table.groupby("user", sort=False)}
    users = dataset.users.column("raw_id").to_pylist()
    items = np.asarray(dataset.items.column("raw_id").to_pylist(), dtype=object)
    test = dataset.split("test")
    relevant = {users[u]: set(items[test.row(u)]) for u in np.flatnonzero(test.lengths() > 0)}
    result = metrics_at_k(ranked, relevant, cutoffs)
    if cold_items is not None:
        cold = {user: targets & cold_items for user, targets in relevant.items() if targets & cold_items}
        result |= {f"cold_only/{name}": value for name, value in metrics_at_k(ranked, cold, cutoffs).items()}
    return result


def train_and_score(
    model: str, config: str, data: Path, seed: int, cold_items: set[str] | None, cutoffs: Sequence[int] = (K,)
) -> dict[str, float]:
    """Train the run ``config`` (test ``popularity`` and ``ease``), score its test users with ``predict`` and
    return the metrics computed from that output, after checking that they equal what ``test`` reported."""
    trains = model not in NOTHING_TO_TRAIN
    command = ["fit", "--config", config, "--test_after_fit=true"] if trains else ["test", "--config", config]
    cli = RecommenderCLI(args=command)
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, TestMetricsWriter))
    reported = json.loads(writer.path.read_text())[type(cli.model).__name__]
    checkpoint = ["--ckpt_path", cli.trainer.checkpoint_callback.best_model_path] if trains else []
    epochs = cli.trainer.current_epoch if trains else 0
    predicted = RecommenderCLI(args=["predict", "--config", config, *checkpoint])
    writer = next(cb for cb in predicted.trainer.callbacks if isinstance(cb, TopKWriter))
    result = predicted_metrics(writer.paths[0], PreparedDataset(data), cold_items, cutoffs)
    for name in (f"{metric}@{k}" for metric in ("recall", "ndcg") for k in cutoffs):
        if abs(reported[name] - result[name]) > 1e-6:
            raise AssertionError(
                f"{model}, seed {seed}: test reported {name} {reported[name]}, predict gives {result[name]}"
            )
    return result | {"epochs": epochs}


def reference_table(readme: Path) -> dict[str, dict[str, float]]:
    """The source README's reference numbers: model -> {column: value}."""
    rows, header = {}, None
    for line in readme.read_text().splitlines():
        cells = [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
        if line.startswith("| model"):
            header = cells[1:]
        elif header and line.startswith("|") and not set(cells[0]) <= {"-", ":"}:
            if len(cells) != len(header) + 1:
                break
            rows[cells[0]] = {column: float(value) for column, value in zip(header, cells[1:], strict=True)}
        elif header and rows:
            break
    return rows


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    names = [name for name in runs[0] if name != "users"]
    return {
        name: {
            "mean": statistics.fmean(r[name] for r in runs),
            "std": statistics.stdev([r[name] for r in runs]) if len(runs) > 1 else 0.0,
        }
        for name in names
    }


def table(results: dict[str, dict[str, dict]], reference: dict[str, dict[str, float]]) -> str:
    columns = [
        ("warm", f"recall@{K}", "warm R@20"),
        ("warm", f"ndcg@{K}", "warm N@20"),
        ("cold", f"recall@{K}", "cold split R@20 (all test items)"),
        ("cold", f"ndcg@{K}", "cold split N@20"),
        ("cold", f"cold_only/recall@{K}", "cold items only R@20"),
    ]
    lines = [["model", *(title for _, _, title in columns)]]
    for model, splits in results.items():
        row = [model]
        for split, name, _ in columns:
            value = splits.get(split, {}).get("summary", {}).get(name)
            row.append(f"{value['mean']:.4f} ± {value['std']:.4f}" if value else "-")
        lines.append(row)
    for model, values in reference.items():
        lines.append([f"MMRec {model}", *(f"{values[title]:.4f}" if title in values else "-" for *_, title in columns)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def record(output: Path, source: Path, seeds: list[int], mmrec: dict, model: str, split: str, entry: dict) -> dict:
    """Adds one model's results on one split to ``output`` as soon as they exist (a long run that stops
    keeps what it finished), next to those of earlier runs on the same source and seeds, and MMRec's
    reference numbers; returns all the results."""
    document = json.loads(output.read_text()) if output.is_file() else {}
    if document.get("source") != str(source) or document.get("seeds") != seeds:
        document = {"source": str(source), "seeds": seeds, "results": {}}
    document["results"].setdefault(model, {})[split] = entry
    document["mmrec"] = mmrec
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(output)
    return document["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the ml-100k-posters folder")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--splits", nargs="+", choices=("warm", "cold"), default=["warm", "cold"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="where the prepared datasets go")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/ml100k.json")
    args = parser.parse_args()
    source = args.source.resolve()
    cold_items = set(pd.read_csv(source / "cold_items.csv", dtype=str)["item_id"].str.strip())
    reference = reference_table(source / "README.md")
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="ml100k-runs-") as runs:
        for split in args.splits:
            data = (args.data / f"ml100k-{split}").resolve()
            prepare(source, split, data)
            for model in args.models:
                seeds = [0] if model in NOTHING_TO_TRAIN else args.seeds  # nothing random to average
                per_seed = {}
                for seed in seeds:
                    run_dir = Path(runs) / f"{split}-{model}-{seed}"
                    config = str(run_config(model, data, run_dir, seed))
                    per_seed[seed] = train_and_score(model, config, data, seed, cold_items if split == "cold" else None)
                    shutil.rmtree(run_dir, ignore_errors=True)
                    print(f"{split} {model} seed {seed}: {json.dumps(per_seed[seed])}", flush=True)
                entry = {"runs": per_seed, "summary": summarise(list(per_seed.values()))}
                results = record(args.output, source, args.seeds, reference, model, split, entry)
    print(f"\nMovieLens-100K posters, test split, mean ± std over seeds {args.seeds} (from predict's output)")
    print(table(results, reference))
    print(f"wrote {args.output}")  # by record, after each model and split


if __name__ == "__main__":
    main()
