"""Faults injected on tiny data, with the behaviour the user gets."""

import errno
import io
import signal
import subprocess
import sys
import time
import types
import warnings

import lightning as L
import pytest
import torch
import yaml
from conftest import TINY_SPEC, Interrupt, resumable_fit, tiny_config
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from mmrec_lightning.callbacks import NonFiniteGuard, NonFiniteLossError, SaveOnInterrupt
from mmrec_lightning.checkpoint_io import AtomicCheckpointIO
from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.connect import connect
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.datamodule import RecDataModule
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
    connect(model, data)
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


@pytest.mark.parametrize(
    "value, skipped", [(float("nan"), True), (float("inf"), True), (-float("inf"), True), (3e38, False)]
)
def test_the_guard_skips_a_step_for_one_non_finite_gradient_element_only(value, skipped):
    parameters = [torch.nn.Parameter(torch.zeros(1000)), torch.nn.Parameter(torch.zeros(0))]
    parameters[0].grad = torch.full((1000,), 3e38)  # finite, but its sum overflows float32
    parameters[0].grad[637] = value
    parameters[1].grad = torch.zeros(0)
    optimizer = torch.optim.SGD(parameters, lr=0.1)
    guard = NonFiniteGuard()
    trainer = types.SimpleNamespace(global_step=0, checkpoint_callback=None)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        guard.on_before_optimizer_step(trainer, None, optimizer)
    assert (parameters[0].grad is None) == skipped and guard.consecutive == int(skipped)


def test_too_many_non_finite_steps_in_a_row_stop_the_run_naming_the_checkpoint(synthetic_dir, tmp_path):
    with pytest.raises(NonFiniteLossError, match="3 steps in a row.*Last good checkpoint"):
        _fit(synthetic_dir, tmp_path, {0, 1, 2, 3}, NonFiniteGuard(max_consecutive=3))


def _resumable_fit(synthetic_dir, tmp_path, interrupt=None, ckpt_path=None):
    L.seed_everything(0)
    model = MatrixFactorization(num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, embed_dim=8, top_k=[5])
    data = RecDataModule(path=str(synthetic_dir), batch_size=64, history_length=3, num_negatives=2)
    return resumable_fit(model, data, tmp_path, 3, Interrupt(*interrupt) if interrupt else None, ckpt_path)


def test_a_run_terminated_or_preempted_mid_epoch_three_times_ends_like_one_that_never_stopped(synthetic_dir, tmp_path):
    reference = _resumable_fit(synthetic_dir, tmp_path / "reference")
    steps_per_epoch = -(-len(PreparedDataset(synthetic_dir).split("train").items) // 64)
    kills = [  # mid-epoch in each of the 3 epochs
        (3, signal.SIGTERM),
        (steps_per_epoch + 2, signal.SIGUSR1),
        (2 * steps_per_epoch + 4, signal.SIGTERM),
    ]
    run = tmp_path / "killed"
    for number, (step, signum) in enumerate(kills):
        assert _resumable_fit(synthetic_dir, run, (step, signum), ckpt_path="last" if number else None) is None
        saved = torch.load(run / "ckpt" / "last.ckpt", weights_only=True)
        assert saved["global_step"] == step, signum  # saved on the signal
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # our handler lives only as long as fit
    resumed = _resumable_fit(synthetic_dir, run, ckpt_path="last")
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _with_broken_images(synthetic_dir, tmp_path, broken):
    """A copy of the dataset whose stored images for ``broken`` items were truncated after prepare."""
    import shutil

    import pyarrow as pa
    import pyarrow.ipc as ipc

    copy = shutil.copytree(synthetic_dir, tmp_path / "broken")
    items = ipc.open_file(pa.BufferReader((copy / "items.arrow").read_bytes())).read_all()  # not memory-mapped
    images = items.column("image").to_pylist()
    for item in broken:
        images[item] = images[item][:40] if images[item] else None
    table = items.set_column(items.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    with pa.OSFile(str(copy / "items.arrow"), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return copy


def _image_model():
    from mmrec_lightning.encoders.image import TimmImageEncoder
    from mmrec_lightning.models import MultimodalRecommender

    return MultimodalRecommender(
        num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, num_categories=6, embed_dim=8, top_k=[5],
        image_encoder=TimmImageEncoder("test_efficientnet", image_size=32),
    )  # fmt: skip


def test_images_broken_after_prepare_are_counted_and_past_a_fraction_stop_the_run(synthetic_dir, tmp_path):
    from mmrec_lightning.callbacks import ImageFaultError, ImageFaultMonitor

    def fit(path, monitor):
        trainer = L.Trainer(
            max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            callbacks=[monitor], enable_checkpointing=False, default_root_dir=tmp_path,
        )  # fmt: skip
        model, data = _image_model(), RecDataModule(path=str(path), batch_size=64, history_length=2)
        connect(model, data)
        trainer.fit(model, datamodule=data)

    few = ImageFaultMonitor(max_fraction=0.5, min_images=1)
    fit(_with_broken_images(synthetic_dir, tmp_path / "few", [3]), few)  # one item: trains without its image
    assert few.failed >= 1 and 3 in few.examples and few.failed < few.stored
    many = _with_broken_images(synthetic_dir, tmp_path / "many", range(0, TINY_SPEC.items, 2))
    with pytest.raises(ImageFaultError, match=r"could not be read .*e\.g\. items \d+ \(item\d+\)"):
        fit(many, ImageFaultMonitor(max_fraction=0.2, min_images=10))


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16", "1"])
def test_images_in_odd_modes_become_8_bit_rgb(mode):
    import numpy as np
    from PIL import Image

    from mmrec_lightning.data.items import to_rgb

    image = Image.new("RGB", (5, 4), (200, 30, 30)).convert(mode) if mode != "I;16" else Image.new("I;16", (5, 4))
    if mode == "I;16":
        image.putpixel((0, 0), 65535)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (5, 4)
    if mode == "I;16":
        assert np.asarray(rgb)[0, 0].tolist() == [255, 255, 255] and np.asarray(rgb)[1, 1].tolist() == [0, 0, 0]
    if mode == "RGBA":
        transparent = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
        assert np.asarray(to_rgb(transparent))[0, 0].tolist() == [255, 255, 255]  # on white, not black


def test_a_decompression_bomb_and_a_one_pixel_image_are_handled(synthetic_dir, monkeypatch):
    import io

    import numpy as np
    from PIL import Image

    from mmrec_lightning.data.contract import ItemPreprocessing
    from mmrec_lightning.data.items import ItemContent

    content = ItemContent(str(synthetic_dir), ItemPreprocessing(), np.ones(TINY_SPEC.items))
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(tiny, format="PNG")
    assert content._decode(0, tiny.getvalue()).size == (1, 1)
    big = io.BytesIO()
    Image.new("RGB", (64, 64)).save(big, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is now a "bomb"
    assert content._decode(0, big.getvalue()) is None


def test_text_with_control_characters_or_nothing_left_is_cleaned():
    from mmrec_lightning.data.sources.text import clean_text

    assert clean_text("red\x00 lamp\x1b\n\tmodern\ufffe") == "red lamp modern"
    assert not clean_text("\x00\x01  ") and not clean_text(None)  # nothing left: the item has no text


class SeeSigusr1(L.Callback):
    """Records who handles SIGUSR1 once training has started."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.handlers = getattr(signal.getsignal(signal.SIGUSR1), "signal_handlers", None)


def test_under_slurm_sigusr1_is_left_to_lightnings_requeue(synthetic_dir, tmp_path, monkeypatch):
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7"}.items():
        monkeypatch.setenv(name, value)
    seen = SeeSigusr1()
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, callbacks=[SaveOnInterrupt(), seen],
        default_root_dir=tmp_path,
    )  # fmt: skip
    model = MatrixFactorization(num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, embed_dim=8, top_k=[5])
    data = RecDataModule(path=str(synthetic_dir), batch_size=64, history_length=0)
    connect(model, data)
    trainer.fit(model, datamodule=data)
    assert [handler.__name__ for handler in seen.handlers] == ["_slurm_sigusr_handler_fn"]


CHECKPOINT_V1 = {"global_step": 1, "state_dict": {"weight": torch.ones(4096)}}
CHECKPOINT_V2 = {"global_step": 2, "state_dict": {"weight": torch.zeros(4096)}}


def test_a_checkpoint_save_failing_half_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(CHECKPOINT_V1, last)
    real_save = torch.save

    def save_half_then_fail(obj, file) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint(CHECKPOINT_V2, last)
    assert torch.load(last, weights_only=True)["global_step"] == 1
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


KILLED_WHILE_SAVING = """
import io, sys, time
from pathlib import Path

import torch
from mmrec_lightning.checkpoint_io import AtomicCheckpointIO

last, marker = Path(sys.argv[1]), Path(sys.argv[2])
AtomicCheckpointIO().save_checkpoint({"global_step": 1, "state_dict": {"weight": torch.ones(4096)}}, last)
real_save = torch.save

def save_half_then_wait(obj, file):  # the test's hook: half the bytes written, then wait to be killed
    buffer = io.BytesIO()
    real_save(obj, buffer)
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    file.flush()
    marker.touch()
    time.sleep(600)

torch.save = save_half_then_wait
AtomicCheckpointIO().save_checkpoint({"global_step": 2, "state_dict": {"weight": torch.zeros(4096)}}, last)
"""


def test_a_process_killed_while_saving_a_checkpoint_leaves_the_previous_one(tmp_path):
    last, marker = tmp_path / "ckpt" / "last.ckpt", tmp_path / "half-written"
    process = subprocess.Popen([sys.executable, "-c", KILLED_WHILE_SAVING, str(last), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, "the saving process ended before it was killed"
            assert time.monotonic() < deadline, "the saving process never reached its second save"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert torch.load(last, weights_only=True)["global_step"] == 1
    (partial,) = [path for path in last.parent.iterdir() if path != last]
    assert partial.name.startswith(".last.ckpt.") and partial.suffix == ".tmp"  # never taken for a checkpoint


def test_a_remote_checkpoint_is_saved_by_lightning(tmp_path):
    url = "memory://runs/last.ckpt"
    AtomicCheckpointIO().save_checkpoint(CHECKPOINT_V1, url)
    assert AtomicCheckpointIO().load_checkpoint(url, weights_only=True)["global_step"] == 1


def test_the_cli_saves_checkpoints_atomically_unless_the_config_chooses_how(tmp_path, synthetic_dir):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {"accelerator": "cpu", "logger": False},
                "model": {"class_path": "mmrec_lightning.models.MatrixFactorization", "init_args": {"top_k": [5]}},
                "data": {"path": str(synthetic_dir)},
            }
        )
    )
    cli = RecommenderCLI(args=["--config", str(config)], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    chosen = "--trainer.plugins=lightning.pytorch.plugins.io.AsyncCheckpointIO"
    cli = RecommenderCLI(args=["--config", str(config), chosen], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is AsyncCheckpointIO


def test_last_ckpt_holds_the_last_epoch_when_the_best_was_earlier(synthetic_dir, tokenizer_dir, tmp_path):
    config = yaml.safe_load(tiny_config(tmp_path, synthetic_dir, tokenizer_dir, max_epochs=3).read_text())
    config["model"] = {"class_path": "mmrec_lightning.models.MatrixFactorization", "init_args": {"top_k": [5]}}
    checkpoint = config["trainer"]["callbacks"][0]["init_args"]
    checkpoint.update(monitor="epoch", mode="min", dirpath=str(tmp_path / "checkpoints"))  # best: epoch 0
    path = tmp_path / "id.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = RecommenderCLI(args=["fit", "--config", str(path)])
    assert torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)["epoch"] == 0
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == cli.trainer.global_step
