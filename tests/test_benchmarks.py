import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import cold_start  # noqa: E402
import data_loading  # noqa: E402
import large_catalogue  # noqa: E402
import peak_memory  # noqa: E402
import seeds  # noqa: E402

from mmrec_lightning.cli import RecommenderCLI  # noqa: E402


def test_seed_summary_is_mean_and_sample_std_per_model_and_metric():
    runs = [{"M": {"recall@20": 0.1}}, {"M": {"recall@20": 0.3}}]
    summary = seeds.summarise(runs)
    assert summary["M"]["recall@20"]["mean"] == pytest.approx(0.2)
    assert summary["M"]["recall@20"]["std"] == pytest.approx(0.1414213, rel=1e-5)
    assert "0.2000 ± 0.1414" in seeds.table(summary)


def _summary(**models: tuple[float, float, float]) -> dict:
    names = ("warm/recall@20", "warm/ndcg@20", "cold/recall@20")
    return {
        name: {metric: {"mean": value, "std": 0.0} for metric, value in zip(names, values, strict=True)}
        for name, values in models.items()
    }


def test_cold_start_checks_need_a_wide_cold_margin_and_no_warm_loss_for_each_fused_model():
    ids = (0.30, 0.15, 0.02)
    checks = cold_start.checks(
        _summary(**{"ID only": ids, "fused (attention)": (0.31, 0.16, 0.20), "fused (gated)": (0.30, 0.14, 0.06)})
    )
    assert checks == {
        "fused (attention), cold: Recall@20 >= ID only + 0.05 and >= 3x": True,
        "fused (attention), warm: recall@20 >= ID only": True,
        "fused (attention), warm: ndcg@20 >= ID only": True,
        "fused (gated), cold: Recall@20 >= ID only + 0.05 and >= 3x": False,  # +0.04 only
        "fused (gated), warm: recall@20 >= ID only": True,
        "fused (gated), warm: ndcg@20 >= ID only": False,
    }
    assert cold_start.checks(_summary(**{"BPR-MF": ids})) == {}


def _written(path):
    return json.loads(path.read_text())


def test_data_loading_times_three_arms_on_the_same_batches_and_writes_the_ratios(tmp_path):
    output = tmp_path / "data_loading.json"
    args = ["--items", "24", "--source-size", "64", "--size", "32", "--batch-size", "8", "--passes", "2"]
    result = data_loading.main([*args, "--output", str(output)])
    assert _written(output) == json.loads(json.dumps(result))
    assert result["turns"] == 6  # 3 batches, twice
    assert set(result["items_per_s"]) == {"ours", "before", "floor"}
    assert all(rate > 0 for rate in result["items_per_s"].values())
    assert result["ratio"] > 0 and result["before_ratio"] > 0 and result["speedup"] > 0
    assert result["load_average"] >= 0


def test_paired_ratio_is_the_median_of_the_ratios_within_turns():
    # the third turn hit a burst of load for the numerator only: it does not move the median
    assert data_loading.paired_ratio([1.0, 2.0, 50.0], [2.0, 4.0, 2.0]) == pytest.approx(2.0)


def test_large_catalogue_reports_each_chunk_configuration(tmp_path):
    output = tmp_path / "large_catalogue.json"
    args = ["--items", "4000", "--users", "300", "--ranked-users", "100", "--user-chunk", "32", "--item-chunk", "1024"]
    result = large_catalogue.main([*args, "--output", str(output)])
    assert _written(output) == json.loads(json.dumps(result))
    assert [(r["user_chunk"], r["item_chunk"], r["catalogue"]) for r in result["runs"]] == [
        (16, 512, 4000),
        (32, 1024, 4000),
        (32, 1024, 1000),
    ]
    for run in result["runs"]:
        assert run["projected_seconds"] == pytest.approx(run["seconds"] * 3)  # 300 users, 100 ranked
        block = run["user_chunk"] * min(run["item_chunk"], run["catalogue"])  # float32 scores of one chunk
        assert run["score_block_mb"] == pytest.approx(block * 4 / 2**20)
        assert run["peak_growth_mb"] >= 0


def test_peak_memory_reads_the_childs_own_high_water_mark():
    allocate = [sys.executable, "-c", "block = bytearray(300 * 2**20); block[::4096] = b'x' * len(block[::4096])"]
    large, _ = peak_memory.peak_rss(allocate)
    small, _ = peak_memory.peak_rss([sys.executable, "-c", "pass"])
    assert large >= 300 > small  # the second child's peak, not the largest seen so far
    with pytest.raises(RuntimeError, match="failed"):
        peak_memory.peak_rss([sys.executable, "-c", "raise SystemExit(3)"])


def test_peak_memory_config_is_the_demo_model_on_the_given_data_and_parses(tmp_path):
    config = peak_memory.training_config(tmp_path / "data", tmp_path / "runs", steps=7)
    assert config["model"]["class_path"] == "mmrec_lightning.models.MultimodalRecommender"
    assert config["trainer"]["max_steps"] == config["trainer"]["val_check_interval"] == 7
    assert config["data"]["path"] == str(tmp_path / "data") and config["data"]["num_workers"] == 0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        RecommenderCLI(args=["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)


@pytest.mark.slow
def test_peak_memory_measures_two_data_sizes(tmp_path):
    output = tmp_path / "peak_memory.json"
    result = peak_memory.main(
        ["--users", "100", "--items", "60", "--scale", "2", "--steps", "2", "--output", str(output)]
    )
    assert _written(output) == json.loads(json.dumps(result))
    small, large = result["runs"]
    assert (large["users"], large["items"]) == (2 * small["users"], 2 * small["items"])
    assert result["ratio"] == pytest.approx(large["peak_rss_mb"] / small["peak_rss_mb"])
    assert large["state_mb"] > small["state_mb"] > 0
