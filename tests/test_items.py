"""Item content decoding: large JPEGs decoded at reduced scale without changing what the model sees."""

import io

import numpy as np
import pytest
import torch
from conftest import TINY_SPEC
from PIL import Image

from mmrec_lightning.data.contract import ImageTransform, ItemPreprocessing
from mmrec_lightning.data.items import ItemContent
from mmrec_lightning.data.sources.synthetic import draw_image
from mmrec_lightning.encoders.image import TimmImageEncoder


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


@pytest.fixture
def content(synthetic_dir):
    return ItemContent(str(synthetic_dir), ItemPreprocessing(), np.ones(TINY_SPEC.items))


def test_a_large_jpeg_is_decoded_at_the_smallest_scale_that_keeps_min_side(content):
    jpeg = _encoded(Image.new("RGB", (600, 400), (90, 120, 200)), "JPEG")
    assert content._decode(0, jpeg).size == (600, 400)
    assert content._decode(0, jpeg, min_side=100).size == (150, 100)  # 1/4; 1/8 would leave 50 rows
    assert content._decode(0, jpeg, min_side=201).size == (600, 400)  # 1/2 would leave 200 rows
    png = _encoded(Image.new("RGB", (600, 400)), "PNG")
    assert content._decode(0, png, min_side=100).size == (600, 400)  # only JPEG decodes at reduced scale


def test_decoding_at_reduced_scale_gives_the_model_about_the_same_pixels(content):
    encoder = TimmImageEncoder("test_efficientnet", image_size=64)
    transform = encoder.transform(False)
    jpeg = draw_image("star", (200, 40, 40), "checks", 512, np.random.default_rng(0))
    full = transform(Image.open(io.BytesIO(jpeg)).convert("RGB")).float()
    drafted = content._decode(0, jpeg, min_side=transform.min_side)
    assert drafted.size == (64, 64)
    difference = (transform(drafted).float() - full).abs()
    assert difference.mean() < 2  # grey levels of 255: about JPEG's own error at quality 90


def test_the_loader_decodes_at_the_scale_an_image_transform_asks_for(synthetic_dir):
    sizes = []

    def record(image: Image.Image) -> torch.Tensor:
        sizes.append(image.size)
        return torch.zeros(3, 4, 4, dtype=torch.uint8)

    items = np.arange(TINY_SPEC.items)
    for transform, expected in ((record, TINY_SPEC.image_size), (ImageTransform(record, min_side=8), 8)):
        sizes.clear()
        content = ItemContent(str(synthetic_dir), ItemPreprocessing(image_eval=transform), np.ones(TINY_SPEC.items))
        batch = content.load(items, train=False)
        assert sizes and set(sizes) == {(expected, expected)}
        assert len(sizes) == int(batch["image_mask"].sum())


def test_texts_are_padded_to_a_multiple_of_8_tokens_never_past_max_length(tokenizer_dir):
    from transformers import AutoTokenizer

    from mmrec_lightning.data.items import text_batch

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    texts = ["wooden lamp", "a red ceramic mug made of clay, great gift, ships fast and well packed indeed"]
    longest = max(len(tokenizer(t)["input_ids"]) for t in texts)
    assert longest % 8 and longest > 13  # so that padding and truncation both show
    for max_length in (8 * ((longest + 7) // 8) + 8, 16, 13):
        tokens = text_batch(texts, ItemPreprocessing(tokenizer=tokenizer, max_text_length=max_length))["input_ids"]
        expected = min(longest, max_length)
        if max_length % 8 == 0:
            expected = 8 * ((expected + 7) // 8)
        assert tokens.shape == (2, expected)
