"""Feature extraction: the stored matrices equal a direct encode, and models train from them."""

import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_BERT, TINY_SPEC
from test_cli import EXTRACT_CONFIGS

from mmrec_lightning.connect import connect
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.encoders.image import TimmImageEncoder
from mmrec_lightning.encoders.text import HFTextEncoder
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.encoder import ItemFeatures
from mmrec_lightning.features.extract import FeatureExtractor, _parser, extract_features
from mmrec_lightning.features.extract import main as extract_main
from mmrec_lightning.features.files import feature_file, read_features, save_features
from mmrec_lightning.features.matrices import RowParts
from mmrec_lightning.fusion import ScoreFusion
from mmrec_lightning.models import MultimodalRecommender


def _encoders(tokenizer_dir):
    torch.manual_seed(0)
    image = TimmImageEncoder("test_efficientnet", image_size=32)
    text = HFTextEncoder(config=TINY_BERT, tokenizer=str(tokenizer_dir), max_length=16)
    return image, text


def _catalogue(extractor, data_dir):
    """Every item's content, preprocessed for evaluation, in one batch."""
    dm = RecDataModule(path=str(data_dir), item_batch_size=TINY_SPEC.items)
    dm.connect(extractor.item_preprocessing())
    dm.setup("predict")
    return next(iter(dm.catalogue_dataloader()))


@pytest.fixture(scope="module")
def extracted(synthetic_dir, tokenizer_dir, tmp_path_factory):
    """A copy of the tiny dataset with features extracted by a pair of tiny random encoders."""
    data = tmp_path_factory.mktemp("extracted") / "data"
    shutil.copytree(synthetic_dir, data)
    image, text = _encoders(tokenizer_dir)
    written = extract_features(str(data), image, text, batch_size=16, accelerator="cpu", enable_progress_bar=False)
    return data, image, text, written


def test_extracted_features_equal_a_direct_encode_and_items_without_content_get_zeros(extracted):
    data, image, text, written = extracted
    assert written == {"image": feature_file(data, "image"), "text": feature_file(data, "text")}
    items = _catalogue(FeatureExtractor(image, text), data)
    assert not items["image_mask"].all() or not items["text_mask"].all(), "the fixture should lack some content"
    with torch.no_grad():
        direct_image = image(items["image"]) * items["image_mask"].unsqueeze(1)
        direct_text = text(items["input_ids"], items["attention_mask"]) * items["text_mask"].unsqueeze(1)
    stored_image, stored_text = read_features(written["image"]), read_features(written["text"])
    assert len(stored_image) == len(stored_text) == TINY_SPEC.items
    assert stored_image.shape == (TINY_SPEC.items, image.output_dim)
    np.testing.assert_allclose(stored_image, direct_image.numpy(), atol=1e-5)
    np.testing.assert_allclose(stored_text, direct_text.numpy(), atol=1e-5)
    loaded = ItemFeatures(str(written["image"]))
    assert torch.equal(loaded.available, items["image_mask"])
    assert not list((data / "features").glob(".*")), "no partial files are left behind"


def test_a_model_trained_from_features_sees_what_the_frozen_encoders_would_give(extracted, tokenizer_dir):
    data, image, text, written = extracted
    kwargs = {"num_users": TINY_SPEC.users, "num_items": TINY_SPEC.items, "embed_dim": 8, "top_k": [5]}
    image.freeze(), text.freeze()
    torch.manual_seed(1)
    encoded = MultimodalRecommender(image_encoder=image, text_encoder=text, **kwargs).eval()
    torch.manual_seed(1)
    cached = MultimodalRecommender(
        image_encoder=ItemFeatures(str(written["image"])), text_encoder=ItemFeatures(str(written["text"])), **kwargs
    ).eval()
    assert cached.item_preprocessing().image_eval is None and cached.item_preprocessing().tokenizer is None
    items = _catalogue(encoded, data)
    with torch.no_grad():
        expected = encoded.item_tower(items)
        got = cached.item_tower({k: items[k] for k in ("item_ids", "id_mask")})
    torch.testing.assert_close(got.vectors, expected.vectors, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.weights, expected.weights, atol=1e-5, rtol=1e-4)


def test_features_with_the_wrong_number_of_rows_are_refused_naming_the_file(tmp_path):
    path = save_features(tmp_path / "image_feat.npy", np.ones((3, 4), np.float32))
    refused = r"model.image_encoder: .*image_feat.npy has 3 rows, but the data has 40 items"
    with pytest.raises(ConfigurationError, match=refused):
        MultimodalRecommender(num_users=5, num_items=40, image_encoder=ItemFeatures(str(path)), top_k=[5])
    with pytest.raises(ConfigurationError, match=r"missing.npy: no such feature file; write it with"):
        ItemFeatures(str(tmp_path / "missing.npy"))


def test_the_command_line_writes_the_features_of_the_configured_encoders(synthetic_dir, tokenizer_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    text = {"config": TINY_BERT, "tokenizer": str(tokenizer_dir), "max_length": 16}
    extract_main(
        [
            f"--data={data}",
            "--text_encoder=mmrec_lightning.encoders.text.HFTextEncoder",
            f"--text_encoder.init_args={text}".replace("'", '"'),
            "--accelerator=cpu",
        ]
    )
    assert read_features(feature_file(data, "text")).shape == (PreparedDataset(data).num_items, 32)
    assert not feature_file(data, "image").exists()
    with pytest.raises(ConfigurationError, match="give an --image_encoder, a --text_encoder or both"):
        extract_main([f"--data={data}"])


@pytest.mark.parametrize("config", EXTRACT_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_extraction_config_parses(config):
    parsed = _parser().parse_args(["--config", str(config)])
    assert parsed.image_encoder is not None or parsed.text_encoder is not None


def test_score_fusion_gives_users_one_block_per_modality(synthetic_dir, tokenizer_dir):
    image, text = _encoders(tokenizer_dir)
    model = MultimodalRecommender(
        num_users=TINY_SPEC.users,
        num_items=TINY_SPEC.items,
        num_categories=6,
        image_encoder=image,
        text_encoder=text,
        embed_dim=8,
        fusion=ScoreFusion,
        use_user_id=True,
        top_k=[5],
    )
    dm = RecDataModule(path=str(synthetic_dir), batch_size=16, history_length=3)
    connect(model, dm)
    dm.setup("fit")
    model.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss = model.training_step(batch, 0)
    loss.backward()
    assert model.user_tower.embedding.weight.shape[1] == 3 * 8
    assert model.item_tower.fusion.logits.grad is not None


def test_row_parts_from_several_ranks_assemble_in_row_order_and_must_cover_every_row(tmp_path):
    first, second = RowParts(tmp_path / "parts", 0, ["v"]), RowParts(tmp_path / "parts", 1, ["v"])
    first.write(np.array([3, 0]), {"v": np.array([[3.0, 3.5], [0.0, 0.5]])})
    second.write(np.array([2]), {"v": np.array([[2.0, 2.5]])})
    first.write(np.array([1]), {"v": np.array([[1.0, 1.5]])})
    first.close(), second.close()
    first.assemble(2, 4, {"v": tmp_path / "v.npy"})
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), [[0, 0.5], [1, 1.5], [2, 2.5], [3, 3.5]])
    assert not (tmp_path / "parts").exists()

    gappy = RowParts(tmp_path / "gappy", 0, ["v"])
    gappy.write(np.array([0, 0]), {"v": np.zeros((2, 2))})
    gappy.close()
    with pytest.raises(RuntimeError, match="do not hold each of 2 rows exactly once"):
        gappy.assemble(1, 2, {"v": tmp_path / "w.npy"})
    assert not (tmp_path / "w.npy").exists()


def test_projecting_a_batch_of_items_gives_the_gradients_of_plain_indexing_even_after_another_gather(tmp_path):
    from mmrec_lightning.models.content import project

    generator = torch.Generator().manual_seed(0)
    features = ItemFeatures(str(save_features(tmp_path / "f.npy", torch.randn(50, 12, generator=generator).numpy())))
    weight = torch.randn(4, 12, generator=generator, requires_grad=True)
    bias = torch.randn(4, generator=generator, requires_grad=True)
    items, other = torch.tensor([3, 7, 7, 0, 49]), torch.tensor([1, 2])
    upstream = torch.randn(5, 4, generator=generator)

    expected = torch.autograd.grad(
        (torch.nn.functional.linear(features.matrix[items], weight, bias) * upstream).sum(), [weight, bias]
    )
    for gather_in_between in (False, True):
        projected = project(features, items, weight, bias)
        if gather_in_between:  # another projection overwrote the reused rows before this backward
            project(features, other, weight, bias)
        got = torch.autograd.grad((projected * upstream).sum(), [weight, bias])
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)
    features.double()  # a cast after a gather: the next one must use a block of the new dtype
    double = project(features, items, weight.double(), bias.double())
    torch.testing.assert_close(
        double, torch.nn.functional.linear(features.matrix[items], weight.double(), bias.double())
    )
    features.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = project(features, items, weight, bias)
    assert projected.dtype == torch.bfloat16
    (grad,) = torch.autograd.grad(projected.float().sum(), [weight])
    assert grad.dtype == torch.float32


def test_bfloat16_features_take_half_the_memory_and_project_to_about_the_float32_result(tmp_path, monkeypatch):
    from mmrec_lightning.features import encoder
    from mmrec_lightning.models.content import project

    monkeypatch.setattr(encoder, "cpu_bfloat16_is_fast", lambda: True)  # as on a CPU with bfloat16 instructions

    generator = torch.Generator().manual_seed(0)
    path = str(save_features(tmp_path / "f.npy", torch.randn(60, 32, generator=generator).numpy()))
    exact, half = ItemFeatures(path), ItemFeatures(path, dtype="bfloat16")
    assert (
        half.matrix.element_size() * 2 == exact.matrix.element_size() and half(torch.tensor([1])).dtype == torch.float32
    )
    weight = torch.randn(8, 32, generator=generator, requires_grad=True)
    bias = torch.randn(8, generator=generator, requires_grad=True)
    items = torch.tensor([5, 0, 59, 5, 17])
    outputs, grads = [], []
    for features in (exact, half):
        projected = project(features, items, weight, bias)
        assert projected.dtype == torch.float32 and project(features, None, weight, bias).dtype == torch.float32
        outputs.append(projected)
        grads.append(torch.autograd.grad(projected.square().sum(), [weight, bias]))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0.02, atol=0.05)
    for a, b in zip(grads[1], grads[0], strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.03, atol=0.3)


def test_a_compiled_projection_still_sees_a_gather_that_replaced_its_rows(tmp_path):
    from mmrec_lightning.models.content import project

    generator = torch.Generator().manual_seed(0)
    features = ItemFeatures(str(save_features(tmp_path / "f.npy", torch.randn(20, 6, generator=generator).numpy())))
    weight = torch.randn(3, 6, generator=generator, requires_grad=True)
    items, other = torch.tensor([1, 2, 3]), torch.tensor([10, 11, 12])

    def twice(items: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        projected = project(features, items, weight)
        project(features, other, weight)  # overwrites the rows the first projection's backward needs
        return projected.sum()

    torch._dynamo.reset()
    (got,) = torch.autograd.grad(torch.compile(twice, backend="eager")(items, other), [weight])
    (expected,) = torch.autograd.grad(torch.nn.functional.linear(features.matrix[items], weight).sum(), [weight])
    torch.testing.assert_close(got, expected)
