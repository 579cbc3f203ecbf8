"""The training CLI: LightningCLI with the data's sizes linked into the model, model and data connected
(:func:`mmrec_lightning.connect.connect`), the config sent to the loggers, and every test written to JSON and
printed next to a popularity baseline tested on the same data (after `test`, and after `fit --test_after_fit`,
which tests the best checkpoint)."""

from __future__ import annotations

import json
import os
import pickle
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from mmrec_lightning.callbacks import (
    ImageFaultMonitor,
    LoggedSaveConfigCallback,
    NonFiniteGuard,
    SaveOnInterrupt,
    TestMetricsWriter,
    TopKWriter,
    format_table,
)
from mmrec_lightning.checkpoint_io import use_atomic_checkpoints
from mmrec_lightning.config_errors import explain_checkpoint_mismatch, explain_parse_error
from mmrec_lightning.connect import connect
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.export.exporter import VectorExporter
from mmrec_lightning.models import Popularity, RecommenderModule
from mmrec_lightning.report import ReportWriter

REPORTED = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@20", "map@20", "hit@20")


EXPECTED_WARNINGS = (
    # the training losses are then logged once an epoch instead (RecommenderModule.on_train_start)
    r"The number of training batches .* is smaller than the logging interval",
    # frozen encoders stay in eval mode on purpose: batch-norm statistics and dropout as pretrained
    r"Found .* module\(s\) in eval mode at the start of training",
    # LightGCN's and FREEDOM's sparse graphs are built here from indices checked against the catalogue
    r"Sparse invariant checks are implicitly disabled",
)
"""Warnings every run of this package would print about what it does on purpose (docs/reliability.md)."""


def intra_op_threads(requested: int | None, processes: int, workers: int) -> int | None:
    """The intra-op threads to use: ``requested``, else — unless ``OMP_NUM_THREADS`` decides — this process's
    share of the cores it may use, less its data-loader workers. torch's default (every physical core) makes
    the workers and the ``processes`` of a node compete for the same cores."""
    if requested is not None:
        if requested < 1:
            raise ConfigurationError(f"--num_threads must be at least 1, got {requested}")
        return requested
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(processes, 1) - workers)


def require_checkpoint(path: str) -> None:
    """A one-line :class:`ConfigurationError` unless ``path`` holds a Lightning checkpoint (read tensors only)."""
    fix = "pass a .ckpt written by fit (its run's checkpoints folder)"
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:  # empty, truncated, foreign
        what = (
            "is empty" if Path(path).stat().st_size == 0 else f"cannot be read by torch.load ({type(error).__name__})"
        )
        raise ConfigurationError(
            f"{path} {what}: not a whole checkpoint (truncated, or another kind of file); {fix}"
        ) from None
    if not isinstance(content, dict) or not {"state_dict", "pytorch-lightning_version"} <= content.keys():
        raise ConfigurationError(f"{path}: holds no Lightning checkpoint (no state_dict and Lightning version); {fix}")


class RecommenderCLI(LightningCLI):
    """``python -m mmrec_lightning {fit,validate,test,predict} --config …``.

    A config the parser refuses, or a checkpoint that does not fit the configured model, raises a
    :class:`ConfigurationError` whose message is one line naming the key (or file) and the fix. Checkpoints are
    written atomically (:mod:`mmrec_lightning.checkpoint_io`) unless the config chooses its own ``CheckpointIO``.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        for message in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        # raise jsonargparse's errors instead of printing usage and exiting, so that parse_arguments can explain them
        kwargs["parser_kwargs"] = {"exit_on_error": False, **kwargs.get("parser_kwargs", {})}
        try:
            super().__init__(
                RecommenderModule,
                RecDataModule,
                *args,
                subclass_mode_model=True,
                save_config_callback=LoggedSaveConfigCallback,
                auto_configure_optimizers=False,
                **kwargs,
            )
        except RuntimeError as error:
            trainer = getattr(self, "trainer", None)  # absent when the error came before the trainer was built
            problem = explain_checkpoint_mismatch(error, trainer.ckpt_path if trainer is not None else None)
            if problem is None:
                raise
            raise ConfigurationError(problem) from error

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """As Lightning's, but a refused config raises a one-line :class:`ConfigurationError`."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            argv = sys.argv[1:] if args is None else list(args) if isinstance(args, list) else []
            subcommand = next((arg for arg in argv if arg in self.subcommands()), None)
            subparsers = getattr(self, "_subcommand_parsers", {})  # Lightning's; absent when run=False
            raise ConfigurationError(explain_parse_error(error, argv, subparsers.get(subcommand, parser))) from error

    def _parse_ckpt_path(self) -> None:
        """As Lightning's (the model's hyper-parameters are read from ``--ckpt_path``), but hyper-parameters the
        parser refuses raise a one-line :class:`ConfigurationError`, as does a file that is no checkpoint."""
        checkpoint = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if checkpoint and Path(checkpoint).is_file():
            require_checkpoint(checkpoint)
        try:
            super()._parse_ckpt_path()
        except ArgumentError as error:
            checkpoint = self.config[self.config.subcommand].ckpt_path
            problem = explain_parse_error(error, [self.config.subcommand], self.parser)
            raise ConfigurationError(
                f"{checkpoint}: the model hyper-parameters saved in it are refused: {problem}"
            ) from error

    def instantiate_classes(self) -> None:
        """As Lightning's, then the model and the data connected: each gets what it needs from the other."""
        super().instantiate_classes()
        connect(self.model, self.datamodule)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """As Lightning's, with checkpoints written atomically and the process's intra-op threads chosen."""
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer.strategy)
        workers = getattr(getattr(self.datamodule, "hparams", {}), "num_workers", 0) or 0
        threads = intra_op_threads(self._get(self.config, "num_threads"), trainer.num_devices, workers)
        if threads is not None:
            torch.set_num_threads(threads)
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for size in ("num_users", "num_items", "num_categories"):
            parser.link_arguments(f"data.{size}", f"model.init_args.{size}", apply_on="instantiate")
        parser.add_lightning_class_args(TestMetricsWriter, "test_metrics")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite_guard")
        parser.add_lightning_class_args(TopKWriter, "predictions")
        parser.add_lightning_class_args(ImageFaultMonitor, "image_faults")
        parser.add_lightning_class_args(SaveOnInterrupt, "save_on_interrupt")
        parser.add_lightning_class_args(ReportWriter, "report")  # after test_metrics: reads its file
        parser.add_lightning_class_args(VectorExporter, "export")  # on with `python -m mmrec_lightning export`
        parser.add_argument(
            "--float32_matmul_precision",
            type=Literal["highest", "high", "medium"] | None,
            default=None,
            help="torch.set_float32_matmul_precision (default: leave it as it is, 'highest' unless set): 'high' "
            "lets NVIDIA GPUs multiply float32 matrices in TF32, 'medium' in bfloat16 (also CPUs with AMX, e.g. "
            "Xeon Sapphire Rapids), with float32 accumulation: several times faster products whose inputs are "
            "rounded to 10 or 8 bits of mantissa",
        )
        parser.add_argument(
            "--num_threads",
            type=int | None,
            default=None,
            help="torch's intra-op threads per process (default: the cores this process may use, shared among the "
            "node's processes, less one per data-loader worker, which needs a core of its own; OMP_NUM_THREADS, "
            "when set, is left to decide)",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="(fit only) afterwards, test the best checkpoint and a popularity baseline on the test split, "
            "print both and write them to test_metrics.json in the run directory",
        )

    def before_instantiate_classes(self) -> None:
        precision = self._get(self.config, "float32_matmul_precision")
        if precision is not None:
            torch.set_float32_matmul_precision(precision)

    def after_fit(self) -> None:
        if not self.config.fit.test_after_fit:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = "best" if checkpoint is not None and checkpoint.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)
        self._test_popularity()

    def after_test(self) -> None:
        if not isinstance(self.model, Popularity):
            self._test_popularity()

    def _test_popularity(self) -> None:
        """After the model's test: the popularity baseline tested on the same data, logged under its own keys,
        written next to the model's row of test_metrics.json, and both printed. (``trainer.callback_metrics``
        then holds the baseline's; the model's metrics are in the file.)"""
        baseline = Popularity(
            num_users=self.model.num_users,
            num_items=self.model.num_items,
            num_categories=self.model.num_categories,
            top_k=self.model.test_metrics.top_k,
        )
        connect(baseline, self.datamodule)
        loggers, self.trainer.loggers = self.trainer.loggers, []  # the baseline's metrics go under their own keys
        try:
            self.trainer.test(baseline, datamodule=self.datamodule, verbose=False)
        finally:
            self.trainer.loggers = loggers
        writer = next(cb for cb in self.trainer.callbacks if isinstance(cb, TestMetricsWriter))
        if self.trainer.is_global_zero and writer.path is not None:
            results = json.loads(writer.path.read_text())
            for logger in loggers:
                logger.log_metrics({f"baseline/popularity/test/{k}": v for k, v in results["Popularity"].items()})
            print(f"\nTest metrics ({writer.path}):\n" + format_table(results, list(REPORTED)) + "\n")


def main(args: list[str]) -> None:
    """``python -m mmrec_lightning {fit,validate,test,predict,export} …``: the CLI run on ``args``, the command
    line after the package name (``export`` arrives as ``predict … --export.enabled=true``)."""
    with warnings.catch_warnings():
        # the arguments are the command line itself, handed over by `__main__`; Lightning warns about both being set
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within")
        RecommenderCLI(args=args)
