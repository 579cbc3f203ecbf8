"""Lightning's ``ModelCheckpoint`` with a ``last.ckpt`` that is always the last epoch."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """As Lightning's, except that ``save_last: true`` rewrites ``last.ckpt`` after every validation.

    Lightning 2.6 rewrites it only when a top-k checkpoint was saved in the same step, so with a monitored
    metric ``last.ckpt`` is the best epoch, not the last one, and a run that dies (out of memory, a node
    failure: nothing a signal handler sees) would resume from the best epoch and repeat the epochs after it.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_skipped(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_skipped(trainer)

    def _save_last_if_skipped(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` for this step, unless Lightning saved a checkpoint (and so ``last.ckpt``) already."""
        # (Lightning's skip test covers a checkpoint already saved at this step)
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
