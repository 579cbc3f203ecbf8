import io

import numpy as np
import pytest
import torch
from conftest import TINY_BERT
from PIL import Image
from timm.data import create_transform

from mmrec_lightning.data.samplers import seeded_augmentation
from mmrec_lightning.data.sources.synthetic import draw_image
from mmrec_lightning.encoders.image import TimmImageEncoder
from mmrec_lightning.encoders.text import HFTextEncoder
from mmrec_lightning.encoders.weights import resolve_location, restoring_checkpoint
from mmrec_lightning.errors import ConfigurationError


def test_unknown_timm_model_is_one_clear_line():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet5O'; did you mean"):
        TimmImageEncoder("resnet5O")


def test_unknown_text_model_path_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigurationError, match="could not load text model"):
        HFTextEncoder(str(tmp_path / "no-such-model"))


def test_local_timm_checkpoint_loads_by_name_and_by_position(tmp_path):
    reference = TimmImageEncoder("test_efficientnet")
    state = reference.model.state_dict()
    torch.save(state, tmp_path / "same_names.pth")
    renamed = {f"other.{i}": v for i, v in enumerate(state.values())}
    renamed["classifier.weight"] = torch.zeros(10, reference.output_dim)  # trailing extras are ignored
    torch.save(renamed, tmp_path / "other_names.pth")
    for name in ("same_names.pth", "other_names.pth"):
        loaded = TimmImageEncoder("test_efficientnet", pretrained=str(tmp_path / name))
        for key, value in loaded.model.state_dict().items():
            assert torch.equal(value, state[key]), key


def test_a_checkpoint_for_another_architecture_is_refused(tmp_path):
    torch.save(TimmImageEncoder("test_resnet").model.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="does not fit this timm model"):
        TimmImageEncoder("test_efficientnet", pretrained=str(tmp_path / "resnet.pth"))


def test_restoring_a_checkpoint_skips_pretrained_weights(tmp_path):
    with restoring_checkpoint():
        TimmImageEncoder("test_efficientnet", pretrained=str(tmp_path / "does-not-exist.pth"))


def test_package_locations_resolve_inside_installed_packages():
    assert resolve_location("package:mmrec_lightning/encoders").endswith("mmrec_lightning/encoders")
    assert resolve_location("resnet50") == "resnet50"
    with pytest.raises(ConfigurationError, match="not installed"):
        resolve_location("package:no_such_package_here/model")


def test_text_encoder_from_a_config_mean_pools_over_real_tokens(tokenizer_dir):
    encoder = HFTextEncoder(config=TINY_BERT, tokenizer=str(tokenizer_dir)).eval()
    tokens = encoder.tokenizer()(["modern wooden chair", "lamp"], padding=True, return_tensors="pt")
    out = encoder(tokens["input_ids"], tokens["attention_mask"])
    assert out.shape == (2, TINY_BERT["hidden_size"])
    alone = encoder(tokens["input_ids"][1:, :3], tokens["attention_mask"][1:, :3])
    assert torch.allclose(out[1], alone[0], atol=1e-5)  # padding does not change the vector


def test_frozen_encoders_do_not_train():
    encoder = TimmImageEncoder("test_efficientnet", freeze=True)
    encoder.train()
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(tokenizer_dir):
    encoder = HFTextEncoder(config={**TINY_BERT, "vocab_size": 10}, tokenizer=str(tokenizer_dir))
    with pytest.raises(ValueError, match="vocabulary"):
        encoder.tokenizer()


def timm_float_transform(encoder: TimmImageEncoder, train: bool):
    """The transform the loader ran before the uint8 change: timm's, on PIL images, normalised on the CPU."""
    if not train:
        return create_transform(**encoder.data_config, is_training=False)
    return create_transform(
        **encoder.data_config,
        is_training=True,
        scale=encoder.train_crop_scale,
        hflip=encoder.hflip,
        color_jitter=None,
        auto_augment=None,
        re_prob=0.0,
    )


@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("train", [False, True])
def test_uint8_images_normalised_by_the_encoder_give_the_outputs_of_timms_float_transform(train, size):
    torch.manual_seed(0)
    encoder = TimmImageEncoder("test_efficientnet", image_size=size).eval()
    images = [  # product-like pictures with sharp edges, larger than the input (downscaled) and smaller (upscaled)
        Image.open(io.BytesIO(draw_image(shape, (200, 40, 40), "checks", side, np.random.default_rng(side))))
        for shape, side in (("star", 128), ("cross", 80), ("circle", 64))
    ]
    ours, before = encoder.transform(train), timm_float_transform(encoder, train)
    with seeded_augmentation(0, 0, 0):  # the same crops and flips for both
        uint8 = torch.stack([ours(image) for image in images])
    with seeded_augmentation(0, 0, 0):
        floats = torch.stack([before(image) for image in images])
    assert uint8.dtype == torch.uint8
    normalised = encoder.normalize(uint8)
    grey_level = 1 / (255 * min(encoder.data_config["std"]))  # one grey level, normalised by the smallest std
    assert (normalised - floats).abs().max() <= 1.01 * grey_level  # torchvision's resize is within a level of PIL's
    with torch.no_grad():
        out, expected = encoder(uint8), encoder(floats)
    assert (out - expected).abs().max() <= 0.01 * expected.abs().max()


def test_the_placeholder_for_a_missing_image_normalises_to_about_zero_as_before():
    encoder = TimmImageEncoder("test_efficientnet", image_size=32)
    fill = torch.tensor(encoder.transform(True).fill, dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    assert encoder.normalize(fill).abs().max() < 0.01  # within half a grey level of the mean colour
