"""Nearest-neighbour indexes over item vectors (FAISS).

Two indexes are built: ``recommend`` ranks items by inner product with a user vector (the models' own
score), ``similar`` by cosine similarity between item vectors (an item's neighbours, whatever their
popularity). Each is exact (a flat scan) or approximate. The approximate structure differs by metric,
because graph search (HNSW) finds cosine neighbours reliably but misses many top inner products when
vector norms vary (about 0.6 of the exact top-20 on 200,000 clustered vectors), while an inverted file
(IVF) scanning an eighth of its lists (at least 32) finds about 0.99 of them (``benchmarks/ann_agreement.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from mmrec_lightning.atomic import write_atomically

IndexKind = Literal["auto", "exact", "approximate"]
Metric = Literal["inner_product", "cosine"]


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def build_index(vectors: np.ndarray, metric: Metric, kind: IndexKind = "auto", exact_below: int = 100_000):
    """An index over ``vectors`` for ``metric`` (cosine: the vectors are normalised here; normalise the
    queries too, see :func:`normalized`).

    Args:
        vectors: ``[items, dim]``.
        metric: ``inner_product`` or ``cosine``.
        kind: ``exact``, ``approximate`` (IVF for inner product, HNSW for cosine), or ``auto``: exact below
            ``exact_below`` items, where a full scan is fast anyway.
        exact_below: the catalogue size from which ``auto`` turns approximate.
    """
    vectors = np.ascontiguousarray(normalized(vectors) if metric == "cosine" else vectors, dtype=np.float32)
    count, dim = vectors.shape
    if kind == "exact" or (kind == "auto" and count < exact_below):
        index = faiss.IndexFlatIP(dim)
    elif metric == "cosine":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 512
    else:
        lists = max(1, min(count // 39, int(4 * math.sqrt(count))))  # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(lists, max(lists // 8, 32))  # small catalogues have few lists: probe at least 32
    index.add(vectors)
    return index


def save_index(index, path: Path) -> None:
    """Write ``index`` under a temporary name first, so a killed export leaves no truncated index."""
    write_atomically(path, lambda file: file.write(faiss.serialize_index(index).tobytes()))


def load_index(path: Path):
    return faiss.read_index(str(path))


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, items)`` of the top ``k`` per query; items are -1 where fewer than ``k`` were found."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    return index.search(queries, min(k, index.ntotal))
