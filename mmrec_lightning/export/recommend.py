"""``python -m mmrec_lightning recommend``: answer queries from an export (see ``export``).

    python -m mmrec_lightning recommend --export runs/demo/version_0/export --user user0
    python -m mmrec_lightning recommend --export runs/demo/version_0/export --similar_to item12
    python -m mmrec_lightning recommend --export runs/demo/version_0/export --image new.jpg --text "red wool scarf"

A user gets the items with the highest score (inner product with the user's vector) that they have not
interacted with in any split; an item gets the items nearest to it by cosine similarity; a new item — one
the model never saw, given by its image and/or text — is encoded by the trained model (loaded from the
export's checkpoint, no retraining) and gets its nearest items the same way.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from jsonargparse import ArgumentParser
from PIL import Image

from mmrec_lightning.data.schema import SPLITS, PreparedDataset
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.export.index import load_index, normalized, search
from mmrec_lightning.export.manifest import exported_checkpoint, read_manifest

PROG = "python -m mmrec_lightning recommend"


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item: str
    score: float
    text: str


class ExportedModel:
    """The queries an export answers, with ids as the dataset spells them.

    Args:
        path: the export folder (with ``export.json``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        items = pq.read_table(self.path / "items.parquet")
        self.item_ids = items.column("raw_id").to_pylist()
        self.item_texts = items.column("text").to_pylist()
        self.user_ids = pq.read_table(self.path / "users.parquet").column("raw_id").to_pylist()
        self._item_rows = {raw: row for row, raw in enumerate(self.item_ids)}
        self._user_rows = {raw: row for row, raw in enumerate(self.user_ids)}

    @cached_property
    def _recommend_index(self):
        return load_index(self.path / "recommend.faiss")

    @cached_property
    def _similar_index(self):
        return load_index(self.path / "similar.faiss")

    def _row(self, rows: dict[str, int], raw_id: str, what: str) -> int:
        if raw_id not in rows:
            example = next(iter(rows))
            raise ConfigurationError(
                f"{what} {raw_id!r} is not in {self.path}; use the dataset's raw ids, e.g. {example!r}"
            )
        return rows[raw_id]

    def _answer(self, scores: np.ndarray, rows: np.ndarray, skip: set[int], k: int) -> list[Recommendation]:
        kept = [(float(s), int(r)) for s, r in zip(scores, rows, strict=True) if r >= 0 and r not in skip][:k]
        return [
            Recommendation(rank, self.item_ids[row], score, (self.item_texts[row] or "")[:80])
            for rank, (score, row) in enumerate(kept, start=1)
        ]

    @cached_property
    def _dataset(self) -> PreparedDataset:
        return PreparedDataset(self.manifest["dataset"])

    @cached_property
    def _user_vectors(self) -> np.ndarray:
        return np.load(self.path / "user_vectors.npy", mmap_mode="r")

    @cached_property
    def _item_vectors(self) -> np.ndarray:
        return np.load(self.path / "item_vectors.npy", mmap_mode="r")

    def interacted(self, user: int) -> set[int]:
        """The items a user interacted with in any split of the dataset."""
        return {int(item) for split in SPLITS for item in self._dataset.split(split).row(user)}

    def for_user(self, user: str, k: int = 10) -> list[Recommendation]:
        """The top-``k`` items for ``user`` by the model's score, none they have interacted with."""
        row = self._row(self._user_rows, user, "user")
        vector = self._user_vectors[row]
        seen = self.interacted(row)
        scores, rows = search(self._recommend_index, vector, k + len(seen))
        return self._answer(scores[0], rows[0], seen, k)

    def similar_items(self, item: str, k: int = 10) -> list[Recommendation]:
        """The ``k`` items nearest to ``item`` by cosine similarity (itself left out)."""
        row = self._row(self._item_rows, item, "item")
        vector = self._item_vectors[row : row + 1]
        scores, rows = search(self._similar_index, normalized(vector), k + 1)
        return self._answer(scores[0], rows[0], {row}, k)

    def similar_to_new_item(self, image: Image.Image | None, text: str | None, k: int = 10) -> list[Recommendation]:
        """The ``k`` catalogue items nearest to an item the model never saw, from its image and text alone."""
        vector = self.new_item_vectors([image], [text])
        scores, rows = search(self._similar_index, normalized(vector), k)
        return self._answer(scores[0], rows[0], set(), k)

    def new_item_vectors(self, images: Sequence[Image.Image | None], texts: Sequence[str | None]) -> np.ndarray:
        """Vectors of new items, computed by the exported model from their content."""
        model = self._model
        if not hasattr(model, "encode_new_items"):
            raise ConfigurationError(f"{self.manifest['model']} sees only IDs: it cannot place an item it never saw")
        with torch.no_grad():
            return model.encode_new_items(images, texts).float().numpy()

    @cached_property
    def _model(self):
        return load_exported_model(self.path, self.manifest)


def load_exported_model(path: Path, manifest: dict):
    """The model an export was made from, restored from its checkpoint on the CPU, in eval mode."""
    checkpoint = exported_checkpoint(path, manifest)
    module, name = manifest["model"].rsplit(".", 1)
    model_class = getattr(importlib.import_module(module), name)
    return model_class.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Answer recommendation queries from an exported model.")
    parser.add_argument("--export", type=str, required=True, help="the export folder (written by `export`)")
    parser.add_argument("--user", type=str | None, default=None, help="recommend for this user (raw id)")
    parser.add_argument("--similar_to", type=str | None, default=None, help="items similar to this item (raw id)")
    parser.add_argument("--image", type=str | None, default=None, help="a new item's image file")
    parser.add_argument("--text", type=str | None, default=None, help="a new item's text")
    parser.add_argument("--k", type=int, default=10, help="how many items")
    parser.add_argument("--json", type=bool, default=False, help="print JSON lines instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    queries = [args.user is not None, args.similar_to is not None, args.image is not None or args.text is not None]
    if sum(queries) != 1:
        raise ConfigurationError(f"{PROG}: ask one thing: --user, --similar_to, or --image and/or --text")
    exported = ExportedModel(args.export)
    if args.user is not None:
        answer = exported.for_user(args.user, args.k)
    elif args.similar_to is not None:
        answer = exported.similar_items(args.similar_to, args.k)
    else:
        image = None
        if args.image is not None:
            try:
                image = Image.open(args.image)
                image.load()
            except OSError as error:
                raise ConfigurationError(f"--image {args.image}: not a readable image ({error})") from None
        answer = exported.similar_to_new_item(image, args.text, args.k)
    if args.json:
        for recommendation in answer:
            print(json.dumps(asdict(recommendation)))
        return
    width = max((len(r.item) for r in answer), default=4)
    print(f"{'rank':>4}  {'item':<{width}}  {'score':>8}  text")
    for r in answer:
        print(f"{r.rank:>4}  {r.item:<{width}}  {r.score:>8.4f}  {r.text}")
