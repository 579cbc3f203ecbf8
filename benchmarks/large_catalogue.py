"""Full ranking over a large catalogue: time, and peak memory bounded by the chunk sizes.

    python benchmarks/large_catalogue.py [--items 1000000] [--users 100000] [--ranked-users 2048] [--repeats 2]

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
float32) and not the catalogue.

Speed against a tight floor, in the same run: the same users ranked by the tightest plain-torch computation we
could write, chunked over users and items — per block of users and chunk of items one matrix product into a
buffer reused from chunk to chunk (no fresh score block to fault in each time), the excluded items set to -inf,
the chunk's top-k (where it pays, by group maxima: the top-k of a chunk lie in the k groups of ``--group`` items
with the largest maxima, so ``topk`` runs over the group maxima and k groups instead of every score), and one
``topk`` over every chunk's candidates at the end. Several settings (``--floor``) are timed; the fastest is the
floor. Ours is ``rank_items`` at the full-size chunks. Each is timed ``--repeats`` times, interleaved, on the same
ranked users (everything from the vectors to each user's top 50 included); the medians are compared, and the
floor's top 50 scores must equal ours. Prints the machine and a table with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from peers import describe, machine
from results_file import publish

from mmrec_lightning.evaluation import chunk_top, rank_items

TOP_K = 50
MB = 2**20
TARGET = 1.5  # ours / floor
FLOOR_SETTINGS = ((512, 1 << 16, 32), (512, 1 << 17, 32), (512, 1 << 16, 64), (512, 1 << 16, 0))  # users, items, group


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


def floor_rank(
    users: torch.Tensor, items: torch.Tensor, excluded: torch.Tensor, user_block: int, item_chunk: int, group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``TOP_K`` ``(scores, items)`` of every row of ``users``, never an excluded item: the floor."""
    per_user = excluded.shape[1]
    buffer = torch.empty(min(user_block, len(users)) * min(item_chunk, len(items)))
    all_scores, all_items = [], []
    for lo in range(0, len(users), user_block):
        block = users[lo : lo + user_block]
        rows = torch.arange(len(block)).repeat_interleave(per_user)
        banned = excluded[lo : lo + len(block)].flatten()
        values, columns = [], []
        for start in range(0, len(items), item_chunk):
            chunk = items[start : start + item_chunk]
            scores = torch.mm(block, chunk.T, out=buffer[: len(block) * len(chunk)].view(len(block), len(chunk)))
            inside = (banned >= start) & (banned < start + len(chunk))
            scores[rows[inside], banned[inside] - start] = float("-inf")
            top_scores, top_columns = chunk_top(scores, TOP_K, group)
            values.append(top_scores)
            columns.append(top_columns + start)
        top_scores, at = torch.cat(values, 1).topk(TOP_K, dim=1)
        all_scores.append(top_scores)
        all_items.append(torch.cat(columns, 1).gather(1, at))
    return torch.cat(all_scores), torch.cat(all_items)


def ours_rank(users: torch.Tensor, items: torch.Tensor, excluded: torch.Tensor, user_chunk: int, item_chunk: int):
    """Top-``TOP_K`` ``(scores, items)`` by ``rank_items``, a chunk of users at a time (as ``rank_all``)."""
    per_user = excluded.shape[1]
    all_scores, all_items = [], []
    for lo in range(0, len(users), user_chunk):
        chunk = users[lo : lo + user_chunk]
        rows = torch.arange(len(chunk)).repeat_interleave(per_user)
        scores, top = rank_items(chunk, items, rows, excluded[lo : lo + len(chunk)].flatten(), TOP_K, item_chunk)
        all_scores.append(scores)
        all_items.append(top)
    return torch.cat(all_scores), torch.cat(all_items)


def against_floor(users, items, excluded, user_chunk: int, item_chunk: int, settings, repeats: int) -> dict:
    """Ours (``rank_items`` at ``user_chunk`` x ``item_chunk``) and each floor setting timed ``repeats`` times,
    interleaved, on the same users; the floor's top scores checked against ours."""
    times: dict[str, list[float]] = {"ours": [], **{_name(s): [] for s in settings}}
    reference = None
    for _ in range(repeats):
        start = time.perf_counter()
        reference, _ = ours_rank(users, items, excluded, user_chunk, item_chunk)
        times["ours"].append(time.perf_counter() - start)
        for setting in settings:
            start = time.perf_counter()
            scores, top = floor_rank(users, items, excluded, *setting)
            times[_name(setting)].append(time.perf_counter() - start)
            if not torch.allclose(scores.sort(1).values, reference.sort(1).values, rtol=1e-5, atol=1e-5):
                raise AssertionError(f"floor {_name(setting)}: other top-{TOP_K} scores than rank_items")
            if (top.unsqueeze(2) == excluded[: len(users)].unsqueeze(1)).any():
                raise AssertionError(f"floor {_name(setting)}: an excluded training item was ranked")
    sides = {name: {"seconds": s, "median_s": statistics.median(s), "min_s": min(s), "max_s": max(s)}
             for name, s in times.items()}  # fmt: skip
    best = min((_name(s) for s in settings), key=lambda name: sides[name]["median_s"])
    ratio = sides["ours"]["median_s"] / sides[best]["median_s"]
    return {
        "ours": {**sides["ours"], "user_chunk": user_chunk, "item_chunk": item_chunk},
        "floors": {name: sides[name] for name in sides if name != "ours"},
        "floor": best,
        "ratio": ratio,
        "target": TARGET,
        "passed": ratio <= TARGET,
        "repeats": repeats,
    }


def _name(setting: tuple[int, int, int]) -> str:
    user_block, item_chunk, group = setting
    return f"{user_block} x {item_chunk}" + (f", groups of {group}" if group else ", plain topk")


def measure(users: torch.Tensor, items: torch.Tensor, excluded: torch.Tensor, user_chunk: int, item_chunk: int):
    """Seconds and working memory (MB above the RSS before) of ranking ``users`` against ``items``."""
    reset_peak()
    before = memory_kb("VmHWM")  # the RSS at the reset: a high-water mark cannot end below it, the RSS read later can
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
        describe(result["machine"]),
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
    speed = result["speed"]
    share = result["users"] / result["ranked_users"]
    lines.append(
        f"against the floor, {result['ranked_users']:,} users, median of {speed['repeats']} interleaved runs "
        f"(s, then projected to all users):"
    )
    sides = [(f"ours: rank_items, {speed['ours']['user_chunk']:,} x {speed['ours']['item_chunk']:,}", speed["ours"])]
    sides += [(f"floor: {name}" + (" (the floor)" if name == speed["floor"] else ""), side)
              for name, side in speed["floors"].items()]  # fmt: skip
    width = max(len(name) for name, _ in sides)
    for name, side in sides:
        lines.append(
            f"  {name.ljust(width)}{side['median_s']:>8.1f}{side['median_s'] * share:>8.0f}"
            f"   (min {side['min_s']:.1f}, max {side['max_s']:.1f})"
        )
    lines.append(f"ours / floor {speed['ratio']:.2f} (target <= {TARGET}): {'pass' if speed['passed'] else 'FAIL'}")
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
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of ours and each floor setting")
    parser.add_argument(
        "--floor", type=int, nargs=3, action="append", metavar=("USERS", "ITEMS", "GROUP"),
        help="a floor setting: users per block, items per chunk, group size (0: plain topk); repeatable",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "large_catalogue.json"))
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
    settings = [tuple(setting) for setting in args.floor] if args.floor else list(FLOOR_SETTINGS)
    speed = against_floor(ranked, items, excluded, args.user_chunk, args.item_chunk, settings, args.repeats)
    result = {
        "machine": machine(),
        "items": args.items,
        "users": args.users,
        "ranked_users": len(ranked),
        "dim": args.dim,
        "exclude": args.exclude,
        "vectors_mb": vectors_mb,
        "runs": runs,
        "speed": speed,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    publish(table(result), result, args.output)
    return result


if __name__ == "__main__":
    main()
