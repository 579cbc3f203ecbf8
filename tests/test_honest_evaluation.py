"""Nothing about a held-out interaction reaches a model when it scores: what ``test`` reports is what its own
``predict`` output gives, for every model, on data with timestamps."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import tiny_config

from mmrec_lightning.callbacks import TestMetricsWriter, TopKWriter
from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.data.datasets import TrainInteractions, user_statistics
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.evaluation import EvalUsers
from mmrec_lightning.features.files import feature_file

K = 20
FEATURES = {
    "image_features": {"class_path": "mmrec_lightning.features.ItemFeatures", "init_args": {"path": "IMAGE"}},
    "text_features": {"class_path": "mmrec_lightning.features.ItemFeatures", "init_args": {"path": "TEXT"}},
}
MODELS = {
    "multimodal": ("MultimodalRecommender", {}),
    "multimodal-features": (
        "MultimodalRecommender",
        {"image_encoder": FEATURES["image_features"], "text_encoder": FEATURES["text_features"]},
    ),
    "multimodal-ease": (
        "MultimodalRecommender",
        {
            "image_encoder": FEATURES["image_features"],
            "text_encoder": FEATURES["text_features"],
            "content_neighbours": {"class_path": "mmrec_lightning.towers.ContentNeighbours", "init_args": {"k": 3}},
            "item_item": {"class_path": "mmrec_lightning.towers.EASE", "init_args": {"l2": 10.0}},
        },
    ),
    "sequential-id-free": (  # untrained items placed at their content neighbours' mean vector
        "MultimodalRecommender",
        {
            "image_encoder": FEATURES["image_features"],
            "text_encoder": FEATURES["text_features"],
            "use_item_id": False,
            "content_neighbours": {"class_path": "mmrec_lightning.towers.ContentNeighbours", "init_args": {"k": 3}},
            "sequence_encoder": {
                "class_path": "mmrec_lightning.towers.SequenceEncoder",
                "init_args": {"max_length": 6},
            },
        },
    ),
    "popularity": ("Popularity", {}),
    "ease": ("EASERecommender", {"l2": 10.0}),
    "bpr": ("MatrixFactorization", {"embed_dim": 8}),
    "lightgcn": ("LightGCN", {"embed_dim": 8, "num_layers": 2}),
    "vbpr": ("VBPR", {"embed_dim": 8, **FEATURES}),
    "freedom": ("FREEDOM", {"embed_dim": 8, "knn_k": 3, **FEATURES}),
}


def _config(tmp_path: Path, data: Path, tokenizer_dir: Path, model: str) -> Path:
    path = tiny_config(tmp_path, data, tokenizer_dir)
    config = yaml.safe_load(path.read_text())
    name, init_args = MODELS[model]
    text = json.dumps(init_args)
    text = text.replace('"IMAGE"', json.dumps(str(feature_file(data, "image"))))
    text = text.replace('"TEXT"', json.dumps(str(feature_file(data, "text"))))
    if name == "MultimodalRecommender":
        config["model"]["init_args"] |= json.loads(text)
    else:
        config["model"] = {"class_path": f"mmrec_lightning.models.{name}", "init_args": {"top_k": [5, K]}}
        config["model"]["init_args"] |= json.loads(text)
    path.write_text(yaml.safe_dump(config))
    return path


def _metrics_from_predictions(table, dataset: PreparedDataset) -> dict[str, float]:
    """MMRec's Recall, NDCG, Precision and Hit @K over the test users, computed from ``predict``'s top-K."""
    item_index = {raw: index for index, raw in enumerate(dataset.items.column("raw_id").to_pylist())}
    user_index = {raw: index for index, raw in enumerate(dataset.users.column("raw_id").to_pylist())}
    test = dataset.split("test")
    ranked = {
        user_index[user]: [item_index[item] for item in group.sort_values("rank")["item"]]
        for user, group in table.groupby("user")
    }
    recall, ndcg, precision, hit = [], [], [], []
    for user in np.flatnonzero(test.lengths() > 0):
        relevant = set(test.row(user).tolist())
        hits = np.array([item in relevant for item in ranked[user][:K]], dtype=float)
        ideal = (1.0 / np.log2(np.arange(2, min(len(relevant), K) + 2))).sum()
        recall.append(hits.sum() / len(relevant))
        ndcg.append((hits / np.log2(np.arange(2, K + 2))).sum() / ideal)
        precision.append(hits.sum() / K)
        hit.append(float(hits.any()))
    return {
        f"recall@{K}": float(np.mean(recall)),
        f"ndcg@{K}": float(np.mean(ndcg)),
        f"precision@{K}": float(np.mean(precision)),
        f"hit@{K}": float(np.mean(hit)),
    }


@pytest.mark.parametrize("model", MODELS)
def test_test_metrics_equal_those_recomputed_from_predict(model, tmp_path, featured_dir, tokenizer_dir):
    config = _config(tmp_path, featured_dir, tokenizer_dir, model)
    checkpoint = []
    if model not in ("popularity", "ease"):  # nothing to train
        fitted = RecommenderCLI(args=["fit", "--config", str(config), "--test_after_fit=false"])
        checkpoint = ["--ckpt_path", fitted.trainer.checkpoint_callback.best_model_path]
    tested = RecommenderCLI(args=["test", "--config", str(config), *checkpoint])
    results = next(cb for cb in tested.trainer.callbacks if isinstance(cb, TestMetricsWriter)).path
    reported = json.loads(results.read_text())[type(tested.model).__name__]
    predicted = RecommenderCLI(args=["predict", "--config", str(config), *checkpoint])
    writer = next(cb for cb in predicted.trainer.callbacks if isinstance(cb, TopKWriter))
    table = pq.read_table(writer.paths[0]).to_pandas()
    recomputed = _metrics_from_predictions(table, PreparedDataset(featured_dir))
    assert recomputed[f"recall@{K}"] > 0
    for name, value in recomputed.items():
        assert reported[name] == pytest.approx(value, abs=1e-6), name


def test_users_are_described_by_training_data_alone(synthetic_dir):
    dataset = PreparedDataset(synthetic_dir)
    train, valid, test = (dataset.split(name) for name in ("train", "valid", "test"))
    stats = user_statistics(train)
    user = int(np.flatnonzero((valid.lengths() > 0) & (test.lengths() > 0))[0])
    for target in (valid, test, None):
        users = EvalUsers(train, target, history_length=5)
        example = users[int(np.flatnonzero(users.users == user)[0])]
        np.testing.assert_array_equal(example["stats"][0], stats[user])
        np.testing.assert_array_equal(example["history"][0][example["history_mask"][0]], train.row(user)[-5:])
    # the statistic is as of the end of the training data: count and days since the user's last training item
    end, last = train.times.max(), train.times[train.indptr[user + 1] - 1]
    np.testing.assert_allclose(
        stats[user], [np.log1p(len(train.row(user))), np.log1p((end - last) / 86_400)], rtol=1e-6
    )
    # training shows each user the same statistics as evaluation does
    examples = TrainInteractions(train, dataset.num_items, 1, 5, seed=0)
    index = np.arange(train.indptr[user], train.indptr[user + 1])
    batch = examples[(index, 0)]
    np.testing.assert_array_equal(batch["stats"], np.repeat(stats[user][None], len(index), 0))


def test_other_items_history_skips_the_positive_and_ends_with_the_latest(synthetic_dir):
    dataset = PreparedDataset(synthetic_dir)
    train = dataset.split("train")
    user = int(np.argmax(train.lengths()))
    items = train.row(user)
    examples = TrainInteractions(train, dataset.num_items, 1, 4, seed=0, history="others")
    index = np.arange(train.indptr[user], train.indptr[user + 1])
    batch = examples[(index, 0)]
    for position, (history, mask) in enumerate(zip(batch["history"], batch["history_mask"], strict=True)):
        others = np.delete(items, position)
        np.testing.assert_array_equal(history[mask], others[-4:])
    preceding = TrainInteractions(train, dataset.num_items, 1, 4, seed=0, history="preceding")
    first = preceding[(index, 0)]
    assert (
        not first["history_mask"][0].any() and (first["history"][-1][first["history_mask"][-1]] == items[-5:-1]).all()
    )
