"""Shared fixtures: a tiny synthetic dataset, a tokenizer trained on its words, a tiny text-model config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmrec_lightning.data.schema import write_prepared
from mmrec_lightning.data.sources import synthetic as syn

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


def write_synthetic(path: Path, spec: syn.SyntheticSpec = TINY_SPEC) -> Path:
    data = syn.generate(spec)
    return write_prepared(
        path, interactions=data.interactions, items=data.items, users=data.users, metadata=data.metadata
    )


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


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
