"""Filtering and splitting of raw sources (mmrec_lightning.data.sources.pipeline), on in-memory tables."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mmrec_lightning.data.schema import SPLITS
from mmrec_lightning.data.sources.pipeline import CommonOptions, RawSource, build
from mmrec_lightning.errors import ConfigurationError


def _raw(interactions: dict, items: list[str] | None = None, texts: list[str | None] | None = None) -> RawSource:
    frame = pd.DataFrame(interactions)
    item_ids = items if items is not None else sorted(set(frame["item"]))
    item_table = pd.DataFrame({"item": item_ids, "title": texts if texts is not None else item_ids})
    return RawSource(frame, item_table, "interactions.csv", "items.csv", ["title"])


def _prepared(raw: RawSource, **options) -> tuple[pd.DataFrame, dict, list[str]]:
    """The interactions with raw ids and split names, the metadata, and the item raw ids in index order."""
    data = build("test", CommonOptions(**options), raw)
    items = pa.Table.from_batches(list(data.items)).column("raw_id").to_pylist()
    users = data.users.column("raw_id").to_pylist()
    table = data.interactions.to_pandas()
    frame = pd.DataFrame(
        {
            "user": [users[u] for u in table["user"]],
            "item": [items[i] for i in table["item"]],
            "timestamp": table["timestamp"],
            "rating": table["rating"],
            "split": [SPLITS[s] for s in table["split"]],
        }
    )
    return frame, data.metadata, items


def _users(sizes: dict[str, int], seed: int = 0) -> dict:
    """Each user interacting with ``size`` distinct items at distinct, shuffled times."""
    rng = np.random.default_rng(seed)
    users = [user for user, size in sizes.items() for _ in range(size)]
    items = [f"i{k}" for size in sizes.values() for k in range(size)]
    return {"user": users, "item": items, "timestamp": rng.permutation(len(users)) * 10}


def test_random_split_is_8_1_1_per_user_and_every_interaction_is_in_exactly_one_split():
    frame, metadata, item_ids = _prepared(_raw(_users({"ten": 10, "twenty": 20})), split="random")
    counts = frame.groupby(["user", "split"]).size()
    assert [counts["ten", s] for s in SPLITS] == [8, 1, 1]
    assert [counts["twenty", s] for s in SPLITS] == [16, 2, 2]
    assert len(frame) == 30 and not frame.duplicated(["user", "item"]).any()
    never_trained = set(item_ids) - set(frame.loc[frame["split"] == "train", "item"])
    assert {item_ids[i] for i in metadata["cold_items"]} == never_trained
    assert metadata["split"] == {
        "method": "random",
        "seed": 0,
        "ratios": [0.8, 0.1, 0.1],
        "cold_items": len(never_trained),
    }


def test_random_split_keeps_a_training_item_for_every_user():
    frame, _, _ = _prepared(
        _raw(_users({"one": 1, "two": 2, "three": 3})), split="random", split_ratios=(0.5, 0.25, 0.25)
    )
    counts = frame.groupby(["user", "split"]).size().unstack(fill_value=0)
    assert (counts["train"] >= 1).all()
    assert counts.loc["two"].to_dict() == {"test": 1, "train": 1, "valid": 0}


def test_random_split_is_a_function_of_the_seed():
    raw = _raw(_users({"a": 30, "b": 30}))
    first, again, other = (_prepared(raw, split="random", seed=seed)[0]["split"] for seed in (0, 0, 1))
    assert first.equals(again) and not first.equals(other)


def test_auto_uses_the_source_split_and_source_without_one_is_refused():
    raw = _raw({"user": ["a", "a", "a"], "item": ["x", "y", "z"], "split": ["train", "valid", "test"]})
    frame, metadata, _ = _prepared(raw)
    assert frame.set_index("item")["split"].to_dict() == {"x": "train", "y": "valid", "z": "test"}
    assert metadata["split"]["method"] == "source"
    with pytest.raises(ConfigurationError, match="--split source: interactions.csv has no split of its own"):
        _prepared(_raw(_users({"a": 3})), split="source")


def test_leave_one_out_puts_the_latest_in_test_and_the_second_latest_in_valid():
    frame, _, _ = _prepared(_raw(_users({"a": 7, "b": 12, "c": 2, "d": 1})), split="loo")
    for user, rows in frame.groupby("user"):
        in_time = rows.sort_values("timestamp")["split"].tolist()
        if len(rows) >= 3:
            assert in_time[-2:] == ["valid", "test"] and set(in_time[:-2]) == {"train"}, user
    assert frame.set_index("user").loc["c"].sort_values("timestamp")["split"].tolist() == ["train", "test"]
    assert frame.set_index("user").loc[["d"], "split"].tolist() == ["train"]


def test_a_source_without_times_splits_in_file_order():
    raw = _raw({"user": ["a"] * 4, "item": ["w", "x", "y", "z"]})
    frame, metadata, _ = _prepared(raw, split="loo")
    assert frame.set_index("item")["split"].to_dict() == {"w": "train", "x": "train", "y": "valid", "z": "test"}
    assert frame.sort_values("item")["timestamp"].tolist() == [0, 1, 2, 3]
    assert "row order" in metadata["timestamps"]


def test_temporal_cut_puts_all_of_test_after_all_of_train():
    rng = np.random.default_rng(0)
    times = np.repeat(np.arange(50), 2)  # pairs of equal timestamps, some at the cuts
    raw = _raw(
        {"user": rng.integers(5, size=100).astype(str), "item": [f"i{k}" for k in range(100)], "timestamp": times}
    )
    frame, _, _ = _prepared(raw, split="temporal")
    by_split = frame.groupby("split")["timestamp"]
    assert by_split.max()["train"] < by_split.min()["valid"]
    assert by_split.max()["valid"] < by_split.min()["test"]
    assert by_split.size().to_dict() == {"train": 80, "valid": 10, "test": 10}


def test_cold_items_never_train_and_appear_in_valid_or_test():
    rng = np.random.default_rng(0)
    interactions = {
        "user": rng.integers(20, size=400).astype(str),
        "item": rng.integers(50, size=400).astype(str),
        "timestamp": np.arange(400),
    }
    items = sorted({str(k) for k in interactions["item"]}) + ["never-seen"]
    frame, metadata, item_ids = _prepared(_raw(interactions, items), split="cold", cold_item_fraction=0.2, seed=3)
    cold = {item_ids[i] for i in metadata["cold_items"]}
    assert metadata["split"]["cold_items_chosen"] == round(0.2 * 50)
    assert metadata["split"]["cold_items"] == len(cold)
    assert "never-seen" in cold  # an item without interactions is kept, and cold
    assert not cold & set(frame.loc[frame["split"] == "train", "item"])
    held_out = cold & set(frame.loc[frame["split"] != "train", "item"])
    assert len(held_out) >= metadata["split"]["cold_items_chosen"]
    assert not frame.duplicated(["user", "item", "timestamp"]).any()


def test_k_core_is_iterated_until_every_user_and_item_has_k():
    # "c" has items y and z; z has one interaction, so it goes, which leaves "c" with one: "c" goes too.
    raw = _raw(
        {"user": ["a", "a", "b", "b", "c", "c"], "item": ["x", "y", "x", "y", "y", "z"]},
        items=["x", "y", "z", "unseen"],
    )
    frame, metadata, item_ids = _prepared(raw, k_core=2)
    assert set(frame["user"]) == {"a", "b"} and item_ids == ["x", "y"]
    assert metadata["dropped"] == {"k_core_interactions": 2, "k_core_users": 1, "k_core_items": 2}

    rng = np.random.default_rng(1)
    raw = _raw({"user": rng.integers(40, size=300).astype(str), "item": rng.integers(60, size=300).astype(str)})
    frame, _, item_ids = _prepared(raw, k_core=4, dedupe="all")
    assert frame.groupby("user").size().min() >= 4
    assert frame.groupby("item").size().min() >= 4 and set(frame["item"]) == set(item_ids)


def test_dedupe_first_keeps_the_earliest_of_a_repeated_pair_and_all_keeps_every_one():
    raw = _raw({"user": ["a", "a", "a", "b"], "item": ["x", "x", "y", "x"], "timestamp": [50, 10, 30, 20]})
    frame, metadata, _ = _prepared(raw, split="loo")
    assert sorted(zip(frame["user"], frame["item"], frame["timestamp"], strict=True)) == [
        ("a", "x", 10),
        ("a", "y", 30),
        ("b", "x", 20),
    ]
    assert metadata["dropped"] == {"duplicate_interactions": 1}
    frame, metadata, _ = _prepared(raw, split="loo", dedupe="all")
    assert len(frame) == 4 and "duplicate_interactions" not in metadata["dropped"]


def test_min_rating_drops_lower_and_unrated_interactions():
    raw = _raw({"user": ["a", "a", "a", "a"], "item": ["w", "x", "y", "z"], "rating": [5.0, 3.5, 4.0, np.nan]})
    frame, metadata, _ = _prepared(raw, min_rating=4.0)
    assert sorted(frame["item"]) == ["w", "y"] and sorted(frame["rating"]) == [4.0, 5.0]
    assert metadata["dropped"] == {"interactions_below_min_rating": 2}
    with pytest.raises(ConfigurationError, match="interactions.csv has no ratings"):
        _prepared(_raw(_users({"a": 3})), min_rating=4.0)
    with pytest.raises(ConfigurationError, match="no interaction of interactions.csv is left after filtering"):
        _prepared(raw, min_rating=9.0)


def test_items_without_text_are_kept_unless_asked_to_drop_them():
    raw = _raw({"user": ["a", "a", "b"], "item": ["x", "y", "y"]}, items=["x", "y"], texts=["X", "   "])
    _, metadata, item_ids = _prepared(raw)
    assert item_ids == ["x", "y"] and metadata["dropped"] == {}
    frame, metadata, item_ids = _prepared(raw, drop_items_without=["text"])
    assert item_ids == ["x"] and set(frame["user"]) == {"a"}
    assert metadata["dropped"] == {"items_without_text": 1, "interactions_of_dropped_items": 2}


def test_interactions_with_unknown_items_are_counted_and_none_joining_is_an_error():
    raw = _raw({"user": ["a", "a", "b"], "item": ["x", "ghost", "x"]}, items=["x"])
    frame, metadata, _ = _prepared(raw)
    assert len(frame) == 2 and metadata["dropped"] == {"interactions_with_unknown_item": 1}
    with pytest.raises(ConfigurationError, match="none of the 2 interactions in interactions.csv names an item of"):
        _prepared(_raw({"user": ["a", "b"], "item": ["p", "q"]}, items=["x"]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"split_ratios": (0.8, 0.3, 0.1)}, "summing to 1"),
        ({"split": "weekly"}, "--split 'weekly'"),
        ({"drop_items_without": ["audio"]}, "--drop_items_without"),
        ({"cold_item_fraction": 1.0}, "--cold_item_fraction"),
        ({"k_core": -1}, "--k_core"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigurationError, match=message):
        CommonOptions(**options)
