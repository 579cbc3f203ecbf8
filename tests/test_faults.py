"""Faults injected on tiny data, with the behaviour the user gets."""

import os
import signal

import lightning as L
import pytest
import torch
from conftest import TINY_SPEC

from mmrec_lightning.callbacks import NonFiniteGuard, NonFiniteLossError, SaveOnInterrupt
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
    """Sends the process SIGTERM after a given global step, as a scheduler's preemption would."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGTERM)


def _resumable_fit(synthetic_dir, tmp_path, interrupt_at=None, ckpt_path=None):
    L.seed_everything(0)
    model = MatrixFactorization(num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, embed_dim=8, top_k=[5])
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt")  # end of epoch only
    callbacks = [checkpoints, SaveOnInterrupt()] + ([Interrupt(interrupt_at)] if interrupt_at is not None else [])
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=callbacks, default_root_dir=tmp_path, deterministic=True,
    )  # fmt: skip
    data = RecDataModule(path=str(synthetic_dir), batch_size=64, history_length=3, num_negatives=2)
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:  # Lightning's SIGTERMException
        return None
    return model


def test_a_run_terminated_mid_epoch_three_times_ends_like_one_that_never_stopped(synthetic_dir, tmp_path):
    reference = _resumable_fit(synthetic_dir, tmp_path / "reference")
    steps_per_epoch = -(-len(PreparedDataset(synthetic_dir).split("train").items) // 64)
    kills = [3, steps_per_epoch + 2, 2 * steps_per_epoch + 4]  # mid-epoch in each of the 3 epochs
    run = tmp_path / "killed"
    for number, step in enumerate(kills):
        assert _resumable_fit(synthetic_dir, run, interrupt_at=step, ckpt_path="last" if number else None) is None
        assert (run / "ckpt" / "last.ckpt").is_file()  # saved on SIGTERM
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
        trainer.fit(_image_model(), datamodule=RecDataModule(path=str(path), batch_size=64, history_length=2))

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

    from mmrec_lightning.data.items import ItemContent, ItemPreprocessing

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
