"""``python -m mmrec_lightning sweep --config X.yaml --space S.yaml --trials N [--seeds 0 1 2]``: a hyper-parameter
search with Optuna, chosen on validation, tested once.

Each trial trains ``--config`` with the values its TPE sampler draws from the ``--space`` file (dotted config
keys, see :mod:`mmrec_lightning.tuning.space`) — the first trial with the config's own values — and is scored
by the best value of the metric its ``ModelCheckpoint`` monitors; a median pruner stops trials whose validation
curve falls behind. The study lives in a database (SQLite in the output folder unless ``--storage`` names
another): a killed sweep resumes where it stopped, and several processes or nodes given the same storage share
its trials, up to ``--trials`` in total. Then the ``--top`` trials, and the config's own whatever its rank, are
trained again under each of ``--seeds``, the winner is the one with the best mean validation value (so a sweep
replaces the config only with a better one), and only then is the test split read — once, for the winner.
Written to the output folder: ``best.yaml`` (``fit --config best.yaml`` trains the winner), ``trials.csv`` and
``reruns.csv``, each run's folder (``test/`` for the winner's test) and ``report.html``: every run's validation
curve and the table of trials (the same command with ``--report_only`` writes it again, training nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import lightning as L
import optuna
import pandas as pd
import wandb
import yaml
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from mmrec_lightning.atomic import write_atomically
from mmrec_lightning.callbacks import TestMetricsWriter
from mmrec_lightning.cli import REPORTED, RecommenderCLI
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.report.results import read_test_metrics
from mmrec_lightning.report.sweep import SweepRun, sweep_report
from mmrec_lightning.tuning.space import config_values, read_space, suggest, with_values

CHECKPOINT = "mmrec_lightning.model_checkpoint.ModelCheckpoint"


class ValidationPruning(L.Callback):
    """Reports the monitored validation metric to an Optuna trial after every validation and stops the run
    when the pruner says so. (Optuna's own Lightning callback lives in the separate optuna-integration
    package, which pins Lightning versions; this is all of it that is needed.)"""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        self.trial.report(float(value), step=trainer.current_epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {trainer.current_epoch}: {self.monitor} {float(value):.4f}")


def resolved(path: Path) -> dict:
    """The config at ``path`` as ``fit`` reads it: files it includes (``config: ../x.yaml``) merged in, every
    default written out, so trial configs can live in any folder."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        RecommenderCLI(args=["fit", "--config", str(path), "--print_config"])
    return yaml.safe_load(printed.getvalue())


def monitored(config: dict, path: str) -> tuple[str, str]:
    """The metric and mode the config's ``ModelCheckpoint`` selects by: what the sweep optimises."""
    for callback in config.get("trainer", {}).get("callbacks", []) or []:
        if callback.get("class_path") == CHECKPOINT and "monitor" in callback.get("init_args", {}):
            return callback["init_args"]["monitor"], callback["init_args"].get("mode", "min")
    raise ConfigurationError(f"{path}: a sweep needs a {CHECKPOINT} with a validation `monitor` to optimise")


def run_config(config: dict, run_dir: Path, seed: int, wandb_group: str | None = None) -> dict:
    """``config`` as one run of the sweep: its seed, its folder for logs and checkpoints, no test; with
    ``wandb_group``, also logged to W&B (offline unless W&B is told otherwise) in that group."""
    config = with_values(config, {"seed_everything": seed, "data.seed": seed, "test_after_fit": False})
    trainer = config.setdefault("trainer", {})
    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(run_dir), "name": "", "version": ""},
        }
    ]
    if wandb_group is not None:
        loggers.append(
            {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"save_dir": str(run_dir), "project": "mmrec_lightning-sweeps", "offline": True,
                              "group": wandb_group, "name": run_dir.name},
            }
        )  # fmt: skip
    trainer["logger"] = loggers
    for callback in trainer.get("callbacks", []) or []:
        if callback.get("class_path") == CHECKPOINT:
            callback.setdefault("init_args", {})["dirpath"] = str(run_dir / "checkpoints")
    return config


@contextlib.contextmanager
def own_wandb_run(wandb_group: str | None) -> Iterator[None]:
    """Ends the W&B run that a run's ``WandbLogger`` started, also when the pruner stopped it: Lightning leaves
    it open, and the next run's ``WandbLogger`` would log into it instead of starting its own."""
    try:
        yield
    finally:
        if wandb_group is not None:
            wandb.finish()


def train(
    config: dict, run_dir: Path, seed: int, callbacks: Sequence[L.Callback] = (), wandb_group: str | None = None
) -> tuple[float, str, Path]:
    """Fits one run; its best validation value, best checkpoint and config file. Never reads the test split."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(run_config(config, run_dir, seed, wandb_group)))
    with own_wandb_run(wandb_group):
        cli = RecommenderCLI(args=["fit", "--config", str(path)], trainer_defaults={"callbacks": list(callbacks)})
    checkpoint = cli.trainer.checkpoint_callback
    if checkpoint is None or checkpoint.best_model_score is None:
        raise RuntimeError(f"{run_dir}: the run kept no checkpoint to score")
    return float(checkpoint.best_model_score), checkpoint.best_model_path, path


def group(args: argparse.Namespace, output: Path) -> str | None:
    """The W&B group of the sweep's runs, with ``--wandb``: the study's name."""
    return (args.name or output.name) if args.wandb else None


AS_CONFIGURED = "as_configured"  # marks the trial of the config's own values


def trial_dir(output: Path, number: int) -> Path:
    """The folder of trial ``number``: its config, checkpoints and CSV logger's ``metrics.csv``."""
    return output / "trials" / f"trial-{number}"


def storage_url(args: argparse.Namespace, output: Path) -> str:
    """Where the study lives: ``--storage``, else ``<output>/sweep.db``."""
    return args.storage or f"sqlite:///{output / 'sweep.db'}"


def study(args: argparse.Namespace, direction: str, output: Path, attempts: int = 5) -> optuna.Study:
    storage = storage_url(args, output)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=1)  # a trial whose process died (no heartbeat) runs again

    def load() -> optuna.Study:
        return optuna.create_study(
            study_name=args.name or output.name,
            storage=RDBStorage(
                storage,
                heartbeat_interval=args.heartbeat,
                grace_period=4 * args.heartbeat,
                heartbeat_stale_trial_callback=retry,
            ),
            direction=direction,
            sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials, n_warmup_steps=args.warmup_epochs),
            load_if_exists=True,
        )

    for _ in range(attempts - 1):
        try:
            return load()
        except SQLAlchemyError:  # processes started together race to create the new database's tables
            time.sleep(1 + random.random())
    return load()


def completed(sweep: optuna.Study) -> list:
    return [trial for trial in sweep.get_trials(deepcopy=False) if trial.state == TrialState.COMPLETE]


def search(sweep: optuna.Study, args: argparse.Namespace, base: dict, space: dict, monitor: str, output: Path) -> None:
    """Runs this process's share of the trials (and those queued again after their process died)."""

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        run_dir = trial_dir(output, trial.number)
        pruning = [ValidationPruning(trial, monitor)]
        score, checkpoint, config = train(
            with_values(base, values), run_dir, args.seeds[0], pruning, group(args, output)
        )
        trial.set_user_attr("checkpoint", checkpoint)
        trial.set_user_attr("config", str(config))
        return score

    optuna.storages.fail_stale_trials(sweep)  # a trial of a killed process: failed, and queued again (WAITING)
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    queued = sweep.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if queued or len(sweep.get_trials(deepcopy=False, states=counted)) < args.trials:
        sweep.optimize(
            objective,
            n_trials=args.trials,
            callbacks=[MaxTrialsCallback(args.trials, states=counted)],  # the total, over every process
            show_progress_bar=sys.stderr.isatty(),
        )


def wait_for_others(sweep: optuna.Study, args: argparse.Namespace) -> bool:
    """Waits until no live process runs a trial (a dead one's is failed once its heartbeat is stale); whether a
    trial was queued again and still needs running."""
    while True:
        optuna.storages.fail_stale_trials(sweep)
        if not sweep.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return bool(sweep.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        time.sleep(args.heartbeat)


def rerun(args: argparse.Namespace, base: dict, finished: list, direction: str, output: Path) -> pd.DataFrame:
    """The ``--top`` trials, and the config as it is if it is not among them, trained under each of ``--seeds``:
    their validation values."""
    ranked = sorted(finished, key=lambda trial: trial.value, reverse=direction == "maximize")[: args.top]
    ranked += [t for t in finished if t.user_attrs.get(AS_CONFIGURED) and t.number not in {r.number for r in ranked}]
    rows = []
    for trial in ranked:
        for seed in args.seeds:
            run_dir = output / "reruns" / f"trial-{trial.number}-seed-{seed}"
            if seed == args.seeds[0]:  # the trial itself
                score, checkpoint, config = trial.value, trial.user_attrs["checkpoint"], trial.user_attrs["config"]
            else:
                score, checkpoint, config = train(
                    with_values(base, trial.params), run_dir, seed, (), group(args, output)
                )
            rows.append(
                {"trial": trial.number, "seed": seed, "value": score, "checkpoint": checkpoint, "config": config}
            )
    return pd.DataFrame(rows)


def choose(reruns: pd.DataFrame, direction: str) -> tuple[pd.DataFrame, int]:
    """The mean, spread and count of each re-run trial's validation values over the seeds, and the winner: the
    trial with the best mean."""
    means = reruns.groupby("trial")["value"].agg(["mean", "std", "count"])
    return means, int(means["mean"].idxmax() if direction == "maximize" else means["mean"].idxmin())


def test_winner(config: str, checkpoint: str, run_dir: Path, wandb_group: str | None = None) -> dict[str, float]:
    """The only read of the test split in a sweep: the winner's best checkpoint, under the config it was trained
    with, logged to ``run_dir`` — in the winner's own folder, the test's CSV logger would replace the
    validation curve in its ``metrics.csv``."""
    trained = yaml.safe_load(Path(config).read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(run_config(trained, run_dir, trained["seed_everything"], wandb_group)))
    with own_wandb_run(wandb_group):
        cli = RecommenderCLI(args=["test", "--config", str(path), "--ckpt_path", checkpoint])
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, TestMetricsWriter))
    return json.loads(writer.path.read_text())[type(cli.model).__name__]


def write_report(sweep: optuna.Study, output: Path, monitor: str) -> Path:
    """``<output>/report.html``, from what the sweep stored (the study, ``reruns.csv``, each run's folder and the
    winner's ``test/test_metrics.json``), so it can be written again at any time, also while trials run."""
    maximize = sweep.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = [
        SweepRun(
            trial.number,
            trial_dir(output, trial.number),
            trial.value if trial.value is not None else _best(trial.intermediate_values.values(), maximize),
            trial.state.name.lower(),
            trial.params,
        )
        for trial in sweep.get_trials(deepcopy=False)
    ]
    reruns, winner, results = [], None, {}
    if (output / "reruns.csv").is_file():  # written once the winner is chosen and tested
        table = pd.read_csv(output / "reruns.csv")
        # each run's folder, <output>/<trials or reruns>/<run>, also found in a sweep folder moved since
        reruns = [
            SweepRun(
                int(row.trial), output.joinpath(*Path(row.config).parts[-3:-1]), float(row.value), seed=int(row.seed)
            )
            for row in table.itertuples()
        ]
        winner = choose(table, "maximize" if maximize else "minimize")[1]
        results = read_test_metrics(output / "test" / "test_metrics.json")
    states = pd.Series([run.state for run in trials]).value_counts()
    facts = {
        "study": sweep.study_name,
        "optimised": f"validation {monitor} ({'max' if maximize else 'min'})",
        "trials": ", ".join(f"{count} {state}" for state, count in states.items()) or "none yet",
        "winner": f"trial {winner}" if winner is not None else "not chosen yet",
        "written": datetime.now().isoformat(timespec="seconds"),
    }
    html = sweep_report(facts=facts, metric=monitor, trials=trials, reruns=reruns, winner=winner, results=results)
    path = output / "report.html"
    write_atomically(path, lambda file: file.write(html.encode("utf-8")))  # never half a page
    return path


def _best(values: Iterable[float], maximize: bool) -> float | None:
    """The best of a pruned trial's reported validation values; None when it reported none."""
    values = list(values)
    return (max(values) if maximize else min(values)) if values else None


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mmrec_lightning sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", required=True, help="the config to tune (a fit config with a ModelCheckpoint)")
    parser.add_argument("--space", required=True, help="YAML: dotted config key -> {type, low, high | choices}")
    parser.add_argument("--trials", type=int, required=True, help="trials in total, over every process")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="the top trials are re-run under each")
    parser.add_argument("--top", type=int, default=3, help="how many of the best trials are re-run over --seeds")
    parser.add_argument("--output", help="the sweep's folder (default runs/sweep-<config name>)")
    parser.add_argument("--storage", help="an Optuna RDB URL shared by the processes (default SQLite in --output)")
    parser.add_argument("--name", help="the study's name in the storage (default the output folder's name)")
    parser.add_argument("--startup_trials", type=int, default=5, help="trials the pruner never stops")
    parser.add_argument("--warmup_epochs", type=int, default=5, help="epochs of each trial the pruner never stops")
    parser.add_argument(
        "--sampler_seed",
        type=int,
        default=0,
        help="seed of the TPE sampler; give each process of a shared sweep its own (two with the same seed draw the "
        "same parameters for their first trials)",
    )
    parser.add_argument("--wandb", action="store_true", help="log every run to W&B (offline), one group per sweep")
    parser.add_argument(
        "--heartbeat", type=int, default=30, help="seconds between a trial's heartbeats; 4 missed: its process died"
    )
    parser.add_argument(
        "--search_only", action="store_true", help="run trials only: another process re-runs the top trials and tests"
    )
    parser.add_argument(
        "--report_only", action="store_true", help="write report.html again from the stored sweep, training nothing"
    )
    args = parser.parse_args(argv)
    if args.trials < 1 or args.top < 1 or args.heartbeat < 1:
        raise ConfigurationError("--trials, --top and --heartbeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    config_path = Path(args.config)
    if not config_path.is_file():
        raise ConfigurationError(f"--config {config_path}: no such file")
    base = resolved(config_path)
    space = read_space(args.space)
    monitor, mode = monitored(base, args.config)
    direction = "maximize" if mode == "max" else "minimize"
    output = Path(args.output or f"runs/sweep-{config_path.stem}")
    if args.report_only:
        if not output.is_dir():
            raise ConfigurationError(f"--output {output}: no such folder")
        try:
            stored = optuna.load_study(study_name=args.name or output.name, storage=storage_url(args, output))
        except KeyError as error:
            raise ConfigurationError(f"{output}: no sweep stored ({error})") from error
        print(f"report: {write_report(stored, output, monitor)}")
        return
    output.mkdir(parents=True, exist_ok=True)
    sweep = study(args, direction, output)
    if not sweep.trials:  # a new sweep: its first trial is the config as it is, so only a better trial replaces it
        sweep.enqueue_trial(config_values(base, space), user_attrs={AS_CONFIGURED: True}, skip_if_exists=True)
    search(sweep, args, base, space, monitor, output)
    if args.search_only:
        return
    while wait_for_others(sweep, args):  # a trial of a dead worker is queued again: run it here
        search(sweep, args, base, space, monitor, output)
    finished = completed(sweep)
    if not finished:
        raise ConfigurationError(f"{output}: no trial finished (all pruned or failed); widen --space or add --trials")
    reruns = rerun(args, base, finished, direction, output)
    means, winner = choose(reruns, direction)
    chosen = reruns[reruns["trial"] == winner].iloc[0]
    # after the choice, never before
    tested = test_winner(chosen["config"], chosen["checkpoint"], output / "test", group(args, output))
    params = next(trial.params for trial in finished if trial.number == winner)
    (output / "best.yaml").write_text(yaml.safe_dump(with_values(base, params)))
    trials = pd.DataFrame([{"trial": t.number, monitor: t.value, **t.params} for t in finished])
    trials.to_csv(output / "trials.csv", index=False)
    reruns.to_csv(output / "reruns.csv", index=False)
    print(f"\n{len(finished)} finished trials ({output / 'trials.csv'}); validation {monitor} over seeds {args.seeds}:")
    print(means.to_string())
    reported = ", ".join(f"{name} {tested[name]:.4f}" for name in REPORTED if name in tested)
    print(f"winner: trial {winner} {params}\ntest of its checkpoint {chosen['checkpoint']}: {reported}")
    print(f"fit --config {output / 'best.yaml'} trains it\nreport: {write_report(sweep, output, monitor)}")
