"""Multi-process runs on CPU (gloo): the DDP paths a GPU cluster takes, without a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config


@pytest.mark.slow
def test_fit_and_test_with_two_ddp_processes(tmp_path, synthetic_dir, tokenizer_dir):
    config = tiny_config(tmp_path, synthetic_dir, tokenizer_dir, strategy="ddp", devices=2)
    command = [sys.executable, "-m", "mmrec_lightning", "fit", "--config", str(config), "--test_after_fit=true"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = Path(tmp_path / "runs").rglob("test_metrics.json")
    results = json.loads(metrics_file.read_text())
    assert set(results) == {"MultimodalRecommender", "Popularity"}
    saved = yaml.safe_load((metrics_file.parent / "config.yaml").read_text())
    assert saved["trainer"]["devices"] == 2


SASREC = {
    "class_path": "mmrec_lightning.models.SASRec",
    "init_args": {
        "embed_dim": 16,
        "sequence_encoder": {"class_path": "mmrec_lightning.towers.SequenceEncoder", "init_args": {"max_length": 6}},
        "top_k": [5, 20],
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["MultimodalRecommender", "SASRec"])
def test_evaluation_with_two_processes_equals_one_process(model, tmp_path, synthetic_dir, tokenizer_dir):
    config = tiny_config(tmp_path, synthetic_dir, tokenizer_dir, max_epochs=1)
    if model == "SASRec":  # a sequential model: its users are read as sequences of their latest items
        config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "model": SASREC}))
    fit = [sys.executable, "-m", "mmrec_lightning", "fit", "--config", str(config)]
    subprocess.run(fit, check=True, capture_output=True, timeout=600)
    (checkpoint,) = Path(tmp_path / "runs").rglob("last.ckpt")
    results = {}
    for devices in (1, 2):
        directory = tmp_path / f"test-{devices}"
        command = [
            sys.executable, "-m", "mmrec_lightning", "test", "--config", str(config), "--ckpt_path", str(checkpoint),
            f"--trainer.devices={devices}", f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
            f"--test_metrics.directory={directory}", "--data.eval_batch_size=7", "--data.item_batch_size=9",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        results[devices] = json.loads((directory / "test_metrics.json").read_text())[model]
    assert results[1]["users"] == results[2]["users"] > 0  # every evaluated user counted exactly once
    for name, value in results[1].items():
        assert results[2][name] == pytest.approx(value, abs=1e-6), name
