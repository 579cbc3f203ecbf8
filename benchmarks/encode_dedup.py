"""What encoding each distinct item of a batch once saves, on the synthetic data.

    python benchmarks/encode_dedup.py [--batches 10] [--history 10] [--negatives 4]

Batches of training interactions share items: popular positives, sampled negatives and the users' history
items. The collator loads each distinct item once and the item tower encodes it once; the alternative encodes
every occurrence (positive, each negative, each history slot) separately. On the same batches, with a
trainable image encoder (``resnet18`` at 64 px) and the tiny text model, the benchmark counts the items sent
through the encoders and times the item tower's forward + backward both ways.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mmrec_lightning.connect import connect
from mmrec_lightning.data.schema import write_prepared
from mmrec_lightning.data.sources.synthetic import CATEGORIES, SyntheticSpec, generate
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.encoders.image import TimmImageEncoder
from mmrec_lightning.models import MultimodalRecommender


def occurrences(batch: dict) -> torch.Tensor:
    """Index into the batch's distinct items of every occurrence: positives, negatives, history slots."""
    return torch.cat([batch["positives"], batch["negatives"].flatten(), batch["history"][batch["history_mask"]]])


def tower_step(model: MultimodalRecommender, items: dict) -> None:
    model.item_tower(items).vectors.sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "encode_dedup.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        source = generate(SyntheticSpec())
        path = write_prepared(
            Path(tmp) / "d", interactions=source.interactions, items=source.items, users=source.users,
            metadata=source.metadata,
        )  # fmt: skip
        model = MultimodalRecommender(
            num_users=1000, num_items=500, num_categories=len(CATEGORIES), embed_dim=64, top_k=[10],
            image_encoder=TimmImageEncoder("resnet18", image_size=64),
        )  # fmt: skip
        data = RecDataModule(
            path=str(path), batch_size=args.batch_size, history_length=args.history, num_negatives=args.negatives
        )
        connect(model, data)
        data.setup("fit")
        loader = iter(data.train_dataloader())
        batches = [next(loader) for _ in range(args.batches)]

    model.train()
    tower_step(model, batches[0]["items"])  # warm-up
    distinct = sum(len(b["items"]["item_ids"]) for b in batches)
    every = sum(len(occurrences(b)) for b in batches)
    start = time.perf_counter()
    for batch in batches:
        tower_step(model, batch["items"])
    deduplicated = (time.perf_counter() - start) / len(batches)
    start = time.perf_counter()
    for batch in batches:
        index = occurrences(batch)
        tower_step(model, {k: v[index] for k, v in batch["items"].items()})
    repeated = (time.perf_counter() - start) / len(batches)

    result = {
        "batch_size": args.batch_size,
        "negatives": args.negatives,
        "history": args.history,
        "encoder_inputs_per_batch": {"distinct": distinct / len(batches), "every_occurrence": every / len(batches)},
        "tower_step_s": {"distinct": deduplicated, "every_occurrence": repeated},
        "speed_up": repeated / deduplicated,
    }
    print(f"synthetic data, batches of {args.batch_size}, {args.negatives} negatives, history {args.history}")
    print(f"{'':20}{'items encoded':>15}{'tower step (s)':>16}")
    print(f"{'each distinct once':20}{distinct / len(batches):>15.0f}{deduplicated:>16.3f}")
    print(f"{'every occurrence':20}{every / len(batches):>15.0f}{repeated:>16.3f}")
    print(f"speed-up {repeated / deduplicated:.1f}x")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
