"""The training CLI: LightningCLI with the data's sizes linked into the model, the config sent to the loggers,
test metrics written to JSON, and an optional test of the best checkpoint next to a popularity baseline."""

from __future__ import annotations

import json

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mmrec_lightning.callbacks import (
    ImageFaultMonitor,
    LoggedSaveConfigCallback,
    NonFiniteGuard,
    SaveOnInterrupt,
    TestMetricsWriter,
    TopKWriter,
    format_table,
)
from mmrec_lightning.data.datamodule import RecDataModule
from mmrec_lightning.models import Popularity, RecommenderModule

REPORTED = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@20", "map@20", "hit@20")


class RecommenderCLI(LightningCLI):
    """``python -m mmrec_lightning {fit,validate,test,predict} --config …``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            RecommenderModule,
            RecDataModule,
            *args,
            subclass_mode_model=True,
            save_config_callback=LoggedSaveConfigCallback,
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for size in ("num_users", "num_items", "num_categories"):
            parser.link_arguments(f"data.{size}", f"model.init_args.{size}", apply_on="instantiate")
        parser.add_lightning_class_args(TestMetricsWriter, "test_metrics")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite_guard")
        parser.add_lightning_class_args(TopKWriter, "predictions")
        parser.add_lightning_class_args(ImageFaultMonitor, "image_faults")
        parser.add_lightning_class_args(SaveOnInterrupt, "save_on_interrupt")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="(fit only) afterwards, test the best checkpoint and a popularity baseline on the test split, "
            "print both and write them to test_metrics.json in the run directory",
        )

    def after_fit(self) -> None:
        if not self.config.fit.test_after_fit:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = "best" if checkpoint is not None and checkpoint.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)
        baseline = Popularity(
            num_users=self.model.num_users,
            num_items=self.model.num_items,
            num_categories=self.model.num_categories,
            top_k=self.model.test_metrics.top_k,
        )
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
