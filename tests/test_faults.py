"""Faults injected on tiny data, with the behaviour the user gets."""

import lightning as L
import pytest
import torch
from conftest import TINY_SPEC

from mmrec_lightning.callbacks import NonFiniteGuard, NonFiniteLossError
from mmrec_lightning.data.datamodule import RecDataModule
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.models import MatrixFactorization


class PoisonedMF(MatrixFactorization):
    """Returns a NaN loss on the chosen steps."""

    poisoned_steps: set[int] = set()

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step in self.poisoned_steps else loss


def _fit(synthetic_dir, tmp_path, poisoned, guard):
    torch.manual_seed(0)
    model = PoisonedMF(num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, embed_dim=8, top_k=[5])
    model.poisoned_steps = poisoned
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[guard], default_root_dir=tmp_path, enable_checkpointing=False,
    )  # fmt: skip
    data = RecDataModule(path=str(synthetic_dir), batch_size=64, history_length=0)
    trainer.fit(model, datamodule=data)
    return model


def test_a_non_finite_step_is_skipped_and_counted(synthetic_dir, tmp_path):
    guard = NonFiniteGuard(max_consecutive=3)
    clean = _fit(synthetic_dir, tmp_path, set(), NonFiniteGuard())
    with pytest.warns(UserWarning, match="step skipped"):
        poisoned = _fit(synthetic_dir, tmp_path, {2}, guard)
    assert guard.skipped_this_epoch == 1
    for a, b in zip(clean.parameters(), poisoned.parameters(), strict=True):
        assert torch.isfinite(b).all()
        assert not torch.equal(a, b)  # one update fewer, and no NaN reached the weights


def test_too_many_non_finite_steps_in_a_row_stop_the_run_naming_the_checkpoint(synthetic_dir, tmp_path):
    with pytest.raises(NonFiniteLossError, match="3 steps in a row.*Last good checkpoint"):
        _fit(synthetic_dir, tmp_path, {0, 1, 2, 3}, NonFiniteGuard(max_consecutive=3))


class Interrupt(L.Callback):
    """Kills the run (an exception out of fit) after a given global step, as a preemption would."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise SystemExit("killed")


def _resumable_fit(synthetic_dir, tmp_path, interrupt_at=None, ckpt_path=None):
    L.seed_everything(0)
    model = MatrixFactorization(num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, embed_dim=8, top_k=[5])
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    callbacks = [checkpoints] + ([Interrupt(interrupt_at)] if interrupt_at is not None else [])
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=callbacks, default_root_dir=tmp_path, deterministic=True,
    )  # fmt: skip
    data = RecDataModule(path=str(synthetic_dir), batch_size=64, history_length=3, num_negatives=2)
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        return None
    return model


def test_a_run_killed_mid_epoch_three_times_ends_like_one_that_never_stopped(synthetic_dir, tmp_path):
    reference = _resumable_fit(synthetic_dir, tmp_path / "reference")
    steps_per_epoch = -(-len(PreparedDataset(synthetic_dir).split("train").items) // 64)
    kills = [3, steps_per_epoch + 2, 2 * steps_per_epoch + 4]  # mid-epoch in each of the 3 epochs
    run = tmp_path / "killed"
    last = None
    for step in kills:
        assert _resumable_fit(synthetic_dir, run, interrupt_at=step, ckpt_path=last) is None
        last = str(run / "ckpt" / "last.ckpt")
    resumed = _resumable_fit(synthetic_dir, run, ckpt_path=last)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
