import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import cold_start  # noqa: E402
import data_loading  # noqa: E402
import eval_speed  # noqa: E402
import large_catalogue  # noqa: E402
import peak_memory  # noqa: E402
import peers  # noqa: E402
import seeds  # noqa: E402
import train_speed  # noqa: E402

from mmrec_lightning.cli import RecommenderCLI  # noqa: E402
from mmrec_lightning.features import encoder  # noqa: E402
from mmrec_lightning.features.files import save_features  # noqa: E402


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


# --- peers, machine, bfloat16: benchmarks that measure their comparisons on the machine at hand ------------------

STAND_IN = {  # a stand-in for an MMRec checkout: the modules and calls peers.py uses, MMRec's shapes, no model
    "src/main.py": "",
    "src/configs/overall.yaml": "seed: [999]\nepochs: 1000\neval_step: 1\nhyper_parameters: ['seed']\n",
    "src/utils/__init__.py": "",
    "src/common/__init__.py": "",
    "src/models/__init__.py": "",
    "src/utils/configurator.py": """
import os, yaml
class Config(dict):
    def __init__(self, model, dataset, config_dict):
        super().__init__(yaml.safe_load(open(os.path.join(os.getcwd(), 'src/configs/overall.yaml'))))
        self.update(config_dict, model=model, dataset=dataset, device='cpu')
    def __getitem__(self, key):
        return self.get(key)
""",
    "src/utils/dataset.py": """
import os
class RecDataset:
    def __init__(self, config, rows=None):
        if rows is None:
            path = os.path.join(config['data_path'], config['dataset'], config['dataset'] + '.inter')
            rows = [line.split('\\t') for line in open(path).read().split('\\n')[1:] if line]
        self.rows = rows
    def split(self):
        return [RecDataset(None, [r for r in self.rows if int(r[2]) == i]) for i in range(3)]
    def __str__(self):
        self.inter_num = len(self.rows)
        return str(self.inter_num)
""",
    "src/utils/dataloader.py": """
class TrainDataLoader:
    def __init__(self, config, dataset, batch_size, shuffle):
        self.dataset, self.batch_size = dataset, batch_size
    def pretrain_setup(self):
        pass
class EvalDataLoader:
    def __init__(self, config, dataset, additional_dataset, batch_size):
        self.eval_u = sorted({r[0] for r in dataset.rows})
""",
    "src/utils/utils.py": """
import importlib, random
def init_seed(seed):
    random.seed(seed)
def get_model(name):
    return getattr(importlib.import_module('models.' + name.lower()), name)
def get_trainer():
    return importlib.import_module('common.trainer').Trainer
""",
    "src/models/bpr.py": """
import os, torch
class BPR(torch.nn.Module):
    def __init__(self, config, data):
        super().__init__()
        self.user_embedding, self.item_embedding = torch.nn.Embedding(60, 64), torch.nn.Embedding(40, 64)
        self.threads = (torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])
    def pre_epoch_processing(self):
        pass
""",
    "src/common/trainer.py": """
from time import time, sleep
class Trainer:
    def __init__(self, config, model, mg):
        self.model, self.epochs, self.eval_step = model, config['epochs'], min(config['eval_step'], config['epochs'])
    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        return 'epoch %d training [time: %.2fs]' % (epoch_idx, e_time - s_time)
    def fit(self, train_data, valid_data=None, test_data=None, saved=False, verbose=True):
        for epoch_idx in range(self.epochs):
            start = time()
            self.model.pre_epoch_processing()
            sleep(0.01 * (epoch_idx + 1))
            self._generate_train_loss_output(epoch_idx, start, time(), 0.0)
            if (epoch_idx + 1) % self.eval_step == 0:
                raise AssertionError('the benchmark turned validation off')
    def evaluate(self, eval_data, is_test=False, idx=0):
        threads, omp = self.model.threads
        return {'recall@20': 0.5, 'threads': threads, 'omp': int(omp)}
""",
}


@pytest.fixture
def stand_in_checkout(tmp_path):
    for name, text in STAND_IN.items():
        (tmp_path / "MMRec" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "MMRec" / name).write_text(text)
    return tmp_path / "MMRec"


def test_machine_names_the_cpu_the_flags_that_matter_and_the_threads():
    info = peers.machine()
    assert info["cpu"] and info["threads"] == torch.get_num_threads() and info["cores"] >= 1
    assert info["flags"] is None or set(info["flags"]) <= set(peers.FLAGS_THAT_MATTER)
    line = peers.describe(info)
    assert info["cpu"] in line and f"{info['threads']} torch threads" in line


def test_the_peer_runs_the_checkouts_own_trainer_with_our_threads_and_validation_off(
    stand_in_checkout, synthetic_dir, tmp_path
):
    data_path = peers.write_mmrec_data(synthetic_dir, tmp_path / "data")
    inter = (data_path / "baby" / "baby.inter").read_text().splitlines()
    assert inter[0] == "userID\titemID\tx_label" and {line.split("\t")[2] for line in inter[1:]} == {"0", "1", "2"}
    peer = peers.MMRecPeer(stand_in_checkout, data_path, threads=1)
    result = peer.train("BPR", 3, {"epochs": 3})
    assert len(result["epochs_s"]) == len(result["epochs_cpu_s"]) == 3 and result["threads"] == 1
    assert result["epochs_s"][2] > result["epochs_s"][0] >= 0.01  # the times its fit measured, full precision
    vectors = tmp_path / "vectors.npz"
    np.savez(vectors, users=np.zeros((60, 64), np.float32), items=np.zeros((40, 64), np.float32))
    evaluated = peer.evaluate(vectors, 2, {})
    assert len(evaluated["seconds"]) == 2 and evaluated["metrics"] == {"recall@20": 0.5, "threads": 1.0, "omp": 1.0}
    with pytest.raises(SystemExit, match="not a checkout of MMRec"):
        peers.MMRecPeer(tmp_path, data_path, threads=1)
    (stand_in_checkout / "src/models/bpr.py").write_text("raise ImportError('broken checkout')")
    with pytest.raises(peers.PeerError, match="broken checkout"):
        peer.train("BPR", 1, {"epochs": 1})


def test_train_speed_interleaves_ours_and_the_peer_and_judges_medians_against_the_target(
    stand_in_checkout, synthetic_dir, tmp_path, capsys
):
    output = tmp_path / "train_speed.json"
    args = ["--data", str(synthetic_dir), "--mmrec", str(stand_in_checkout), "--epochs", "3", "--rounds", "2"]
    threads = torch.get_num_threads()
    try:
        result = train_speed.main([*args, "--models", "bpr", "--threads", "1", "--output", str(output)])
    finally:
        torch.set_num_threads(threads)
    assert _written(output) == json.loads(json.dumps(result))
    bpr = result["models"]["bpr"]
    assert len(bpr["ours"]["runs"]) == len(bpr["mmrec"]["runs"]) == 2 and bpr["ours"]["epochs_timed"] == 4
    assert bpr["mmrec"]["median_s"] == pytest.approx(0.025, abs=0.02)  # the stand-in's epochs 2 and 3
    assert bpr["speedup"] == pytest.approx(bpr["mmrec"]["median_s"] / bpr["ours"]["median_s"])
    assert bpr["passed"] == (bpr["speedup"] >= 1.5) and bpr["target"] == 1.5
    assert result["machine"]["threads"] == result["threads"] == 1 and result["peer"]["checkout"]
    out = capsys.readouterr().out
    assert "machine:" in out and ("pass" in out or "FAIL" in out)


def test_the_spread_drops_each_runs_warm_up_epoch():
    runs = [
        {"epochs_s": [9.0, 1.0, 3.0], "epochs_cpu_s": [9.0, 2.0, 2.0]},
        {"epochs_s": [9.0, 2.0], "epochs_cpu_s": [9.0, 1.0]},
    ]
    spread = train_speed.spread(runs)
    assert (spread["median_s"], spread["min_s"], spread["max_s"], spread["epochs_timed"]) == (2.0, 1.0, 3.0, 3)


def test_eval_speed_times_ours_against_a_floor_that_computes_the_same_metrics(tmp_path, capsys):
    output = tmp_path / "eval_speed.json"
    args = ["--random-users", "300", "--random-items", "500", "--batch-size", "64", "--floor-blocks", "32", "128"]
    result = eval_speed.main([*args, "--repeats", "2", "--output", str(output)])
    assert _written(output) == json.loads(json.dumps(result))
    assert len(result["ours"]["seconds"]) == 2 and set(result["floor"]["blocks"]) == {"32", "128"}
    assert result["ratio"] == pytest.approx(result["ours"]["median_s"] / result["floor"]["median_s"])
    assert result["passed"] == (result["ratio"] <= eval_speed.TARGET) and result["mmrec"] is None
    assert result["metrics"]["hit@50"] >= result["metrics"]["recall@50"] > 0
    assert "machine:" in capsys.readouterr().out


def test_the_eval_floor_matches_the_harness_with_several_relevant_items_per_user():
    train, test = eval_speed.random_split(90, 120, per_user=7, seed=3)
    test = eval_speed._csr([np.concatenate([test.row(u), train.row(u)[:2]]) for u in range(90)])  # 3 targets
    users, items = torch.randn(90, 8), torch.randn(120, 8)
    ours = eval_speed.ours(users, items, train, test, batch_size=7)
    assert ours["recall@50"] > 0
    for block in (5, 1000):
        eval_speed.check_same(ours, eval_speed.floor(users, items, train, test, block), 1e-6, "floor")


def test_the_large_catalogue_floor_ranks_as_rank_items_does():
    generator = torch.Generator().manual_seed(0)
    users, items = torch.randn(40, 8, generator=generator), torch.randn(6400, 8, generator=generator)
    excluded = torch.randint(6400, (40, 5), generator=generator)
    reference, top = large_catalogue.ours_rank(users, items, excluded, 16, 1000)
    assert not (top.unsqueeze(2) == excluded.unsqueeze(1)).any()
    for setting in ((16, 1000, 0), (32, 3200, 32), (64, 6400, 16)):  # plain, grouped, one chunk
        scores, floor_top = large_catalogue.floor_rank(users, items, excluded, *setting)
        torch.testing.assert_close(scores.sort(1).values, reference.sort(1).values)
        assert set(map(tuple, floor_top.sort(1).values.tolist())) == set(map(tuple, top.sort(1).values.tolist()))


def test_bfloat16_features_fall_back_to_float32_with_a_note_on_a_cpu_without_bfloat16(tmp_path, monkeypatch, caplog):
    path = str(save_features(tmp_path / "f.npy", np.random.default_rng(0).standard_normal((20, 6), np.float32)))
    monkeypatch.setattr(encoder, "cpu_bfloat16_is_fast", lambda: False)
    monkeypatch.setattr(encoder, "_noted", set())
    with caplog.at_level("WARNING", logger=encoder.__name__):
        features = encoder.ItemFeatures(path, dtype="bfloat16")
    assert features.matrix.dtype == torch.float32 and features.requested_dtype == "bfloat16"
    assert "no bfloat16 instructions" in caplog.text and "float32" in caplog.text
    features.to("cpu")
    assert features.matrix.dtype == torch.float32
    monkeypatch.setattr(encoder, "cpu_bfloat16_is_fast", lambda: True)
    assert encoder.ItemFeatures(path, dtype="bfloat16").matrix.dtype == torch.bfloat16
    assert encoder.ItemFeatures(path).matrix.dtype == torch.float32


def test_bfloat16_support_is_read_from_the_cpu_flags_or_measured_once(monkeypatch):
    detect = encoder.cpu_bfloat16_is_fast.__wrapped__
    monkeypatch.setattr(encoder, "_bfloat16_measured_faster", lambda: pytest.fail("flags were readable"))
    for flags, fast in (({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True)):
        monkeypatch.setattr(encoder, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert detect() is fast
    monkeypatch.setattr(encoder, "cpu_flags", lambda: None)
    monkeypatch.setattr(encoder, "_bfloat16_measured_faster", lambda: True)
    assert detect() is True
