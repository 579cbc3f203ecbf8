"""The hyper-parameter sweep: Optuna over dotted config keys, chosen on validation, tested once."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import wandb
import yaml
from lightning.pytorch.loggers import WandbLogger

from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.tuning import sweep
from mmrec_lightning.tuning.space import config_values, read_space, with_values

SPACE = {
    "model.init_args.optimizer.init_args.lr": {"type": "float", "low": 1.0e-4, "high": 5.0e-2, "log": True},
    "model.init_args.embed_dim": {"type": "categorical", "choices": [4, 16]},
}


def write_files(folder: Path, synthetic_dir: Path) -> Path:
    """A tiny config to tune (two epochs of matrix factorisation on the synthetic data) and its space."""
    config = {
        "trainer": {
            "accelerator": "cpu", "max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [{"class_path": sweep.CHECKPOINT, "init_args": {"monitor": "val/recall@20", "mode": "max"}}],
        },
        "model": {"class_path": "mmrec_lightning.models.MatrixFactorization",
                  "init_args": {"top_k": [5, 20], "optimizer": {"class_path": "torch.optim.Adam"}}},
        "data": {"path": str(synthetic_dir), "batch_size": 256, "history_length": 0},
    }  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return folder


@pytest.fixture
def files(tmp_path, synthetic_dir):
    return write_files(tmp_path, synthetic_dir)


SWEPT = ["--trials", "4", "--seeds", "0", "1", "--top", "2", "--startup_trials", "10"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, synthetic_dir):
    """One tiny sweep (``SWEPT``), run once for the tests of what it leaves: its input files, its folder and the
    commands it ran, in order."""
    files = write_files(tmp_path_factory.mktemp("swept"), synthetic_dir)
    commands = []

    class Recorded(sweep.RecommenderCLI):
        def __init__(self, args, **kwargs):
            commands.append("resolve" if "--print_config" in args else args[0])
            super().__init__(args=args, **kwargs)

    output = files / "sweep"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep, "RecommenderCLI", Recorded)
        sweep.main(["--config", str(files / "config.yaml"), "--space", str(files / "space.yaml"),
                    "--output", str(output), *SWEPT])  # fmt: skip
    return files, output, commands


def plotted(html: str) -> dict:
    """The validation curves a sweep report plots, as it embeds them: panel, then run, then epochs and values."""
    return json.loads(re.search(r"<script type='application/json' id='validation-curves'>(.*?)</script>", html)[1])


def logged(run_dir: Path, metric: str = "val/recall@20") -> dict:
    """A run's validation curve as its CSV logger wrote it."""
    rows = pd.read_csv(run_dir / "metrics.csv")[["epoch", metric]].dropna()
    return {"epoch": rows["epoch"].tolist(), "value": rows[metric].tolist()}


def test_a_sweep_beats_its_worst_trial_and_reads_the_test_split_once_after_choosing(swept):
    _, output, commands = swept
    assert commands[0] == "resolve"  # the config read as fit reads it, includes and defaults resolved
    assert commands[1:-1] == ["fit"] * (len(commands) - 2) and commands[-1] == "test"  # the test split: last, once
    trials, reruns = pd.read_csv(output / "trials.csv"), pd.read_csv(output / "reruns.csv")
    assert len(trials) == 4 and trials["val/recall@20"].max() > trials["val/recall@20"].min()
    top = set(trials.nlargest(2, "val/recall@20")["trial"])
    assert set(reruns["trial"]) == top | {0}  # the top two, and the config as it is (trial 0) whatever its rank
    assert all(sorted(seeds) == [0, 1] for _, seeds in reruns.groupby("trial")["seed"])
    assert len(commands) == 1 + 4 + len(top | {0}) + 1  # four trials, those again under the second seed, one test
    winner = reruns.groupby("trial")["value"].mean().idxmax()
    best = yaml.safe_load((output / "best.yaml").read_text())
    row = trials[trials["trial"] == winner].iloc[0]
    assert best["model"]["init_args"]["embed_dim"] == row["model.init_args.embed_dim"]
    assert best["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(
        row["model.init_args.optimizer.init_args.lr"]
    )
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{output / 'sweep.db'}")
    assert len(study.trials) == 4  # stored: a second run of the same command trains no new trial


def test_the_first_trial_is_the_config_as_it_is(swept):
    files, output, _ = swept
    study = optuna.load_study(study_name=output.name, storage=f"sqlite:///{output / 'sweep.db'}")
    first = min(study.trials, key=lambda trial: trial.number)
    assert first.params["model.init_args.optimizer.init_args.lr"] == 0.001  # Adam's default, in the space's range
    assert {trial.params["model.init_args.optimizer.init_args.lr"] for trial in study.trials[1:]} != {0.001}


def test_a_config_value_outside_the_space_is_left_to_the_sampler():
    space = {"a.lr": {"type": "float", "low": 0.1, "high": 1.0}, "a.k": {"type": "categorical", "choices": [4, 16]},
             "a.missing": {"type": "int", "low": 1, "high": 3}}  # fmt: skip
    assert config_values({"a": {"lr": 0.5, "k": 64}}, space) == {"a.lr": 0.5}
    assert config_values({"a": {"lr": 0.01, "k": 16}}, space) == {"a.k": 16}


def test_the_sweep_report_plots_each_runs_validation_curve_as_its_csv_logger_wrote_it(swept):
    _, output, _ = swept
    html = (output / "report.html").read_text()
    curves = plotted(html)
    reruns = pd.read_csv(output / "reruns.csv")
    winner = reruns.groupby("trial")["value"].mean().idxmax()
    assert sorted(curves["every trial"]) == [f"trial {number}" for number in range(4)]  # one line per trial
    assert sorted(curves["the top trials under each seed"]) == sorted(
        f"trial {row.trial} seed {row.seed}" for row in reruns.itertuples()
    )
    for number in range(4):
        assert curves["every trial"][f"trial {number}"] == logged(output / "trials" / f"trial-{number}")
    assert len(curves["every trial"][f"trial {winner}"]["epoch"]) == 2  # the winner's test left its curve whole
    assert curves["the top trials under each seed"][f"trial {winner} seed 1"] == logged(
        output / "reruns" / f"trial-{winner}-seed-1"
    )
    assert "alt='Validation curves'" in html
    rows = re.findall(r"<tr data-trial='(\d+)'><(td[^>]*)>\d+</td><td[^>]*>(\w+)</td>", html)
    assert sorted(rows) == [(str(n), "td class=best" if n == winner else "td", "complete") for n in range(4)]
    assert (output / "test" / "test_metrics.json").is_file() and "Recall@20" in html  # the winner's test
    assert not list((output / "trials").glob("*/test_metrics.json"))


def test_report_only_writes_the_report_again_without_training(swept, tmp_path, monkeypatch):
    files, output, _ = swept
    copy = shutil.copytree(output, tmp_path / "sweep")  # the study's name is its folder's
    (copy / "report.html").unlink()

    def refused(*args, **kwargs):
        raise AssertionError("--report_only trains or tests nothing")

    monkeypatch.setattr(sweep, "train", refused)
    monkeypatch.setattr(sweep, "test_winner", refused)
    sweep.main(["--config", str(files / "config.yaml"), "--space", str(files / "space.yaml"),
                "--output", str(copy), *SWEPT, "--report_only"])  # fmt: skip
    assert plotted((copy / "report.html").read_text()) == plotted((output / "report.html").read_text())
    with pytest.raises(ConfigurationError, match="no such folder"):
        sweep.main(["--config", str(files / "config.yaml"), "--space", str(files / "space.yaml"),
                    "--output", str(tmp_path / "none"), *SWEPT, "--report_only"])  # fmt: skip


def test_a_pruned_trial_shows_its_curve_up_to_where_it_stopped(tmp_path):
    study = optuna.create_study(study_name="partial", direction="maximize")
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions=lr, value=0.5))
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 0.001}, distributions=lr, state=optuna.trial.TrialState.PRUNED, intermediate_values={0: 0.1}
        )
    )
    for number, values in ((0, [0.3, 0.5, 0.4]), (1, [0.1])):
        sweep.trial_dir(tmp_path, number).mkdir(parents=True)
        epochs = [epoch for epoch in range(len(values)) for _ in range(2)]
        recall = [value for value in values for value in (float("nan"), value)]  # a training row, then validation
        pd.DataFrame({"epoch": epochs, "train/loss": 1.0, "val/recall@20": recall}).to_csv(
            sweep.trial_dir(tmp_path, number) / "metrics.csv", index=False
        )
    html = sweep.write_report(study, tmp_path, "val/recall@20").read_text()
    curves = plotted(html)["every trial"]
    assert curves == {
        "trial 0": {"epoch": [0, 1, 2], "value": [0.3, 0.5, 0.4]},
        "trial 1": {"epoch": [0], "value": [0.1]},
    }
    assert "<tr data-trial='1'><td>1</td><td>pruned</td><td>0.1</td>" in html  # its best value: what the pruner saw
    assert "not chosen yet" in html and "alt='Validation curves'" in html


def test_each_run_of_a_sweep_is_its_own_wandb_run_also_after_a_pruned_one(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # real runs with names (a disabled one is a "dummy"), no network
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    wandb.finish()  # a run another test left open would be the one "started" here
    names = []

    class Fit:
        """Starts the W&B run its config's WandbLogger would, then is pruned (the first) or keeps a checkpoint."""

        def __init__(self, args, **kwargs):
            config = yaml.safe_load(Path(args[args.index("--config") + 1]).read_text())
            names.append(WandbLogger(**config["trainer"]["logger"][1]["init_args"]).experiment.name)
            if len(names) == 1:
                raise optuna.TrialPruned()
            kept = SimpleNamespace(best_model_score=0.5, best_model_path="best.ckpt")
            self.trainer = SimpleNamespace(checkpoint_callback=kept)

    monkeypatch.setattr(sweep, "RecommenderCLI", Fit)
    with pytest.raises(optuna.TrialPruned):
        sweep.train({}, tmp_path / "trial-0", seed=0, wandb_group="study")
    sweep.train({}, tmp_path / "trial-1", seed=0, wandb_group="study")
    assert names == ["trial-0", "trial-1"]  # Lightning leaves a run open: the second would log into the first


@pytest.mark.slow
def test_two_processes_share_one_study_without_repeating_a_trial(files):
    options = ["--config", files / "config.yaml", "--space", files / "space.yaml", "--output", files / "shared"]
    command = [sys.executable, "-m", "mmrec_lightning", "sweep", *map(str, options), "--trials", "4", "--top", "1"]
    workers = [  # each with its own sampler seed, as slurm/sweep.sbatch gives each task
        subprocess.Popen([*command, "--sampler_seed", str(seed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for seed in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=600) == 0, worker.stderr.read().decode()[-2000:]
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{files / 'shared' / 'sweep.db'}")
    numbers = [trial.number for trial in study.trials]
    assert len(numbers) == len(set(numbers)) and 4 <= len(numbers) <= 5  # two may start the last one together
    drawn = [tuple(sorted(trial.params.items())) for trial in study.trials]
    assert len(drawn) == len(set(drawn))  # no parameters drawn twice either
    assert {trial.state for trial in study.trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}


def test_a_config_that_includes_another_is_tuned_as_fit_reads_it(files, tmp_path):
    variant = tmp_path / "variants" / "small.yaml"
    variant.parent.mkdir()
    variant.write_text("config: ../config.yaml\nmodel.init_args.embed_dim: 8\n")
    config = sweep.resolved(variant)
    assert "config" not in config and config["model"]["init_args"]["embed_dim"] == 8
    assert config["trainer"]["max_epochs"] == 2 and config["data"]["batch_size"] == 256  # from the included file


def test_a_space_file_is_checked_and_sets_dotted_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data.batch_size": {"type": "float", "low": 1}}))
    with pytest.raises(ConfigurationError, match=r"data.batch_size: a float range needs high"):
        read_space(bad)
    bad.write_text(yaml.safe_dump({"data.batch_size": {"type": "uniform"}}))
    with pytest.raises(ConfigurationError, match=r"type must be one of"):
        read_space(bad)
    config = {"model": {"init_args": {"dropout": 0.1}}}
    assert with_values(config, {"model.init_args.dropout": 0.3, "data.batch_size": 64}) == {
        "model": {"init_args": {"dropout": 0.3}},
        "data": {"batch_size": 64},
    }
    assert config == {"model": {"init_args": {"dropout": 0.1}}}  # a copy


def test_a_config_without_a_monitored_checkpoint_is_refused():
    with pytest.raises(ConfigurationError, match="a sweep needs a .*ModelCheckpoint with a validation `monitor`"):
        sweep.monitored({"trainer": {"callbacks": []}}, "x.yaml")


def test_a_search_only_worker_runs_trials_and_leaves_the_choice_to_another(files):
    output = files / "worker"
    sweep.main(["--config", str(files / "config.yaml"), "--space", str(files / "space.yaml"), "--trials", "2",
                "--output", str(output), "--search_only"])  # fmt: skip
    assert len(optuna.load_study(study_name="worker", storage=f"sqlite:///{output / 'sweep.db'}").trials) == 2
    assert not (output / "best.yaml").exists() and not (output / "reruns.csv").exists()


@pytest.mark.parametrize("space", sorted(Path(__file__).parents[1].joinpath("configs", "sweep").rglob("*.yaml")))
def test_every_shipped_space_reads_and_gives_configs_that_parse(space, tmp_path, capsys):
    from mmrec_lightning.cli import RecommenderCLI

    ranges = read_space(space)
    config = (
        space.parents[2] / space.parent.name / space.name
    )  # configs/sweep/<set>/<x>.yaml tunes configs/<set>/<x>.yaml
    lowest = {key: spec["choices"][0] if spec["type"] == "categorical" else spec["low"] for key, spec in ranges.items()}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(with_values(yaml.safe_load(config.read_text()), lowest)))
    with pytest.raises(SystemExit) as exit_info:
        RecommenderCLI(args=["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_resumes_and_runs_that_trial_again(files):
    import signal
    import time

    config = yaml.safe_load((files / "config.yaml").read_text())
    config["trainer"]["max_epochs"] = 30  # long enough to be killed inside the first trial
    (files / "config.yaml").write_text(yaml.safe_dump(config))
    options = ["--config", files / "config.yaml", "--space", files / "space.yaml", "--output", files / "killed"]
    command = [sys.executable, "-m", "mmrec_lightning", "sweep", *map(str, options), "--trials", "2", "--top", "1"]
    first = subprocess.Popen([*command, "--heartbeat", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((files / "killed").glob("trials/trial-0/metrics.csv")) and time.monotonic() < deadline:
        time.sleep(0.5)  # training has started
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(5)  # four missed heartbeats: the trial is stale
    config["trainer"]["max_epochs"] = 2
    (files / "config.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([*command, "--heartbeat", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{files / 'killed' / 'sweep.db'}")
    states = [trial.state for trial in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1  # the killed one
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2  # its retry and the second trial
    assert (files / "killed" / "best.yaml").is_file()


def test_each_run_logs_to_its_own_folder_and_with_wandb_to_one_group_per_sweep(tmp_path):
    config = {"trainer": {"callbacks": [{"class_path": sweep.CHECKPOINT, "init_args": {"monitor": "val/recall@20"}}]}}
    run = sweep.run_config(config, tmp_path / "trial-3", seed=2, wandb_group="study")
    assert run["seed_everything"] == 2 and run["data"]["seed"] == 2 and run["test_after_fit"] is False
    assert run["trainer"]["callbacks"][0]["init_args"]["dirpath"] == str(tmp_path / "trial-3" / "checkpoints")
    csv, wandb = run["trainer"]["logger"]
    assert csv["init_args"]["save_dir"] == str(tmp_path / "trial-3")
    assert wandb["init_args"] | {"save_dir": None} == {
        "save_dir": None, "project": "mmrec_lightning-sweeps", "offline": True, "group": "study", "name": "trial-3"
    }  # fmt: skip
    assert len(sweep.run_config(config, tmp_path / "t", seed=0)["trainer"]["logger"]) == 1  # no W&B unless asked
