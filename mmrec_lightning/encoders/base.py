"""The interfaces every item-content encoder implements, so models accept any of them by ``class_path``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch import nn


class FreezableEncoder(nn.Module):
    """An encoder whose weights can be frozen: no gradients, and kept in eval mode (batch-norm statistics
    and dropout stay as pretrained) whatever mode the parent module is put in."""

    frozen: bool = False

    def freeze(self) -> None:
        self.frozen = True
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FreezableEncoder:
        return super().train(mode and not self.frozen)


class ImageEncoder(FreezableEncoder):
    """Maps a batch of preprocessed images ``[B, 3, H, W]`` to vectors ``[B, output_dim]``."""

    output_dim: int

    def transform(self, train: bool) -> Callable[[Image.Image], torch.Tensor]:
        """The PIL -> tensor preprocessing this encoder expects, with augmentation when ``train``."""
        raise NotImplementedError


class TextEncoder(FreezableEncoder):
    """Maps token ids ``[B, T]`` with their attention mask to vectors ``[B, output_dim]``."""

    output_dim: int
    max_length: int

    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer matching this encoder."""
        raise NotImplementedError
