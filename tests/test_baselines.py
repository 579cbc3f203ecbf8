"""The multimodal baselines on precomputed features (VBPR, FREEDOM) and what they share with the ID models."""

import json
import shutil
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_SPEC, tiny_config

from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.connect import connect
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.encoder import ItemFeatures
from mmrec_lightning.features.files import feature_file, save_features
from mmrec_lightning.losses import SampledSoftmaxLoss
from mmrec_lightning.models import FREEDOM, VBPR, MatrixFactorization
from mmrec_lightning.models.freedom import degree_sensitive_sample, item_item_graph, knn_graph
from mmrec_lightning.models.id_based import bipartite_adjacency

IMAGE_DIM, TEXT_DIM, EMBED_DIM = 12, 6, 8
NO_TEXT = 3  # an item whose text row is all zero


@pytest.fixture(scope="module")
def featured_dir(synthetic_dir, tmp_path_factory) -> Path:
    """A copy of the tiny dataset with random image and text features."""
    path = tmp_path_factory.mktemp("featured") / "synthetic"
    shutil.copytree(synthetic_dir, path)
    rng = np.random.default_rng(0)
    text = rng.standard_normal((TINY_SPEC.items, TEXT_DIM), dtype=np.float32)
    text[NO_TEXT] = 0.0
    save_features(feature_file(path, "image"), rng.standard_normal((TINY_SPEC.items, IMAGE_DIM), dtype=np.float32))
    save_features(feature_file(path, "text"), text)
    return path


def _features(path: Path, modality: str) -> ItemFeatures:
    return ItemFeatures(str(feature_file(path, modality)))


def _model(cls, path: Path, **kwargs):
    torch.manual_seed(0)
    features = {"image_features": _features(path, "image"), "text_features": _features(path, "text")}
    return cls(
        num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, embed_dim=EMBED_DIM, top_k=[5], **features, **kwargs
    )


def _data(path: Path) -> RecDataModule:
    return RecDataModule(path=str(path), batch_size=64, history_length=0)


class EpochLosses(L.Callback):
    """Mean training loss of each epoch."""

    def __init__(self) -> None:
        self.epochs: list[list[float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.epochs[-1].append(float(outputs["loss"]))

    def means(self) -> list[float]:
        return [float(np.mean(losses)) for losses in self.epochs]


def _fit(model, path: Path, epochs: int, *callbacks: L.Callback) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
    )  # fmt: skip
    data = _data(path)
    connect(model, data)
    trainer.fit(model, datamodule=data)
    return trainer


# --- VBPR ------------------------------------------------------------------------------------------------


def test_vbpr_vectors_are_the_id_embedding_then_the_projected_text_and_image_features(featured_dir):
    model = _model(VBPR, featured_dir).eval()
    with torch.no_grad():
        users, items = model.embeddings()
        raw = torch.from_numpy(
            np.concatenate([np.load(feature_file(featured_dir, m)) for m in ("text", "image")], axis=1)
        )  # MMRec's order: text, then image
        projected = model.projection(raw)
        some_users, some_items = torch.tensor([0, 5, 5]), torch.tensor([NO_TEXT, 1, 7])
        batch_users, batch_items = model.batch_vectors(some_users, some_items)
    assert users.shape == (TINY_SPEC.users, 2 * EMBED_DIM) and items.shape == (TINY_SPEC.items, 2 * EMBED_DIM)
    torch.testing.assert_close(users[:, :EMBED_DIM], model.user_embedding.weight)
    torch.testing.assert_close(users[:, EMBED_DIM:], model.user_content_embedding.weight)
    torch.testing.assert_close(items[:, :EMBED_DIM], model.item_embedding.weight)
    torch.testing.assert_close(items[:, EMBED_DIM:], projected)
    torch.testing.assert_close(batch_users, users[some_users])  # the batch path projects only its items
    torch.testing.assert_close(batch_items, items[some_items])


def test_vbpr_scores_of_an_item_change_with_its_features_and_only_its(featured_dir):
    model = _model(VBPR, featured_dir).eval()
    with torch.no_grad():
        users, items = model.embeddings()
        before = users @ items.T
        model.features["image"].matrix[4] += 1.0
        users, items = model.embeddings()
        after = users @ items.T
    changed = (before != after).any(dim=0)
    assert changed.tolist() == [item == 4 for item in range(TINY_SPEC.items)]


# --- FREEDOM's graphs ------------------------------------------------------------------------------------

# Six items in 2-D: 0 and 1 point one way, 2 and 3 another, 4 has no content, 5 is opposite to 0.
HAND_MADE = torch.tensor([[1.0, 0.0], [0.9, 0.2], [0.0, 1.0], [0.1, 0.9], [0.0, 0.0], [-1.0, 0.1]])
NEIGHBOURS = {0: {0, 1}, 1: {1, 0}, 2: {2, 3}, 3: {3, 2}, 4: set(), 5: {5, 2}}  # k = 2, itself included


@pytest.mark.parametrize("block", [6, 1 << 20], ids=["one row at a time", "all rows at once"])
def test_knn_graph_links_each_item_with_content_to_its_most_similar_items(block):
    graph = knn_graph(HAND_MADE, k=2, block=block).to_dense()
    expected = torch.zeros(6, 6)
    for item, neighbours in NEIGHBOURS.items():
        for neighbour in neighbours:
            expected[item, neighbour] = 1 / np.sqrt(2 * 2)  # D^-1/2 A D^-1/2, two links per item
    torch.testing.assert_close(graph, expected)


def test_item_item_graph_weighs_the_image_graph_against_the_text_graph():
    text = HAND_MADE[[2, 3, 0, 1, 4, 5]]  # other neighbours: 0-1 and 2-3 swap places, 5 links to 0
    graph = item_item_graph({"image": HAND_MADE, "text": text}, k=2, image_weight=0.1).to_dense()
    assert graph[5, 2] == pytest.approx(0.1 * 0.5) and graph[5, 0] == pytest.approx(0.9 * 0.5)
    assert graph[0, 1] == pytest.approx(0.5) and graph[5, 5] == pytest.approx(0.5)  # in both graphs
    assert graph.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    only_text = item_item_graph({"text": text}, k=2, image_weight=0.1).to_dense()
    torch.testing.assert_close(only_text, knn_graph(text, k=2).to_dense())


# A hub user 0 with items 0-5, a hub item 0 with users 0-5, and six users 6-11 each with a private item.
HUB_USERS = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
HUB_ITEMS = torch.tensor([0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 6, 7, 8, 9, 10, 11])


def test_degree_sensitive_pruning_keeps_the_count_asked_and_prunes_edges_between_popular_nodes_first():
    generator = torch.Generator().manual_seed(0)
    kept_count = torch.zeros(len(HUB_USERS))
    for _ in range(400):
        kept = degree_sensitive_sample(HUB_USERS, HUB_ITEMS, 8, generator)
        assert len(kept) == len(set(kept.tolist())) == 8
        kept_count[kept] += 1
    hub_hub = kept_count[0]  # weight 1/sqrt(6·6)
    spokes = kept_count[1:11]  # 1/sqrt(6·1)
    private = kept_count[11:]  # 1/sqrt(1·1)
    assert hub_hub < spokes.min() and spokes.max() < private.min()


def test_pruned_graph_is_renormalised_over_the_edges_it_keeps():
    kept = degree_sensitive_sample(HUB_USERS, HUB_ITEMS, 8, torch.Generator().manual_seed(1))
    graph = bipartite_adjacency(HUB_USERS[kept], HUB_ITEMS[kept], num_users=12, num_items=12).to_dense()
    links = (graph > 0).float()
    degree = links.sum(1)
    assert links.sum() == 2 * 8
    torch.testing.assert_close(graph, links / torch.sqrt(degree[:, None] * degree[None, :]).clamp(min=1e-12))


# --- FREEDOM in training ---------------------------------------------------------------------------------


def test_freedom_prunes_the_fraction_asked_each_epoch_drawn_from_the_seed_and_epoch_alone(featured_dir):
    model = _model(FREEDOM, featured_dir, edge_dropout=0.8)
    L.seed_everything(3)
    _fit(model, featured_dir, 1)
    edges = len(PreparedDataset(featured_dir).split("train").items)
    assert model.train_graph._nnz() == 2 * int(edges * 0.2)
    assert model.graph._nnz() == 2 * edges
    first = model.pruned_graph(3).to_dense()
    torch.rand(100)  # other draws from the global generator do not move the pruned graph
    torch.testing.assert_close(model.pruned_graph(3).to_dense(), first)
    assert not torch.equal(model.pruned_graph(4).to_dense(), first)


@pytest.mark.parametrize("cls", [VBPR, FREEDOM])
def test_training_lowers_the_loss(cls, featured_dir):
    model = _model(cls, featured_dir, optimizer=lambda params: torch.optim.Adam(params, lr=0.05))
    losses = EpochLosses()
    _fit(model, featured_dir, 4, losses)
    means = losses.means()
    assert means[-1] < means[0] - 0.05, means


@pytest.mark.parametrize("model", ["VBPR", "FREEDOM"])
def test_train_and_test_through_the_cli_then_reload(model, tmp_path, featured_dir, tokenizer_dir):
    features = {
        f"{m}_features": {
            "class_path": "mmrec_lightning.features.ItemFeatures",
            "init_args": {"path": str(feature_file(featured_dir, m))},
        }
        for m in ("image", "text")
    }
    config = yaml.safe_load(tiny_config(tmp_path, featured_dir, tokenizer_dir).read_text())
    config["model"] = {
        "class_path": f"mmrec_lightning.models.{model}",
        "init_args": {"embed_dim": EMBED_DIM, "top_k": [5, 20], **features},
    }
    config["data"].update(batch_size=128, history_length=0)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = RecommenderCLI(args=["fit", "--config", str(path), "--test_after_fit=true"])
    results = json.loads((Path(cli.trainer.log_dir) / "test_metrics.json").read_text())
    assert results[model]["users"] == results["Popularity"]["users"] > 0
    assert 0.0 <= results[model]["recall@20"] <= 1.0 and 0.0 <= results[model]["ndcg@20"] <= 1.0
    checkpoint = cli.trainer.checkpoint_callback.best_model_path
    reloaded = type(cli.model).load_from_checkpoint(checkpoint, weights_only=True)
    for name, value in cli.model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name]), name


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [VBPR, FREEDOM])
def test_features_of_another_dataset_are_refused_naming_the_file(cls, tmp_path):
    path = tmp_path / "image_feat.npy"
    save_features(path, np.ones((TINY_SPEC.items + 1, 4), dtype=np.float32))
    with pytest.raises(ConfigurationError, match=r"model.image_features: .*image_feat.npy has 41 rows, .* 40 items"):
        cls(num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, image_features=ItemFeatures(str(path)), top_k=[5])
    with pytest.raises(ConfigurationError, match="set at least one"):
        cls(num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, top_k=[5])


# --- what the ID models now share ------------------------------------------------------------------------


def test_matrix_factorization_with_logq_sampled_softmax_receives_the_training_item_counts(synthetic_dir):
    torch.manual_seed(0)
    loss = SampledSoftmaxLoss(logq_correction=True)
    model = MatrixFactorization(num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, embed_dim=8, top_k=[5], loss=loss)
    _fit(model, synthetic_dir, 1)
    counts = np.bincount(PreparedDataset(synthetic_dir).split("train").items, minlength=TINY_SPEC.items)
    torch.testing.assert_close(model.loss.item_counts, torch.as_tensor(counts, dtype=torch.float32))


def test_train_speed_benchmark_times_each_model_and_compares_with_mmrec(featured_dir, tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import train_speed

    # on a CPU without bfloat16 instructions the bfloat16 rows are skipped (ItemFeatures would hold float32)
    monkeypatch.setattr(train_speed, "cpu_bfloat16_is_fast", lambda: False)
    output = tmp_path / "train_speed.json"
    args = ["--data", str(featured_dir), "--epochs", "2", "--rounds", "1", "--models", "bpr", "freedom"]
    train_speed.main([*args, "--image-dim", "8", "--text-dim", "4", "--output", str(output)])
    written = json.loads(output.read_text())
    results = written["models"]
    assert set(results) == {"bpr", "freedom"}
    for result in results.values():
        (run,) = result["ours"]["runs"]
        assert len(run["epochs_s"]) == 2 and result["ours"]["median_s"] == run["epochs_s"][1] > 0
        # no MMRec checkout given: seconds only, nothing to compare them with, no verdict
        assert result["mmrec"] is None and result["speedup"] is None and result["passed"] is None
    assert written["peer"] is None and written["machine"]["threads"] == written["threads"]
    out = capsys.readouterr().out
    assert "load average" in out and "no MMRec checkout" in out and "bfloat16 rows skipped" in out
    assert "pass" not in out and "FAIL" not in out
