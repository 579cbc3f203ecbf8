import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import wandb
import yaml
from conftest import TINY_SPEC, tiny_config

from mmrec_lightning.__main__ import main as entry_point
from mmrec_lightning.callbacks import TestMetricsWriter, TopKWriter, redact
from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.models import MultimodalRecommender

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").rglob("*.yaml"))
EXTRACT_CONFIGS = [path for path in CONFIGS if path.parent.name == "extract"]  # extract-features, not fit
SWEEP_SPACES = [path for path in CONFIGS if "sweep" in path.parent.parts]  # search spaces of `sweep`
CONFIGS = [path for path in CONFIGS if path not in EXTRACT_CONFIGS + SWEEP_SPACES]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        RecommenderCLI(args=["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_help_works_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        RecommenderCLI(args=[command, "--help"])
    assert exit_info.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_prepare_help_and_the_top_level_usage(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["mmrec_lightning", "prepare", "--source", "synthetic", "--help"])
    with pytest.raises(SystemExit):
        entry_point()
    assert "--users" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["mmrec_lightning"])
    with pytest.raises(SystemExit) as exit_info:
        entry_point()
    assert exit_info.value.code == 0 and "prepare" in capsys.readouterr().out


def test_prepare_command_writes_a_dataset(tmp_path, monkeypatch, capsys):
    out = tmp_path / "prepared"
    monkeypatch.setattr(
        "sys.argv",
        [
            "mmrec_lightning",
            "prepare",
            "--source",
            "synthetic",
            "--output",
            str(out),
            "--users",
            "20",
            "--items",
            "15",
            "--seed",
            "3",
        ],
    )
    entry_point()
    summary = capsys.readouterr().out
    assert "users 20  items 15" in summary
    assert json.loads((out / "metadata.json").read_text())["source_options"]["seed"] == 3


def test_tiny_fit_then_test_through_the_cli_and_reload(tmp_path, synthetic_dir, tokenizer_dir):
    config = tiny_config(tmp_path, synthetic_dir, tokenizer_dir)
    cli = RecommenderCLI(args=["fit", "--config", str(config), "--test_after_fit=true"])
    run_dir = Path(cli.trainer.log_dir)
    results = json.loads((run_dir / "test_metrics.json").read_text())
    assert set(results) == {"MultimodalRecommender", "Popularity"}
    assert {"recall@20", "ndcg@20", "precision@5", "map@5", "hit@20"} <= set(results["Popularity"])
    assert {"warm/recall@20", "cold/recall@20", "cold/users"} <= set(results["MultimodalRecommender"])
    assert results["Popularity"]["cold/recall@5"] == 0.0  # never-seen items have no popularity
    assert (run_dir / "config.yaml").is_file()
    logged = yaml.safe_load((run_dir / "hparams.yaml").read_text())["config"]  # sent to the logger
    assert logged["model"]["init_args"]["image_encoder"]["init_args"]["model_name"] == "test_efficientnet"
    best = cli.trainer.checkpoint_callback.best_model_path

    tested = RecommenderCLI(args=["test", "--config", str(config), "--ckpt_path", best])
    tested_file = next(cb for cb in tested.trainer.callbacks if isinstance(cb, TestMetricsWriter)).path
    again = json.loads(tested_file.read_text())
    assert set(again) == {"MultimodalRecommender", "Popularity"}  # the baseline next to every test
    again = again["MultimodalRecommender"]
    for name, value in results["MultimodalRecommender"].items():
        assert again[name] == pytest.approx(value, abs=1e-6), name

    predicted = RecommenderCLI(args=["predict", "--config", str(config), "--ckpt_path", best, "--predictions.csv=true"])
    writer = next(cb for cb in predicted.trainer.callbacks if isinstance(cb, TopKWriter))
    table = pq.read_table(writer.paths[0]).to_pandas()
    assert len(table) == TINY_SPEC.users * 20 and table["user"].nunique() == TINY_SPEC.users
    dataset = PreparedDataset(synthetic_dir)
    train = dataset.split("train")
    first = table[table["user"] == "user0"].sort_values("rank")
    assert list(first["rank"]) == list(range(1, 21)) and first["score"].is_monotonic_decreasing
    assert not set(first["item"]) & {f"item{i}" for i in train.row(0)}  # training items excluded
    assert writer.paths[1].suffix == ".csv" and writer.paths[1].read_text().startswith('"user","rank"')
    weights = table[["modality_weights/image", "modality_weights/text", "modality_weights/id"]].to_numpy()
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)  # which modality placed each item
    cold = table["item"].isin(dataset.items.column("raw_id").to_numpy()[dataset.metadata["cold_items"]])
    # a cold item's ID never counts, a warm one's always does (whether the tiny model ranks a cold item in
    # anyone's top 20 depends on its training, so the test must not)
    assert ((table["modality_weights/id"] == 0) == cold).all()

    model = MultimodalRecommender.load_from_checkpoint(best, weights_only=True)
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_a_bad_component_in_the_config_is_reported_in_one_line(
    tmp_path, synthetic_dir, tokenizer_dir, monkeypatch, capsys
):
    config = tiny_config(tmp_path, synthetic_dir, tokenizer_dir)
    bad = "--model.init_args.image_encoder.init_args.model_name=resnet5O"
    monkeypatch.setattr("sys.argv", ["mmrec_lightning", "fit", "--config", str(config), bad])
    with pytest.raises(SystemExit) as exit_info:
        entry_point()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown timm model 'resnet5O'; did you mean ['resnet50', 'resnet51q', 'resnet50t']?"]


def test_secret_looking_config_values_never_reach_the_logger():
    config = {"trainer": {"logger": {"init_args": {"api_key": "abc", "project": "p"}}}, "token": ["x"], "n": 1}
    assert redact(config) == {
        "trainer": {"logger": {"init_args": {"api_key": "<redacted>", "project": "p"}}},
        "token": "<redacted>",
        "n": 1,
    }


@pytest.mark.slow
def test_wandb_offline_run_receives_the_config(tmp_path, synthetic_dir, tokenizer_dir):
    wandb_logger = {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"save_dir": str(tmp_path / "runs"), "offline": True, "project": "test"},
    }
    config = tiny_config(tmp_path, synthetic_dir, tokenizer_dir, max_epochs=1, logger=wandb_logger)
    RecommenderCLI(args=["fit", "--config", str(config)])
    wandb.finish()
    (run_file,) = (tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb")  # synced later by `wandb sync`
    deadline = time.monotonic() + 60  # W&B's service process writes the file behind the run; give it time
    while not (b"test_efficientnet" in (recorded := run_file.read_bytes()) and b"modality_weights/image" in recorded):
        assert time.monotonic() < deadline, f"{run_file} lacks the config or the metrics: {recorded[:200]!r}"
        time.sleep(0.5)


@pytest.mark.parametrize("model", ["MatrixFactorization", "LightGCN"])
def test_id_baselines_train_and_test_through_the_cli(model, tmp_path, synthetic_dir):
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
        },
        "model": {"class_path": f"mmrec_lightning.models.{model}", "init_args": {"embed_dim": 8, "top_k": [5, 20]}},
        "data": {"path": str(synthetic_dir), "batch_size": 128, "history_length": 0},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = RecommenderCLI(args=["fit", "--config", str(path), "--test_after_fit=true"])
    assert not [w for w in caught if "logging interval" in str(w.message)]
    metrics = pd.read_csv(Path(cli.trainer.log_dir) / "metrics.csv")
    assert set(metrics.dropna(subset=["train/loss"])["epoch"]) == {0, 1}  # fewer steps than log_every_n_steps
    results = json.loads((Path(cli.trainer.log_dir) / "test_metrics.json").read_text())
    assert results[model]["users"] == results["Popularity"]["users"] > 0
    assert 0.0 <= results[model]["recall@20"] <= 1.0
    checkpoint = cli.trainer.checkpoint_callback.last_model_path or cli.trainer.checkpoint_callback.best_model_path
    reloaded = type(cli.model).load_from_checkpoint(checkpoint, weights_only=True)
    assert reloaded.hparams["embed_dim"] == 8


@pytest.mark.parametrize("precision", ["medium", "highest"])
def test_the_float32_matmul_precision_is_set_from_the_command_line(precision, synthetic_dir):
    before = torch.get_float32_matmul_precision()
    model = {"class_path": "mmrec_lightning.models.MatrixFactorization", "init_args": {"top_k": [5]}}
    config = {"model": model, "data": {"path": str(synthetic_dir)}, "float32_matmul_precision": precision}
    try:
        torch.set_float32_matmul_precision("high")  # neither value: the option must change it
        RecommenderCLI(args=config, run=False)
        assert torch.get_float32_matmul_precision() == precision
    finally:
        torch.set_float32_matmul_precision(before)


def test_intra_op_threads_are_the_process_share_of_its_cores_less_its_workers(monkeypatch):
    from mmrec_lightning.cli import intra_op_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert intra_op_threads(None, processes=1, workers=0) == 8
    assert intra_op_threads(None, processes=2, workers=1) == 3  # two DDP processes, a worker each
    assert intra_op_threads(None, processes=1, workers=12) == 1
    assert intra_op_threads(3, processes=1, workers=0) == 3  # a config decides
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert intra_op_threads(None, processes=1, workers=0) is None  # so does the environment


def test_the_threads_are_set_from_the_config(synthetic_dir):
    before = torch.get_num_threads()
    model = {"class_path": "mmrec_lightning.models.MatrixFactorization", "init_args": {"top_k": [5]}}
    config = {"model": model, "data": {"path": str(synthetic_dir)}, "num_threads": 1}
    try:
        torch.set_num_threads(2)
        RecommenderCLI(args=config, run=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
