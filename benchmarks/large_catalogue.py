"""Full ranking over a large catalogue: time, and peak memory bounded by the chunk sizes.

    python benchmarks/large_catalogue.py [--items 1000000] [--users 100000] [--ranked-users 2048]

Random 32-d vectors for ``--items`` items and ``--users`` users, and ``--exclude`` random training items
per user that must never be ranked. Users are ranked a chunk at a time, as the evaluation loop hands them
over, with the package's ``rank_items``, which scores the catalogue an item chunk at a time and merges the
per-chunk top-k; the top 50 of every user is checked to hold none of the user's excluded items.

Each configuration (user chunk x item chunk, whole or quarter catalogue) ranks the first ``--ranked-users``
users against the whole catalogue; on two shared cores ranking every one of 100,000 users against 10^6
items takes most of an hour, so the time for all users is projected from those (chunks of users are
independent and equal work). Peak memory is the growth of the process's RSS high-water mark (``VmHWM``,
reset through ``/proc/self/clear_refs`` before each configuration) over its RSS once the vectors exist:
the working memory of the ranking. It should follow the chunk sizes (one ``users x items`` score block of
float32) and not the catalogue. Prints a table with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from results_file import publish

from mmrec_lightning.evaluation import rank_items

TOP_K = 50
MB = 2**20


def memory_kb(field: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of ``/proc/self/status``, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """Set the RSS high-water mark to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def rank_all(
    users: torch.Tensor, items: torch.Tensor, excluded: torch.Tensor, user_chunk: int, item_chunk: int
) -> None:
    """Top-``TOP_K`` for every row of ``users``, ``user_chunk`` users at a time; ``excluded[u]`` are user
    u's training items, which must not be ranked."""
    per_user = excluded.shape[1]
    for lo in range(0, len(users), user_chunk):
        chunk = users[lo : lo + user_chunk]
        rows = torch.arange(len(chunk)).repeat_interleave(per_user)
        banned = excluded[lo : lo + len(chunk)].flatten()
        _, top = rank_items(chunk, items, rows, banned, TOP_K, item_chunk)
        if (top.unsqueeze(2) == excluded[lo : lo + len(chunk)].unsqueeze(1)).any():
            raise AssertionError("an excluded training item was ranked")


def measure(users: torch.Tensor, items: torch.Tensor, excluded: torch.Tensor, user_chunk: int, item_chunk: int):
    """Seconds and working memory (MB above the RSS before) of ranking ``users`` against ``items``."""
    reset_peak()
    before = memory_kb("VmRSS")
    start = time.perf_counter()
    rank_all(users, items, excluded, user_chunk, item_chunk)
    seconds = time.perf_counter() - start
    return seconds, (memory_kb("VmHWM") - before) / 1024


def configurations(items: int, user_chunk: int, item_chunk: int) -> list[tuple[int, int, int]]:
    """(user chunk, item chunk, catalogue size): the chunks at half and full size on the whole catalogue,
    and the full chunks on a quarter of it."""
    return [
        (user_chunk // 2, item_chunk // 2, items),
        (user_chunk, item_chunk, items),
        (user_chunk, item_chunk, items // 4),
    ]


def table(result: dict) -> str:
    lines = [
        f"full ranking, {result['users']:,} users x {result['items']:,} items, {result['dim']}-d, top {TOP_K}, "
        f"{result['exclude']} excluded items per user; {result['ranked_users']:,} users ranked per configuration; "
        f"torch threads {result['threads']}; 1-min load average {result['load_average']:.2f}",
        f"vectors: {result['vectors_mb']:.0f} MB",
        f"{'user chunk':>11}{'item chunk':>12}{'catalogue':>12}{'s':>8}{'s, all users':>14}"
        f"{'peak MB':>9}{'score block MB':>16}",
    ]
    for run in result["runs"]:
        lines.append(
            f"{run['user_chunk']:>11,}{run['item_chunk']:>12,}{run['catalogue']:>12,}{run['seconds']:>8.1f}"
            f"{run['projected_seconds']:>14.0f}{run['peak_growth_mb']:>9.0f}{run['score_block_mb']:>16.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--ranked-users", type=int, default=2048, help="users ranked per configuration")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--exclude", type=int, default=5, help="training items per user kept out of the ranking")
    parser.add_argument("--user-chunk", type=int, default=1024, help="users per batch (the larger setting)")
    parser.add_argument("--item-chunk", type=int, default=1 << 16, help="items per chunk (the larger setting)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "large_catalogue.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    before = memory_kb("VmRSS")
    users = torch.randn(args.users, args.dim)
    items = torch.randn(args.items, args.dim)
    excluded = torch.randint(args.items // 4, (args.users, args.exclude))  # inside every catalogue measured
    vectors_mb = (memory_kb("VmRSS") - before) / 1024
    ranked = users[: args.ranked_users]
    rank_all(ranked[:8], items[:1024], excluded, 8, 256)  # torch's one-time allocations, outside the measures
    runs = []
    for user_chunk, item_chunk, catalogue in configurations(args.items, args.user_chunk, args.item_chunk):
        seconds, peak = measure(ranked, items[:catalogue], excluded, user_chunk, item_chunk)
        runs.append(
            {
                "user_chunk": user_chunk,
                "item_chunk": item_chunk,
                "catalogue": catalogue,
                "seconds": seconds,
                "projected_seconds": seconds * args.users / len(ranked),
                "peak_growth_mb": peak,
                "score_block_mb": user_chunk * min(item_chunk, catalogue) * 4 / MB,
            }
        )
    result = {
        "items": args.items,
        "users": args.users,
        "ranked_users": len(ranked),
        "dim": args.dim,
        "exclude": args.exclude,
        "vectors_mb": vectors_mb,
        "runs": runs,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    publish(table(result), result, args.output)
    return result


if __name__ == "__main__":
    main()
