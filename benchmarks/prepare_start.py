"""How fast and small `prepare` starts, against the floor of the libraries it needs.

    python benchmarks/prepare_start.py [--repeats 5]

Four commands, each in a fresh process under GNU time, interleaved ``--repeats`` times (median seconds, peak
RSS): the floor, ``import pyarrow, PIL.Image, numpy, pandas``; ``import mmrec_lightning.data.prepare``;
``prepare --help``; and a whole ``prepare`` of a 30-item table (interactions CSV, items CSV with text). Ratios
are against the floor measured in the same run. `prepare` needs neither torch nor Lightning, which alone
take over ten seconds and a gigabyte to import on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from peak_memory import peak_rss
from results_file import publish


def table_files(folder: Path) -> tuple[Path, Path]:
    """30 items, 10 users, 150 interactions."""
    interactions = folder / "clicks.csv"
    interactions.write_text(
        "user,item,time\n" + "".join(f"u{u},i{(u * 7 + k) % 30},{1000 + k}\n" for u in range(10) for k in range(15))
    )
    items = folder / "items.csv"
    items.write_text("item,title\n" + "".join(f"i{i},Item number {i}\n" for i in range(30)))
    return interactions, items


def commands(folder: Path) -> dict[str, list[str]]:
    interactions, items = table_files(folder)
    prepare = [sys.executable, "-m", "mmrec_lightning", "prepare"]
    table = ["--source", "table", "--interactions", str(interactions), "--items", str(items)]
    return {
        "floor: import pyarrow, PIL, numpy, pandas": [sys.executable, "-c", "import pyarrow, PIL.Image, numpy, pandas"],
        "import mmrec_lightning.data.prepare": [sys.executable, "-c", "import mmrec_lightning.data.prepare"],
        "prepare --help": [*prepare, "--help"],
        "prepare, 30 items": [
            *prepare,
            *table,
            *("--user_column", "user", "--item_column", "item", "--timestamp_column", "time"),
            *("--text_columns", "title", "--overwrite", "true", "--output", str(folder / "prepared")),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "prepare_start.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        arms = commands(Path(tmp))
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
        for _ in range(args.repeats):  # interleaved: a busy moment weighs on every arm alike
            for name, command in arms.items():
                samples[name].append(peak_rss(command))
    floor = next(iter(arms))
    results = {
        name: {
            "seconds": statistics.median(seconds for _, seconds in runs),
            "peak_rss_mb": max(mb for mb, _ in runs),
        }
        for name, runs in samples.items()
    }
    for result in results.values():
        result["time_ratio"] = result["seconds"] / results[floor]["seconds"]
        result["rss_ratio"] = result["peak_rss_mb"] / results[floor]["peak_rss_mb"]
    lines = [f"median of {args.repeats} runs each, 1-min load average {os.getloadavg()[0]:.2f}"]
    lines.append(f"{'':45}{'seconds':>9}{'× floor':>9}{'peak RSS MB':>13}{'× floor':>9}")
    for name, result in results.items():
        lines.append(
            f"{name:45}{result['seconds']:9.2f}{result['time_ratio']:9.2f}"
            f"{result['peak_rss_mb']:13.0f}{result['rss_ratio']:9.2f}"
        )
    publish("\n".join(lines), {"repeats": args.repeats, "results": results}, args.output)


if __name__ == "__main__":
    main()
