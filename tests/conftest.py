"""Shared fixtures: a tiny synthetic dataset, a tokenizer trained on its words, a tiny text-model config, and
a tiny run config (``tiny_config``) that the CLI tests start from."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import yaml

from mmrec_lightning.data.schema import write_prepared
from mmrec_lightning.data.sources import synthetic as syn
from mmrec_lightning.features.files import feature_file, save_features

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_SPEC = syn.SyntheticSpec(users=60, items=40, seed=1, image_size=32, interactions_per_user=12)
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def tiny_config(tmp_path: Path, data_path: Path, tokenizer_dir: Path, **trainer) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "runs"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs")},
            },
            "callbacks": [
                {
                    "class_path": "mmrec_lightning.model_checkpoint.ModelCheckpoint",
                    "init_args": {"monitor": "val/recall@20", "mode": "max", "save_last": True},
                }
            ],
            **trainer,
        },
        "model": {
            "class_path": "mmrec_lightning.models.MultimodalRecommender",
            "init_args": {
                "image_encoder": {
                    "class_path": "mmrec_lightning.encoders.image.TimmImageEncoder",
                    "init_args": {"model_name": "test_efficientnet", "image_size": 32},
                },
                "text_encoder": {
                    "class_path": "mmrec_lightning.encoders.text.HFTextEncoder",
                    "init_args": {"config": TINY_BERT, "tokenizer": str(tokenizer_dir), "max_length": 16},
                },
                "embed_dim": 16,
                "top_k": [5, 20],
            },
        },
        "data": {"path": str(data_path), "batch_size": 64, "history_length": 5},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_synthetic(path: Path, spec: syn.SyntheticSpec = TINY_SPEC) -> Path:
    data = syn.generate(spec)
    return write_prepared(
        path, interactions=data.interactions, items=data.items, users=data.users, metadata=data.metadata
    )


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="session")
def featured_dir(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny dataset with random precomputed image (12-d) and text (6-d) features."""
    path = tmp_path_factory.mktemp("featured") / "synthetic"
    shutil.copytree(synthetic_dir, path)
    rng = np.random.default_rng(0)
    for modality, width in (("image", 12), ("text", 6)):
        save_features(feature_file(path, modality), rng.standard_normal((TINY_SPEC.items, width), dtype=np.float32))
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WordPiece tokenizer trained on the synthetic vocabulary, saved as a Hugging Face tokenizer folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = [*syn.CATEGORIES, *syn.MATERIALS, *syn.MATERIAL_NOUNS.values(), *syn.STYLES, *syn.FILLERS, *syn.TEMPLATES]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(
        words, trainers.WordPieceTrainer(vocab_size=TINY_BERT["vocab_size"], special_tokens=specials)
    )
    path = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(path)
    return path


class Interrupt(L.Callback):
    """Sends the process a signal after a given global step, as a scheduler's preemption would."""

    def __init__(self, at_step: int, signum: signal.Signals = signal.SIGTERM) -> None:
        self.at_step = at_step
        self.signum = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            # a signal left at its default would kill pytest itself rather than fail this test
            assert signal.getsignal(self.signum) not in (signal.SIG_DFL, signal.SIG_IGN), f"{self.signum!r} unhandled"
            os.kill(os.getpid(), self.signum)


def resumable_fit(model, data, directory: Path, epochs: int, interrupt: Interrupt | None = None, ckpt_path=None):
    """``fit`` with checkpoints at epoch ends and on interrupts (as the CLI saves them); the model, or None when
    ``interrupt`` stopped the run."""
    from mmrec_lightning.callbacks import SaveOnInterrupt
    from mmrec_lightning.connect import connect

    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=directory / "ckpt")  # end of epoch only
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[checkpoints, SaveOnInterrupt(), *([interrupt] if interrupt else [])], default_root_dir=directory,
        deterministic=True,
    )  # fmt: skip
    connect(model, data)
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:  # Lightning's SIGTERMException
        return None
    return model


def fit_steps(model, data, steps: int) -> L.Trainer:
    """``steps`` training steps of ``model`` on the datamodule ``data`` (connected here), without validation,
    logger or checkpoints: the trainer, to save a checkpoint from."""
    from mmrec_lightning.connect import connect

    connect(model, data)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    return trainer


def losses_on_one_batch(model, batch, steps: int, optimizer) -> list[float]:
    """The training loss of ``steps`` optimizer steps on the same batch (a loss that falls is one that learns)."""
    model.train()
    losses = []
    for step in range(steps):
        loss = model.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def preprocessing(tokenizer_dir):
    """How tiny random-init image and text encoders prepare item content (for data-module tests)."""
    from mmrec_lightning.data.contract import ItemPreprocessing
    from mmrec_lightning.encoders.image import TimmImageEncoder
    from mmrec_lightning.encoders.text import HFTextEncoder

    image = TimmImageEncoder("test_efficientnet", image_size=32)
    text = HFTextEncoder(config=TINY_BERT, tokenizer=str(tokenizer_dir), max_length=16)
    return ItemPreprocessing(image.transform(True), image.transform(False), text.tokenizer(), text.max_length)
