"""Peak memory of a short training run against the size of the data.

    python benchmarks/peak_memory.py [--users 1000] [--items 500] [--scale 10] [--steps 50]

Two synthetic datasets (``SyntheticSpec``, 64 px images): the demo's size (1,000 users, 500 items) and one
``--scale`` times larger in users, items and so interactions and images. On each, ``python -m
mmrec_lightning fit`` with the demo config's model (EfficientNet-Lite0 and MiniLM from the ``weights``
extra, frozen, their outputs cached per item; attention fusion with the ID embedding; category head) runs
``--steps`` training steps and then one full validation (the whole catalogue encoded, every validation user
ranked against it), in a subprocess of its own.

Peak memory is "Maximum resident set size" as ``/usr/bin/time`` reports it for the run. Not this process's
``getrusage(RUSAGE_CHILDREN)`` or ``os.wait4``: on Linux a child started from a large process starts its
high-water mark at that process's (and this one holds torch and, briefly, the larger dataset), whereas GNU
time is small. It is the peak of one process, not the sum of a process tree, so the run uses no loader
workers (``num_workers: 0``): decoding runs in the measured process. Also printed:
the model state whose size is proportional to the catalogue and the users — the ID embedding tables with
their two AdamW moments, and the frozen encoders' per-item output caches — and how much of the growth they
explain. Prints a table with the ratio and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from results_file import publish

from mmrec_lightning.data.schema import PreparedDataset, write_prepared
from mmrec_lightning.data.sources.synthetic import SyntheticSpec, generate

ROOT = Path(__file__).parents[1]
IMAGE_FEATURES, TEXT_FEATURES = 1280, 384  # EfficientNet-Lite0's and MiniLM's output widths
GNU_TIME = "/usr/bin/time"


def write_dataset(path: Path, users: int, items: int) -> dict[str, int]:
    """A synthetic dataset at ``path``; its sizes."""
    data = generate(SyntheticSpec(users=users, items=items, image_size=64))
    write_prepared(path, interactions=data.interactions, items=data.items, users=data.users, metadata=data.metadata)
    dataset = PreparedDataset(path)
    return {
        "users": dataset.num_users,
        "items": dataset.num_items,
        "interactions": sum(dataset.metadata["counts"]["interactions"].values()),
        "items_bytes": (path / "items.arrow").stat().st_size,
    }


def training_config(data: Path, runs: Path, steps: int) -> dict:
    """The demo config's model and data settings on ``data``, ``steps`` training steps then one validation,
    no loader workers, nothing written but the CSV log."""
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    data_config = {key: value for key, value in demo["data"].items() if key != "synthetic"}
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": steps,
            "val_check_interval": steps,
            "check_val_every_n_epoch": None,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(runs),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(runs)}},
        },
        "model": demo["model"],
        "data": {**data_config, "path": str(data), "num_workers": 0},
    }


def peak_rss(command: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of ``command``, run under GNU time (Debian's ``time`` package)."""
    if not Path(GNU_TIME).is_file():
        raise RuntimeError(f"{GNU_TIME} is missing: install GNU time (apt-get install time)")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "maxrss"
        start = time.perf_counter()
        done = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", str(report), *command],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"},
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{command} failed ({done.returncode}):\n{done.stderr.decode()[-4000:]}")
        return int(report.read_text().split()[-1]) / 1024, seconds  # %M is in KiB


def proportional_state_mb(users: int, items: int) -> float:
    """Model state proportional to users and items (MB): the 64-d ID embeddings of users and items with
    AdamW's two moments (three copies), and the frozen image and text encoders' per-item caches."""
    embed_dim = 64
    embeddings = 3 * (users + items) * embed_dim * 4
    caches = items * (IMAGE_FEATURES + TEXT_FEATURES) * 4
    return (embeddings + caches) / 2**20


def measure(users: int, items: int, scale: int, steps: int) -> list[dict]:
    """One run per dataset size: sizes, peak RSS, seconds and the proportional state."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, scale):
            folder = Path(tmp) / f"x{factor}"
            sizes = write_dataset(folder / "data", users * factor, items * factor)
            config = folder / "config.yaml"
            config.write_text(yaml.safe_dump(training_config(folder / "data", folder / "runs", steps)))
            peak_mb, seconds = peak_rss([sys.executable, "-m", "mmrec_lightning", "fit", "--config", str(config)])
            state = proportional_state_mb(sizes["users"], sizes["items"])
            rows.append({"scale": factor, **sizes, "peak_rss_mb": peak_mb, "seconds": seconds, "state_mb": state})
    return rows


def table(result: dict) -> str:
    small, large = result["runs"]
    lines = [
        f"peak RSS of `fit` ({result['steps']} steps + one validation, no loader workers); "
        f"1-min load average {result['load_average']:.2f}",
        f"{'':28}{'users':>9}{'items':>9}{'interactions':>14}{'peak RSS MB':>13}{'∝ state MB':>12}{'s':>7}",
    ]
    for run in (small, large):
        label = f"x{run['scale']}"
        lines.append(
            f"{label:28}{run['users']:>9,}{run['items']:>9,}{run['interactions']:>14,}"
            f"{run['peak_rss_mb']:>13.0f}{run['state_mb']:>12.1f}{run['seconds']:>7.0f}"
        )
    lines.append(f"{'ratio (large / small)':28}{'':>32}{result['ratio']:>13.2f}")
    lines.append(f"{'growth explained by ∝ state':28}{'':>32}{result['explained']:>13.0%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--scale", type=int, default=10, help="how many times larger the second dataset is")
    parser.add_argument("--steps", type=int, default=50, help="training steps before the validation")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "peak_memory.json"))
    args = parser.parse_args(argv)

    small, large = measure(args.users, args.items, args.scale, args.steps)
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    result = {
        "steps": args.steps,
        "runs": [small, large],
        "ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
        "explained": (large["state_mb"] - small["state_mb"]) / growth if growth > 0 else 1.0,
        "load_average": os.getloadavg()[0],
    }
    publish(table(result), result, args.output)
    return result


if __name__ == "__main__":
    main()
