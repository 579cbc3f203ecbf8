"""Image encoders from timm: any model name, hub or local pretrained weights, timm's own preprocessing."""

from __future__ import annotations

import difflib
import logging
import math
import re

import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from timm.data.transforms import MaybePILToTensor, RandomResizedCropAndInterpolation
from timm.models import group_parameters
from torchvision import transforms
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mmrec_lightning.data.contract import ImageTransform
from mmrec_lightning.encoders.adapters import Adapter
from mmrec_lightning.encoders.base import ImageEncoder
from mmrec_lightning.encoders.weights import is_restoring_checkpoint, resolve_location
from mmrec_lightning.errors import ConfigurationError

log = logging.getLogger(__name__)

CROP_RATIOS = (3 / 4, 4 / 3)
"""The aspect ratios of timm's random-resized crop (its default, which ``transform`` keeps)."""


class _RandomResizedCrop:
    """timm's random-resized crop (the same random draws, from Python's ``random``) applied to a uint8
    tensor."""

    def __init__(self, crop: RandomResizedCropAndInterpolation) -> None:
        self.crop = crop

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        crop = self.crop
        top, left, height, width = crop.get_params(image, crop.scale, crop.ratio)
        return F.resized_crop(image, top, left, height, width, list(crop.size), crop.interpolation, antialias=True)


def on_uint8_tensors(pil_transform: transforms.Compose) -> transforms.Compose:
    """timm's PIL transform (built with ``use_prefetcher``) run on the image as a uint8 tensor instead.

    Resizing is what costs: torchvision resizes uint8 tensors with native antialiased kernels, within a grey
    level of PIL's and about twice as fast on one core; the steps that do not resize (crops, flips)
    take tensors as they are.
    """
    steps: list = [v2.PILToTensor()]
    for step in pil_transform.transforms:
        if isinstance(step, RandomResizedCropAndInterpolation):
            steps.append(_RandomResizedCrop(step))
        elif isinstance(step, transforms.Resize):
            steps.append(v2.Resize(step.size, step.interpolation, step.max_size, antialias=True))
        elif not isinstance(step, MaybePILToTensor):  # already a tensor
            steps.append(step)
    return transforms.Compose(steps)


def _unwrap_state_dict(checkpoint: object, path: str) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ConfigurationError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def load_timm_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Load a local checkpoint file into a timm backbone (classifier already removed).

    Tensors are matched by name; a checkpoint written by another implementation of the same architecture
    (other names, same tensors in the same order, e.g. the EfficientNet-Lite0 of the ``weights`` extra) is
    matched by position, after checking every shape. Extra trailing tensors (a classifier) are ignored.
    """
    state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    target = model.state_dict()
    if set(target) <= set(state):
        model.load_state_dict({k: state[k] for k in target})
        return
    ordered = list(state.items())
    if len(ordered) >= len(target) and all(
        value.shape == target_value.shape for (_, value), target_value in zip(ordered, target.values(), strict=False)
    ):
        log.info("%s: tensor names differ from timm's; matched %d tensors by position", path, len(target))
        model.load_state_dict({name: value for name, (_, value) in zip(target, ordered, strict=False)})
        return
    missing = sorted(set(target) - set(state))[:5]
    raise ConfigurationError(
        f"{path} does not fit this timm model: missing {missing} (and tensors differ in order or shape); "
        "check that the checkpoint is for the same architecture"
    )


def timm_blocks(model: torch.nn.Module) -> tuple[list[list[torch.nn.Parameter]], list[torch.nn.Parameter]]:
    """The parameters of each block of a timm model, in order, and of what follows the last block.

    Blocks are timm's coarse layer groups (``model.group_matcher(coarse=True)``): the blocks of a ViT,
    ResNet's layer1–4, the stages of EfficientNet or ConvNeXt. A final norm that timm groups with the last
    block (ViT's ``norm``, EfficientNet's ``conv_head``/``bn2``) stays in it; the stem is in no block;
    parameters that match no group (ConvNeXt's ``head.norm``, an attention-pooling head) follow the blocks.
    """
    matcher = model.group_matcher(coarse=True)
    if not isinstance(matcher, dict):
        raise ConfigurationError(f"train_blocks: {type(model).__name__} does not name its layer groups to timm")

    def patterns(spec: str | list | None) -> list[re.Pattern]:
        return [re.compile(spec)] if isinstance(spec, str) else [re.compile(s[0]) for s in spec or ()]

    stem = patterns(matcher.get("stem"))
    grouped = [pattern for spec in matcher.values() for pattern in patterns(spec)]
    parameters = dict(model.named_parameters())
    blocks, tail = [], []
    for names in group_parameters(model, matcher).values():
        block = []
        for name in names:
            if not any(p.match(name) for p in grouped):
                tail.append(parameters[name])
            elif not any(p.match(name) for p in stem):
                block.append(parameters[name])
        if block:
            blocks.append(block)
    return blocks, tail


class TimmImageEncoder(ImageEncoder):
    """A timm backbone (classifier removed) with the preprocessing timm resolves for it.

    The transform is timm's, run on uint8 tensors (see ``on_uint8_tensors``), and hands over uint8 pixels;
    ``forward`` normalises them with the model's mean and std on whatever device the batch is on, as timm's
    own prefetching loader does.

    Args:
        model_name: any timm model name, e.g. ``resnet50``, ``vit_small_patch16_224``, ``efficientnet_lite0``.
        pretrained: ``False`` for random initialisation, ``True`` for timm's pretrained weights from the
            hub, or the path of a local checkpoint file (``package:<module>/<file>`` for one shipped in an
            installed package).
        freeze: keep the backbone's weights fixed (the same as ``train_blocks: 0``).
        train_blocks: how much of the backbone trains: none for all of it, 0 for none, N for only its
            last N blocks (timm's coarse layer groups: ViT blocks, ResNet layers, CNN stages) and what
            follows them (the final norm). Frozen parts stay in eval mode.
        image_size: input side in pixels; default the model's own.
        crop_pct: fraction of the image kept by the evaluation centre crop (1.0 keeps the whole image).
        train_crop_scale: area range of the training-time random resized crop.
        hflip: probability of a horizontal flip at training time.
        grad_checkpointing: trade compute for memory in the backbone where timm supports it.
        adapter: parameter-efficient tuning (``class_path`` of an ``Adapter``: ``LoRA``, ``IA3``): only its weights
            train, not with ``freeze`` or ``train_blocks``. With ``pretrained`` weights, checkpoints then hold the
            adapter and not those weights, which are read again to restore them.
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        pretrained: bool | str = False,
        freeze: bool = False,
        train_blocks: int | None = None,
        image_size: int | None = None,
        crop_pct: float = 1.0,
        train_crop_scale: tuple[float, float] = (0.6, 1.0),
        hflip: float = 0.5,
        grad_checkpointing: bool = False,
        adapter: Adapter | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
            raise ConfigurationError(
                f"unknown timm model {model_name!r}" + (f"; did you mean {close}?" if close else "")
            )
        if adapter is not None and (freeze or train_blocks is not None):
            raise ConfigurationError("image encoder: an adapter trains its own weights only; drop freeze, train_blocks")
        load_pretrained = adapter is not None or not is_restoring_checkpoint()  # an adapter's checkpoint lacks them
        from_hub = pretrained is True and load_pretrained
        try:
            self.model = timm.create_model(model_name, pretrained=from_hub, num_classes=0)
        except Exception as error:
            if not from_hub:
                raise
            raise ConfigurationError(
                f"could not fetch pretrained weights for timm model {model_name!r} ({error}); offline, pass "
                "a local checkpoint path as `pretrained`"
            ) from error
        if isinstance(pretrained, str) and load_pretrained:
            load_timm_checkpoint(self.model, resolve_location(pretrained))
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.output_dim = int(self.model.num_features)
        self.data_config = resolve_model_data_config(self.model)
        if image_size is not None:
            self.data_config["input_size"] = (3, image_size, image_size)
        self.data_config["crop_pct"] = crop_pct
        # (x / 255 - mean) / std as (x - 255 mean) / (255 std); not persistent: checkpoints stay as they were
        for name in ("mean", "std"):
            value = torch.tensor(self.data_config[name], dtype=torch.float32).view(1, -1, 1, 1) * 255
            self.register_buffer(f"pixel_{name}", value, persistent=False)
        self.train_crop_scale = tuple(train_crop_scale)
        self.hflip = hflip
        if adapter is not None:
            source = f"timm {model_name!r}, pretrained={pretrained!r}" if pretrained else None
            self.use_adapter(adapter, "image encoder", source)
        if freeze and train_blocks:
            raise ConfigurationError(f"image encoder: freeze=True contradicts train_blocks={train_blocks}")
        if freeze or train_blocks == 0:
            self.freeze()
        elif train_blocks is not None:
            blocks, tail = timm_blocks(self.model)
            self.train_last_blocks(blocks, train_blocks, tail)

    def transform(self, train: bool) -> ImageTransform:
        side = max(self.data_config["input_size"][1:])
        fill = tuple(round(255 * m) for m in self.data_config["mean"])
        if not train:
            # timm's evaluation transform resizes the shorter side to side / crop_pct, then centre-crops
            evaluation = create_transform(**self.data_config, is_training=False, use_prefetcher=True)
            return ImageTransform(on_uint8_tensors(evaluation), math.ceil(side / self.data_config["crop_pct"]), fill)
        training = create_transform(
            **self.data_config,
            is_training=True,
            scale=self.train_crop_scale,
            ratio=CROP_RATIOS,
            hflip=self.hflip,
            color_jitter=None,
            auto_augment=None,
            re_prob=0.0,
            use_prefetcher=True,
        )
        # the smallest crop (least area, most extreme aspect ratio) must still cover `side` pixels
        smallest = math.sqrt(self.train_crop_scale[0] * CROP_RATIOS[0])
        return ImageTransform(on_uint8_tensors(training), math.ceil(side / smallest), fill)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ``[B, 3, H, W]`` as ``transform`` makes them, normalised with the model's mean and std
        on their device; floating-point images are taken as normalised already and returned as they are."""
        if images.is_floating_point():
            return images
        return (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))
