"""export (vectors + FAISS indexes) and recommend (users, similar items, new items) on a tiny trained model."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tiny_config
from PIL import Image

from mmrec_lightning.__main__ import main as entry_point
from mmrec_lightning.callbacks import TopKWriter
from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.data.schema import SPLITS, PreparedDataset
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.export.exporter import VectorExporter
from mmrec_lightning.export.index import build_index, normalized, search
from mmrec_lightning.export.recommend import ExportedModel
from mmrec_lightning.export.recommend import main as recommend


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_dir, tokenizer_dir):
    """A tiny model trained one epoch, then exported with exact indexes (and its predictions written)."""
    tmp_path = tmp_path_factory.mktemp("export")
    config = tiny_config(tmp_path, synthetic_dir, tokenizer_dir, max_epochs=1)
    fit = RecommenderCLI(args=["fit", "--config", str(config)])
    best = fit.trainer.checkpoint_callback.best_model_path
    cli = RecommenderCLI(
        args=["predict", "--config", str(config), "--ckpt_path", best, "--export.enabled=true", "--export.index=exact"]
    )
    exporter = next(cb for cb in cli.trainer.callbacks if isinstance(cb, VectorExporter))
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, TopKWriter))
    return exporter.path, pq.read_table(writer.paths[0]).to_pandas(), config, best


def test_the_export_holds_the_vectors_that_made_the_predictions(exported, synthetic_dir):
    path, predictions, _, _ = exported
    manifest = json.loads((path / "export.json").read_text())
    users, items = np.load(path / "user_vectors.npy"), np.load(path / "item_vectors.npy")
    dataset = PreparedDataset(synthetic_dir)
    assert users.shape == (dataset.num_users, manifest["dim"]) and items.shape == (dataset.num_items, manifest["dim"])
    assert manifest["model"] == "mmrec_lightning.models.multimodal.MultimodalRecommender"
    train = dataset.split("train")
    for user in (0, 7):
        scores = items @ users[user]
        scores[train.row(user)] = -np.inf
        expected = [f"item{i}" for i in np.argsort(-scores, kind="stable")[:5]]
        ranked = predictions[predictions["user"] == f"user{user}"].sort_values("rank")
        assert list(ranked["item"][:5]) == expected


def test_recommendations_for_a_user_are_the_best_scored_unseen_items(exported, synthetic_dir):
    path = exported[0]
    model = ExportedModel(path)
    answer = model.for_user("user3", k=5)
    dataset = PreparedDataset(synthetic_dir)
    seen = {f"item{i}" for split in SPLITS for i in dataset.split(split).row(3)}
    users, items = np.load(path / "user_vectors.npy"), np.load(path / "item_vectors.npy")
    scores = {f"item{i}": float(s) for i, s in enumerate(items @ users[3])}
    unseen = sorted((s, i) for i, s in scores.items() if i not in seen)[::-1]
    assert [r.item for r in answer] == [i for _, i in unseen[:5]]
    assert [r.rank for r in answer] == [1, 2, 3, 4, 5]
    assert answer[0].score == pytest.approx(unseen[0][0], rel=1e-5)


def test_similar_items_are_the_cosine_nearest_and_a_new_item_lands_next_to_its_twin(exported, synthetic_dir):
    path = exported[0]
    model = ExportedModel(path)
    items = normalized(np.load(path / "item_vectors.npy"))
    cosine = items @ items[4]
    cosine[4] = -np.inf
    assert [r.item for r in model.similar_items("item4", k=3)] == [f"item{i}" for i in np.argsort(-cosine)[:3]]

    dataset = PreparedDataset(synthetic_dir)
    cold = int(dataset.metadata["cold_items"][0])
    image = Image.open(io.BytesIO(dataset.items.column("image")[cold].as_py()))
    text = dataset.items.column("text")[cold].as_py()
    answer = model.similar_to_new_item(image, text, k=3)  # the same content as a cold catalogue item
    assert answer[0].item == f"item{cold}" and answer[0].score == pytest.approx(1.0, abs=1e-4)


def test_the_recommend_command_prints_a_ranked_table_or_json_and_names_unknown_ids(exported, capsys):
    path = str(exported[0])
    recommend(["--export", path, "--user", "user1", "--k", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "item", "score", "text"] and len(lines) == 4
    recommend(["--export", path, "--similar_to", "item2", "--k", "2", "--json", "true"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [row["rank"] for row in rows] == [1, 2] and "item2" not in {row["item"] for row in rows}
    with pytest.raises(ConfigurationError, match="user 'nobody' is not in .*use the dataset's raw ids"):
        recommend(["--export", path, "--user", "nobody"])
    with pytest.raises(ConfigurationError, match="ask one thing"):
        recommend(["--export", path, "--user", "user1", "--similar_to", "item2"])


def test_the_export_command_runs_predict_with_the_exporter(exported, monkeypatch, tmp_path):
    _, _, config, best = exported
    target = tmp_path / "served"
    argv = ["mmrec_lightning", "export", "--config", str(config), "--ckpt_path", best, f"--export.directory={target}"]
    monkeypatch.setattr("sys.argv", argv)
    entry_point()
    assert {"item_vectors.npy", "user_vectors.npy", "recommend.faiss", "similar.faiss", "export.json"} <= {
        p.name for p in target.iterdir()
    }
    assert not (target / ".parts").exists()


def test_an_export_replaces_an_earlier_one_whole_and_a_failed_one_leaves_it_as_it_was(exported, monkeypatch, tmp_path):
    _, _, config, best = exported
    target = tmp_path / "served"
    export = ["predict", "--config", str(config), "--ckpt_path", best, "--export.enabled=true"]
    RecommenderCLI(args=[*export, f"--export.directory={target}"])
    before = {path.name: path.read_bytes() for path in target.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("mmrec_lightning.export.exporter.save_index", fail)
    with pytest.raises(OSError, match="disk full"):
        RecommenderCLI(args=[*export, f"--export.directory={target}"])
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before  # not a mix of two exports
    monkeypatch.undo()
    RecommenderCLI(args=[*export, f"--export.directory={target}"])  # the killed run's leftovers are cleared
    assert sorted(path.name for path in tmp_path.iterdir()) == ["served"]
    assert (target / "recommend.faiss").is_file()

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="notes is not an export"):
        RecommenderCLI(args=[*export, f"--export.directory={foreign}"])
    assert (foreign / "todo.txt").read_text() == "mine"


@pytest.mark.parametrize("metric", ["inner_product", "cosine"])
def test_approximate_indexes_find_the_exact_neighbours_of_clustered_vectors(metric):
    rng = np.random.default_rng(0)
    centres = 3 * rng.normal(size=(20, 16))  # clustered, as learned embeddings are
    vectors, queries = ((centres[rng.integers(20, size=n)] + rng.normal(size=(n, 16))) for n in (2000, 50))
    queries = normalized(queries) if metric == "cosine" else queries.astype(np.float32)
    _, exact = search(build_index(vectors, metric, "exact"), queries, 10)
    _, approximate = search(build_index(vectors, metric, "approximate"), queries, 10)
    overlap = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)])
    assert overlap >= 0.95
    approximate_type = type(build_index(vectors, metric, "approximate"))
    assert approximate_type.__name__ == ("IndexHNSWFlat" if metric == "cosine" else "IndexIVFFlat")
    assert type(build_index(vectors, metric, "auto", exact_below=1000)) is approximate_type  # 2000 items: large
    assert type(build_index(vectors, metric, "auto")).__name__ == "IndexFlatIP"
