"""The run report: its gallery is the tested model's ranking on the test path, the page shows it with every
figure, W&B receives the same gallery and the metric curves, and Chromium renders the page with its images."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
import yaml
from conftest import TINY_SPEC, tiny_config
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.connect import connect
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.data.sources.synthetic import COLOURS
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.evaluation import CATALOGUE, USERS, rank_items
from mmrec_lightning.models import MultimodalRecommender
from mmrec_lightning.report import ReportWriter
from mmrec_lightning.report.gallery import Gallery, Recommendation, SampleUser
from mmrec_lightning.report.html import build_report
from mmrec_lightning.report.items import ItemDisplay
from mmrec_lightning.report.results import metrics_at_k

NUM_USERS, TOP_K, HISTORY = 3, 5, 4


class Page(HTMLParser):
    """What a report page shows: headings, embedded images, the metrics table's cells, the gallery's cards."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[tuple[str, bytes]] = []  # (mime type, bytes) of every embedded image
        self.table: list[list[str]] = []  # the metrics table, row by row
        self.cards: list[dict[str, str]] = []  # user, role, item, hit (the data- attributes), no_image
        self._user = None
        self._in = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h2", "th", "td"):
            self._in = tag
        elif tag == "tr":
            self.table.append([])
        elif tag == "section" and "data-user" in attrs:
            self._user = attrs["data-user"]
        elif tag == "figure" and "data-item" in attrs:
            self.cards.append({"user": self._user, **{k[5:]: v for k, v in attrs.items() if k.startswith("data-")}})
        elif tag == "img":
            mime, data = re.fullmatch(r"data:(image/\w+);base64,(.+)", attrs["src"]).groups()
            self.images.append((mime, base64.b64decode(data)))
        elif tag == "div" and attrs.get("class") == "noimg":
            self.cards[-1]["no_image"] = "1"

    def handle_data(self, data):
        if self._in == "h2":
            self.headings.append(data)
        elif self._in in ("th", "td"):
            self.table[-1].append(data)
        self._in = None

    def metrics(self) -> dict[str, dict[str, float]]:
        """``{model: {metric: value}}`` as the metrics table shows them (``Recall@5`` …)."""
        models, *rows = self.table
        return {model: {row[0]: float(row[i]) for row in rows} for i, model in enumerate(models[1:], 1)}


def test_metrics_at_k_reads_each_group_and_ignores_other_values():
    results = {"recall@20": 0.5, "recall@5": 0.2, "ndcg@5": 0.1, "warm/recall@5": 0.3, "cold/recall@5": 0.0}
    results |= {"users": 60.0, "modality_weights/image": 0.4, "cold/users": 9.0}
    assert metrics_at_k(results) == {"recall": {5: 0.2, 20: 0.5}, "ndcg": {5: 0.1}}
    assert list(metrics_at_k(results)["recall"]) == [5, 20]
    assert metrics_at_k(results, "warm") == {"recall": {5: 0.3}}
    assert metrics_at_k(results, "cold") == {"recall": {5: 0.0}}


def test_a_report_without_curves_modalities_or_cold_items_says_what_is_missing(synthetic_dir):
    sample = SampleUser(0, history=[1, 2], recommendations=[Recommendation(3, 0.5, {}, hit=True)], held_out=[3, 4])
    html = build_report(
        facts={"model": "MatrixFactorization"},
        results={"MatrixFactorization": {"recall@5": 0.25}},
        curves=None,
        gallery=Gallery([sample], modalities=[], histogram=None),
        items=ItemDisplay(PreparedDataset(synthetic_dir)),
    )
    page = Page(html)
    assert page.headings[0] == "Test metrics" and page.metrics() == {"MatrixFactorization": {"Recall@5": 0.25}}
    assert "class=best" not in html  # one model: nothing to compare
    assert html.count("Not available") == 3  # warm/cold, training curves, modality weights
    assert "no model has metrics for cold test items" in html and "the model fuses no modalities" in html
    assert [(c["role"], c["item"], c["hit"]) for c in page.cards] == [
        ("history", "1", "0"),
        ("history", "2", "0"),
        ("recommendation", "3", "1"),
        ("held_out", "3", "1"),
        ("held_out", "4", "0"),
    ]
    assert [mime for mime, _ in page.images] == ["image/png"] + ["image/jpeg"] * (5 - html.count("no image"))


def test_a_report_of_an_id_model_shows_recommendations_without_modality_weights(tmp_path, synthetic_dir):
    config = {
        "trainer": {
            "accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
        },
        "model": {"class_path": "mmrec_lightning.models.MatrixFactorization", "init_args": {"top_k": [5, 20]}},
        "data": {"path": str(synthetic_dir), "history_length": 0},  # the model reads no history; the report shows it
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = RecommenderCLI(args=["test", "--config", str(path), "--report.enabled=true", f"--report.top_k={TOP_K}"])
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ReportWriter))
    gallery = writer.gallery
    assert gallery.modalities == [] and gallery.histogram is None and len(gallery.samples) == 8
    train = PreparedDataset(synthetic_dir).split("train")
    for sample in gallery.samples:
        assert sample.history and len(sample.recommendations) == TOP_K
        assert all(r.weights == {} for r in sample.recommendations)
        assert not {r.item for r in sample.recommendations} & set(train.row(sample.user).tolist())
    html = writer.path.read_text()
    assert "the model fuses no modalities" in html and "Training</h2>\n<p class='note'>Not available" in html
    assert list(Page(html).metrics()) == ["MatrixFactorization", "Popularity"]  # the model, then the baseline


def fit_with_report(
    tmp_path: Path, synthetic_dir: Path, tokenizer_dir: Path, *extra: str, **trainer: object
) -> RecommenderCLI:
    config = tiny_config(tmp_path, synthetic_dir, tokenizer_dir, **trainer)
    report = [f"--report.num_users={NUM_USERS}", f"--report.top_k={TOP_K}", f"--report.history={HISTORY}"]
    args = ["fit", "--config", str(config), "--test_after_fit=true", "--report.enabled=true", *report, *extra]
    return RecommenderCLI(args=args)


def best_model_ranking(best: str, data_path: Path, users: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The top-K items and modality weights of ``users`` on the test path, computed here from the checkpoint."""
    model = MultimodalRecommender.load_from_checkpoint(best, weights_only=True).eval()
    data = RecDataModule(str(data_path), history_length=5)
    connect(model, data)
    data.setup("test")
    catalogue, test_users = data.test_dataloader()[CATALOGUE], data.test_dataloader()[USERS].dataset
    with torch.no_grad():
        encoded = [(batch["item_ids"], model.encode_items(batch)) for batch in catalogue]
        order = torch.cat([ids for ids, _ in encoded]).argsort()
        table = torch.cat([outputs["vectors"] for _, outputs in encoded])[order]
        weights = torch.cat([outputs["modality_weights"] for _, outputs in encoded])[order]
        indices = [int(np.flatnonzero(test_users.users == user)[0]) for user in users]
        batch = data.test_dataloader()[USERS].collate_fn(test_users.__getitems__(indices))
        vectors = model.encode_users(batch, table)
        _, top = rank_items(vectors, table, batch["exclude_rows"], batch["exclude_items"], TOP_K)
    return top.numpy(), weights[top].numpy()


def test_fit_with_test_after_fit_writes_a_report_of_the_best_model(tmp_path, synthetic_dir, tokenizer_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # a real WandbLogger, no run files, no network
    logged: dict[str, object] = {}
    monkeypatch.setattr(WandbLogger, "log_metrics", lambda self, metrics, step=None: logged.update(metrics))
    loggers = [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "runs")}},
        {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"save_dir": str(tmp_path / "runs")}},
    ]
    # the first epoch counts as the best, so the tested weights are not those training ended with
    first_epoch = {"monitor": "epoch", "mode": "min"}
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": first_epoch}
    cli = fit_with_report(tmp_path, synthetic_dir, tokenizer_dir, logger=loggers, callbacks=[checkpoint])
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ReportWriter))
    run_dir = Path(cli.trainer.log_dir)
    assert writer.path == run_dir / "report.html"
    samples, modalities = writer.gallery.samples, writer.gallery.modalities
    assert modalities == ["image", "text", "id"] and len(samples) == NUM_USERS

    # the gallery is the best checkpoint's ranking on the test path: recomputed here, independently
    best = cli.trainer.checkpoint_callback.best_model_path
    assert "epoch=0" in best
    top, weights = best_model_ranking(best, synthetic_dir, [s.user for s in samples])
    dataset = PreparedDataset(synthetic_dir)
    train, test = dataset.split("train"), dataset.split("test")
    for sample, expected_items, expected_weights in zip(samples, top, weights, strict=True):
        assert [r.item for r in sample.recommendations] == expected_items.tolist()
        got = np.array([[r.weights[m] for m in modalities] for r in sample.recommendations])
        np.testing.assert_allclose(got, expected_weights, atol=1e-5)
        assert sample.history == train.row(sample.user)[::-1][:HISTORY].tolist()
        assert sample.held_out == test.row(sample.user).tolist()
        assert [r.hit for r in sample.recommendations] == [r.item in sample.held_out for r in sample.recommendations]
    histogram = writer.gallery.histogram
    assert histogram.counts.sum(1).tolist() == [TINY_SPEC.items] * 3  # every item once per modality
    np.testing.assert_allclose(histogram.means.sum(), 1.0, atol=1e-5)  # weights sum to 1 for every item

    # the page: both models' metrics, every figure, the same gallery with a thumbnail for each imaged item
    page = Page(writer.path.read_text())
    results = json.loads((run_dir / "test_metrics.json").read_text())
    table_metrics = page.metrics()
    assert list(table_metrics) == ["MultimodalRecommender", "Popularity"]  # the baseline's test rewrote the page
    for model, values in table_metrics.items():
        assert len(values) == 5 * 2  # five metrics at K = 5 and 20
        assert values["Recall@20"] == round(results[model]["recall@20"], 4)
        assert values["MAP@5"] == round(results[model]["map@5"], 4)
    plots = page.headings[1:5]
    assert plots == ["Metrics at K", "Warm and cold items", "Training", "Modality weights over the catalogue"]
    assert "Not available" not in writer.path.read_text()
    pngs = [Image.open(io.BytesIO(data)) for mime, data in page.images if mime == "image/png"]
    assert len(pngs) == 4 and all(png.width > 400 for png in pngs)
    for sample in samples:
        cards = [c for c in page.cards if c["user"] == str(sample.user)]
        shown = [(c["role"], int(c["item"]), c["hit"] == "1") for c in cards]
        assert shown == [
            *(("history", item, False) for item in sample.history),
            *(("recommendation", r.item, r.hit) for r in sample.recommendations),
            *(("held_out", item, item in {r.item for r in sample.recommendations}) for item in sample.held_out),
        ]
    jpegs = [Image.open(io.BytesIO(data)) for mime, data in page.images if mime == "image/jpeg"]
    assert len(jpegs) == sum("no_image" not in c for c in page.cards) > 0
    assert all(max(jpeg.size) <= 96 and np.asarray(jpeg).std() > 10 for jpeg in jpegs)  # small, not blank

    # W&B: the gallery as a table of thumbnails, titles and weights, and each metric against K
    table = logged["report/sample_users"]
    columns = ["user", "role", "position", "item", "title", "image", "score", "hit"]
    assert table.columns == [*columns, *(f"modality_weights/{m}" for m in modalities)]
    display = ItemDisplay(dataset)
    first = samples[0]
    rows = [dict(zip(table.columns, row, strict=True)) for row in table.data]
    assert len(rows) == sum(len(s.history) + len(s.recommendations) + len(s.held_out) for s in samples)
    recommended = [r for r in rows if r["user"] == display.user_raw_id(first.user) and r["role"] == "recommendation"]
    assert [r["item"] for r in recommended] == [display.raw_id(r.item) for r in first.recommendations]
    assert [r["title"] for r in recommended] == [display.title(r.item) for r in first.recommendations]
    assert [r["position"] for r in recommended] == list(range(1, TOP_K + 1))
    assert [r["modality_weights/text"] for r in recommended] == [r.weights["text"] for r in first.recommendations]
    index = {raw: item for item, raw in enumerate(dataset.items.column("raw_id").to_pylist())}
    assert all(isinstance(r["image"], wandb.Image) for r in rows if display.thumbnail(index[r["item"]]) is not None)
    recall = logged["report/recall_at_k"].table
    assert {key for _, key, _ in recall.data} == {"MultimodalRecommender", "Popularity"}
    assert {k for k, _, _ in recall.data} == {5, 20}
    assert {"report/ndcg_at_k", "report/precision_at_k", "report/map_at_k", "report/hit_at_k"} <= set(logged)


SCREEN = (1280, 2400)


def screenshot(chromium: str, page: Path, out: Path) -> np.ndarray:
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={out.parent / 'chromium-profile'}", f"--screenshot={out}",
        f"--window-size={SCREEN[0]},{SCREEN[1]}", page.as_uri(),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def colour_pixels(shot: np.ndarray, colour: tuple[int, int, int], tolerance: int = 24) -> int:
    return int((np.abs(shot - np.array(colour)).max(axis=2) <= tolerance).sum())


@pytest.mark.slow
def test_chromium_renders_the_report_with_its_thumbnails(tmp_path, synthetic_dir, tokenizer_dir):
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if chromium is None:
        pytest.skip("no Chromium binary (apt-get install chromium)")
    cli = fit_with_report(tmp_path, synthetic_dir, tokenizer_dir, "--report.num_users=8", "--report.top_k=10")
    report = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ReportWriter)).path
    shot = screenshot(chromium, report, tmp_path / "report.png")
    assert shot.shape[:2] == (SCREEN[1], SCREEN[0])
    assert (shot.min(axis=2) < 200).mean() > 0.02  # not a blank page (a page of text and plots: about 0.05)
    # the plots use some of the same colours: compare with the page without its thumbnails
    bare = report.with_name("bare.html")
    bare.write_text(re.sub(r"<img alt='item \d+' src='[^']*'>", "", report.read_text()))
    without = screenshot(chromium, bare, tmp_path / "bare.png")
    shown = [name for name, rgb in COLOURS.items() if colour_pixels(shot, rgb) > colour_pixels(without, rgb) + 200]
    assert len(shown) >= 4, shown  # the synthetic items' strong colours come from the thumbnails
