"""Multi-process runs on CPU (gloo): the DDP paths a GPU cluster takes, without a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_cli import tiny_config


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
