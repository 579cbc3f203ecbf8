"""Ways to split interactions into train, valid and test: each takes arrays with one entry per interaction (user
and item indices, timestamps) and returns the split code of each interaction."""

from __future__ import annotations

import numpy as np

from mmrec_lightning.data.schema import SPLIT_CODES

TRAIN, VALID, TEST = SPLIT_CODES["train"], SPLIT_CODES["valid"], SPLIT_CODES["test"]


def _rank_in_user(users: np.ndarray, ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each interaction's position within its user's interactions taken in ``ordered`` order (a permutation
    that groups users together), and its user's interaction count."""
    grouped = users[ordered]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]) if len(grouped) else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, len(grouped)])
    rank, size = np.empty(len(users), np.int64), np.empty(len(users), np.int64)
    rank[ordered] = np.arange(len(grouped)) - np.repeat(starts, sizes)
    size[ordered] = np.repeat(sizes, sizes)
    return rank, size


def per_user_random_split(
    users: np.ndarray, ratios: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """MMRec's per-user random split: round(n * ratio) interactions to valid and to test, the rest (at least one)
    to train."""
    shuffled = rng.permutation(len(users))
    rank, size = _rank_in_user(users, shuffled[np.argsort(users[shuffled], kind="stable")])
    n_test = np.minimum(np.floor(size * ratios[2] + 0.5).astype(np.int64), size - 1)
    n_valid = np.minimum(np.floor(size * ratios[1] + 0.5).astype(np.int64), size - 1 - n_test)
    return np.select([rank < n_valid, rank < n_valid + n_test], [VALID, TEST], TRAIN).astype(np.int8)


def leave_one_out_split(users: np.ndarray, times: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each user's latest interaction to test and the one before to valid, keeping at least one in train."""
    rank, size = _rank_in_user(users, np.lexsort((order, times, users)))
    from_end = size - 1 - rank
    return np.select([(from_end == 0) & (size >= 2), (from_end == 1) & (size >= 3)], [TEST, VALID], TRAIN).astype(
        np.int8
    )


def temporal_split(times: np.ndarray, ratios: tuple[float, float, float]) -> np.ndarray:
    """Cut the timeline at the train and train + valid quantiles. Equal timestamps fall on the same side, so
    everything in valid is later than everything in train, and test later still."""
    ordered = np.sort(times)

    def cut(fraction: float) -> float:
        position = int(np.floor(len(ordered) * fraction + 0.5))
        return float(ordered[position]) if position < len(ordered) else np.inf

    first, second = cut(ratios[0]), cut(ratios[0] + ratios[1])
    return np.select([times < first, times < second], [TRAIN, VALID], TEST).astype(np.int8)


def choose_cold_items(items: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A ``fraction`` of the items that have interactions, drawn at random."""
    seen = np.unique(items)
    return rng.choice(seen, size=int(round(fraction * len(seen))), replace=False)


def cold_item_split(
    users: np.ndarray, cold: np.ndarray, ratios: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """The interactions of cold items (``cold``: a mask over the interactions) to valid or test at random, in
    proportion to their ratios; the other interactions split per user at random (:func:`per_user_random_split`)."""
    _, valid, test = ratios
    split = np.empty(len(users), dtype=np.int8)
    split[cold] = rng.choice([VALID, TEST], size=int(cold.sum()), p=[valid / (valid + test), test / (valid + test)])
    split[~cold] = per_user_random_split(users[~cold], ratios, rng)
    return split
