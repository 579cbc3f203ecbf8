"""Seconds per training epoch on Amazon Baby, measured side by side with MMRec's own code on the machine at hand.

    python benchmarks/train_speed.py --mmrec ~/src/MMRec [--data data/baby] [--epochs 6] [--rounds 2]
                                     [--threads N] [--models bpr vbpr ...]

Ours: each model trained through the CLI's components (``RecommenderCLI``, so its callbacks run as in a real
``fit``) with MMRec's defaults: 64-d embeddings, Adam with learning rate 1e-3 (``fused=True``: the same update
in one kernel), batches of 2,048 interactions with one uniform negative (LightGCN: 3 layers; VBPR and FREEDOM:
their model defaults, which are MMRec's), float32 as in MMRec. Timed from ``on_train_epoch_start`` to
``on_train_epoch_end``: data loading and negative sampling, forward, backward, optimizer and callbacks;
validation is off.

Peer (``--mmrec DIR``, a checkout of https://github.com/enoche/MMRec; see ``peers.py``): MMRec's own
``Trainer.fit`` on the same interactions (written once in its format), the same features, batch size, epochs
and number of threads, its validation off, each epoch timed as MMRec times it for its log
(``pre_epoch_processing``, ``_train_epoch`` with its data loading and negative sampling, the scheduler step).

Runs are interleaved, one job at a time: for each model, ``--rounds`` rounds of one run of ours and one of
MMRec's, in alternating order, each run ``--epochs`` epochs of which the first warms up and is dropped. Reported:
the median of the remaining epochs of all rounds, with their min and max; the speed-up is MMRec's median over
ours. Without ``--mmrec`` the seconds are printed with no speed-up and no verdict: there is nothing measured on
this machine to compare them with.

VBPR and FREEDOM read random 4,096-d image and 384-d text features (Baby as prepared here has no content); the
peer reads the same matrices. Where the CPU multiplies bfloat16 natively (AVX512-BF16 / AMX), VBPR and FREEDOM
are also timed with their features held in bfloat16 (``ItemFeatures(dtype=bfloat16)``; not MMRec's arithmetic,
so not counted against the target); elsewhere those rows are skipped, as ``ItemFeatures`` would hold the
features in float32 there. Test Recall@20 beside BPR-MF and LightGCN is the mean over the seeds recorded by
``benchmarks/seeds.py`` (``benchmarks/results/seeds-<model>*.json``), next to MMRec's published value.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from peers import MMRecPeer, describe, machine, write_mmrec_data
from results_file import publish

from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.features.encoder import cpu_bfloat16_is_fast
from mmrec_lightning.features.files import save_features

PREPARE = (
    "python -m mmrec_lightning prepare --source lattice --path ../shared/data/amazon-baby-5core --output data/baby"
)
MODELS = {  # name -> (our class, our extra init args, MMRec's model, its settings, target speed-up over MMRec)
    "bpr": ("MatrixFactorization", {}, "BPR", {"reg_weight": 1e-4}, 1.5),
    "lightgcn": ("LightGCN", {"num_layers": 3}, "LightGCN", {"n_layers": 3, "reg_weight": 1e-4}, 3.0),
    "vbpr": ("VBPR", {}, "VBPR", {"reg_weight": 1e-4}, 3.0),
    "freedom": ("FREEDOM", {}, "FREEDOM", {"reg_weight": 1e-4, "dropout": 0.8}, 3.0),
}
CONTENT_MODELS = ("vbpr", "freedom")
PUBLISHED_RECALL_AT_20 = {"bpr": 0.0575, "lightgcn": 0.0754}  # MMRec's Amazon Baby table
BATCH_SIZE, LEARNING_RATE, EMBED_DIM = 2048, 1e-3, 64


class EpochTimer(L.Callback):
    """Wall-clock and CPU seconds (this process, all threads) of each training epoch, hooks included,
    validation excluded. On a shared machine the CPU time shows how much of the wall time was ours."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start[0])
        self.cpu_seconds.append(time.process_time() - self._start[1])


def random_features(folder: Path, num_items: int, image_dim: int, text_dim: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    return {
        modality: save_features(folder / f"{modality}_feat.npy", rng.standard_normal((num_items, dim), np.float32))
        for modality, dim in (("image", image_dim), ("text", text_dim))
    }


def train(
    name: str,
    data: str,
    epochs: int,
    features: dict[str, Path],
    workdir: Path,
    features_dtype: str = "float32",
    threads: int | None = None,
) -> dict[str, list[float]]:
    """The seconds of ``epochs`` training epochs of our model ``name`` (VBPR, FREEDOM: features in
    ``features_dtype``) with ``threads`` torch threads (the CLI's choice when None): ``{"epochs_s": [...],
    "epochs_cpu_s": [...]}``."""
    class_name, extra = MODELS[name][:2]
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": LEARNING_RATE, "fused": True}}
    init_args = {"embed_dim": EMBED_DIM, "optimizer": adam, "top_k": [20], **extra}  # no evaluation: any K
    if name in CONTENT_MODELS:
        for modality, path in features.items():
            init_args[f"{modality}_features"] = {
                "class_path": "mmrec_lightning.features.ItemFeatures",
                "init_args": {"path": str(path), "dtype": features_dtype},
            }
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": epochs,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(workdir),
        },
        "model": {"class_path": f"mmrec_lightning.models.{class_name}", "init_args": init_args},
        "data": {"path": data, "batch_size": BATCH_SIZE, "num_negatives": 1, "history_length": 0},
    }
    cli = RecommenderCLI(args=config, run=False)
    if threads is not None:
        torch.set_num_threads(threads)  # the CLI chose its own; both sides run with the same number
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {"epochs_s": timer.seconds, "epochs_cpu_s": timer.cpu_seconds}


def train_peer(peer: MMRecPeer, name: str, epochs: int) -> dict[str, list[float]]:
    """The seconds of ``epochs`` training epochs of MMRec's own ``name`` model, as MMRec times them."""
    settings = {"epochs": epochs, "train_batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE, "seed": 0,
                "embedding_size": EMBED_DIM, **MODELS[name][3]}  # fmt: skip
    return peer.train(MODELS[name][2], epochs, settings)


def spread(runs: list[dict[str, list[float]]]) -> dict:
    """Median, min and max of the epochs after each run's first (a warm-up), over all runs."""

    def after_warmup(key: str) -> list[float]:
        return [s for run in runs for s in (run[key][1:] if len(run[key]) > 1 else run[key])]

    timed, cpu = after_warmup("epochs_s"), after_warmup("epochs_cpu_s")
    return {
        "runs": runs,
        "median_s": statistics.median(timed),
        "min_s": min(timed),
        "max_s": max(timed),
        "cpu_median_s": statistics.median(cpu),
        "epochs_timed": len(timed),
    }


def recall_over_seeds(name: str, results: Path) -> tuple[float, int] | None:
    """Mean test Recall@20 of model ``name`` over the seeds in ``results/seeds-<name>*.json``, and their count."""
    class_name = MODELS[name][0]
    values = [
        run[class_name]["recall@20"]
        for path in sorted(results.glob(f"seeds-{name}*.json"))
        for run in json.loads(path.read_text())["runs"]
    ]
    return (statistics.fmean(values), len(values)) if values else None


def summarise(name: str, ours: dict, mmrec: dict | None, features_dtype: str, results: Path) -> dict:
    """Our epochs against MMRec's (when measured), the target, and the verdict (float32 rows only)."""
    speedup = None if mmrec is None else mmrec["median_s"] / ours["median_s"]
    counted = speedup is not None and features_dtype == "float32"
    recall = recall_over_seeds(name, results)
    return {
        "model": MODELS[name][0],
        "features": features_dtype if name in CONTENT_MODELS else None,
        "ours": ours,
        "mmrec": mmrec,
        "speedup": speedup,
        "target": MODELS[name][4] if counted else None,
        "passed": speedup >= MODELS[name][4] if counted else None,
        "recall_at_20": None if recall is None else {"mean": recall[0], "seeds": recall[1]},
        "mmrec_recall_at_20": PUBLISHED_RECALL_AT_20.get(name),
    }


def _seconds(side: dict | None) -> str:
    return "-" if side is None else f"{side['median_s']:.2f} ({side['min_s']:.2f}-{side['max_s']:.2f})"


def table(results: dict[str, dict]) -> str:
    header = ["model", "features", "ours s/epoch (min-max)", "MMRec s/epoch (min-max)", "speed-up", "target", ""]
    rows = [header + ["R@20 ours (seeds)", "MMRec"]]
    for r in results.values():
        recall = r["recall_at_20"]
        rows.append(
            [
                r["model"],
                r["features"] or "-",
                _seconds(r["ours"]),
                _seconds(r["mmrec"]),
                "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
                "-" if r["target"] is None else f">= {r['target']:.1f}x",
                {True: "pass", False: "FAIL", None: ""}[r["passed"]],
                f"{recall['mean']:.4f} ({recall['seeds']})" if recall else "-",
                f"{r['mmrec_recall_at_20']:.4f}" if recall and r["mmrec_recall_at_20"] else "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)])
             for row in rows]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/baby", help="the prepared Amazon Baby dataset")
    parser.add_argument("--mmrec", default=None, help="a checkout of MMRec (holding src/main.py) to run beside ours")
    parser.add_argument("--mmrec-python", default=sys.executable, help="the Python that runs MMRec's code")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run, the first a warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side per model, interleaved")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--image-dim", type=int, default=4096)
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: torch's)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "train_speed.json"))
    args = parser.parse_args(argv)
    if not (Path(args.data) / "metadata.json").is_file():
        sys.exit(f"{args.data} holds no prepared dataset; prepare Amazon Baby first:\n  {PREPARE}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    bfloat16 = cpu_bfloat16_is_fast()

    load_before = os.getloadavg()[0]
    results, peer = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        features = random_features(Path(tmp), PreparedDataset(args.data).num_items, args.image_dim, args.text_dim)
        if args.mmrec:
            data_path = write_mmrec_data(args.data, Path(tmp) / "mmrec", features)
            peer = MMRecPeer(args.mmrec, data_path, threads, args.mmrec_python)
        for name in args.models:
            ours, mmrec = [], []
            sides = ["ours", "mmrec"] if peer is not None else ["ours"]
            for round_ in range(args.rounds):  # one job at a time, the order alternating
                for side in sides if round_ % 2 == 0 else sides[::-1]:
                    if side == "ours":
                        ours.append(train(name, args.data, args.epochs, features, Path(tmp), threads=threads))
                    else:
                        mmrec.append(train_peer(peer, name, args.epochs))
            mmrec_spread = spread(mmrec) if mmrec else None
            results[name] = summarise(name, spread(ours), mmrec_spread, "float32", Path(args.output).parent)
            if name in CONTENT_MODELS and bfloat16:
                runs = [
                    train(name, args.data, args.epochs, features, Path(tmp), "bfloat16", threads)
                    for _ in range(args.rounds)
                ]
                results[f"{name}-bfloat16"] = summarise(
                    name, spread(runs), mmrec_spread, "bfloat16", Path(args.output).parent
                )
    load_after = os.getloadavg()[0]

    info = machine()
    notes = []
    if peer is None:
        notes.append("no MMRec checkout given (--mmrec DIR): seconds only, no speed-up and no verdict")
    if not bfloat16 and any(name in CONTENT_MODELS for name in args.models):
        notes.append("bfloat16 rows skipped: this CPU has no bfloat16 instructions (ItemFeatures holds such features "
                     "in float32 here)")  # fmt: skip
    text = (
        f"\nseconds per training epoch on {args.data}: median (min-max) of epochs 2-{args.epochs} of {args.rounds} "
        f"interleaved run(s) per side, {threads} threads each\n{describe(info)}\n{table(results)}\n"
        + "".join(f"{note}\n" for note in notes)
        + f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} cores)"
    )
    summary = {
        "data": args.data,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "threads": threads,
        "machine": info,
        "peer": None if peer is None else peer.describe(),
        "notes": notes,
        "load_average_1min": {"before": load_before, "after": load_after},
        "models": results,
    }
    publish(text, summary, args.output)
    return summary


if __name__ == "__main__":
    main()
