"""Parameter-efficient tuning with peft (LoRA, IA3) on the text and image encoders: what trains, compact checkpoints
that round-trip, merged adapters for export, and the YAML path through the CLI."""

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_BERT, TINY_SPEC, fit_steps, tiny_config
from transformers import AutoConfig, AutoModel

from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.encoders.adapters import DIGEST_KEY, IA3, LoRA
from mmrec_lightning.encoders.image import TimmImageEncoder
from mmrec_lightning.encoders.text import HFTextEncoder
from mmrec_lightning.encoders.weights import restoring_checkpoint
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.export.exporter import VectorExporter
from mmrec_lightning.models import MultimodalRecommender

ADAPTER_WEIGHTS = ("lora_", "ia3_")
"""What peft's adapter weights are called (``….query.lora_A.default.weight``, ``….qkv.ia3_l.default``)."""


def _bert(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = dict(TINY_BERT)
    return AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """The tiny BERT saved as a pretrained model folder: the source checkpoints leave its weights to."""
    path = tmp_path_factory.mktemp("bert")
    _bert().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    """A local pretrained checkpoint of timm's test ViT."""
    path = tmp_path_factory.mktemp("vit") / "vit.pth"
    torch.manual_seed(0)
    torch.save(TimmImageEncoder("test_vit").model.state_dict(), path)
    return path


def _text(bert_dir, tokenizer_dir, adapter, **kwargs) -> HFTextEncoder:
    return HFTextEncoder(str(bert_dir), tokenizer=str(tokenizer_dir), max_length=16, adapter=adapter, **kwargs)


def _image(vit_weights, adapter) -> TimmImageEncoder:
    return TimmImageEncoder("test_vit", pretrained=str(vit_weights), image_size=32, adapter=adapter)


def _inputs(encoder) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    if isinstance(encoder, HFTextEncoder):
        ids = torch.randint(5, TINY_BERT["vocab_size"], (4, 8), generator=generator)
        return ids, torch.ones(4, 8, dtype=torch.long)
    return (torch.randn(4, 3, 32, 32, generator=generator),)


def _adapter_names(encoder) -> set[str]:
    return {name for name, _ in encoder.named_parameters() if any(w in name for w in ADAPTER_WEIGHTS)}


def _train_one_step(encoder) -> None:
    """One AdamW step with weight decay over every parameter of the encoder (decay would move any that trained)."""
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=0.1, weight_decay=0.1)
    encoder.train()
    encoder(*_inputs(encoder)).pow(2).mean().backward()
    optimizer.step()


ENCODERS = {
    "bert-lora": lambda d: _text(d["bert"], d["tokenizer"], LoRA(["query", "value"], r=4, dropout=0.1)),
    "bert-ia3": lambda d: _text(d["bert"], d["tokenizer"], IA3(["key", "value", "output.dense"], ["output.dense"])),
    "vit-lora": lambda d: _image(d["vit"], LoRA(["qkv", "fc2"], r=4)),
    "efficientnet-lora": lambda d: TimmImageEncoder("test_efficientnet", image_size=32, adapter=LoRA(["conv_pwl"])),
    "convnext-ia3": lambda d: TimmImageEncoder("test_convnext", image_size=32, adapter=IA3(["fc1", "fc2"], ["fc2"])),
}


@pytest.fixture
def sources(bert_dir, tokenizer_dir, vit_weights):
    return {"bert": bert_dir, "tokenizer": tokenizer_dir, "vit": vit_weights}


@pytest.mark.parametrize("make", ENCODERS.values(), ids=ENCODERS.keys())
def test_only_the_adapter_trains_and_merging_it_keeps_the_outputs(make, sources):
    torch.manual_seed(0)
    encoder = make(sources)
    adapter = _adapter_names(encoder)
    assert adapter and {name for name, p in encoder.named_parameters() if p.requires_grad} == adapter
    params = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    buffers = {name: b.clone() for name, b in encoder.named_buffers()}
    _train_one_step(encoder)
    for name, p in encoder.named_parameters():
        assert torch.equal(p, params[name]) != (name in adapter), name
    for name, b in encoder.named_buffers():  # batch-norm statistics of the frozen layers stay as they were
        assert torch.equal(b, buffers[name]), name

    encoder.eval()
    with torch.no_grad():
        adapted = encoder(*_inputs(encoder))
        encoder.merge_adapters()
        merged = encoder(*_inputs(encoder))
    assert encoder.adapter is None and not _adapter_names(encoder)
    assert torch.allclose(merged, adapted, atol=1e-5, rtol=0)
    assert not any(name.endswith(DIGEST_KEY) or ".base_layer." in name for name in encoder.state_dict())


def _model(sources, text_adapter, image_adapter, seed: int = 0, **kwargs) -> MultimodalRecommender:
    torch.manual_seed(seed)
    return MultimodalRecommender(
        num_users=TINY_SPEC.users,
        num_items=TINY_SPEC.items,
        num_categories=6,
        image_encoder=_image(sources["vit"], image_adapter),
        text_encoder=_text(sources["bert"], sources["tokenizer"], text_adapter),
        embed_dim=16,
        top_k=[5],
        **kwargs,
    )


def test_the_optimizer_gets_only_the_adapters_of_the_encoders(sources):
    model = _model(sources, LoRA(["query"]), IA3(["qkv"]), encoder_lr=1e-4)
    model.optimizer_factory = lambda groups: torch.optim.AdamW(groups, lr=1e-3)
    rest, encoders = model.configure_optimizers().param_groups
    towers = model.item_tower
    encoder_parameters = [*towers.image_encoder.named_parameters(), *towers.text_encoder.named_parameters()]
    adapters = {id(p) for name, p in encoder_parameters if any(w in name for w in ADAPTER_WEIGHTS)}
    assert {id(p) for p in encoders["params"]} == adapters
    assert not {id(p) for p in rest["params"]} & {id(p) for _, p in encoder_parameters}


def _fit_one_step(model, data_dir) -> L.Trainer:
    return fit_steps(model, RecDataModule(path=str(data_dir), batch_size=32, num_negatives=2, history_length=5), 1)


def test_checkpoints_hold_the_adapters_not_the_pretrained_weights_and_round_trip(sources, synthetic_dir, tmp_path):
    model = _model(sources, LoRA(["query", "value"], r=4), LoRA(["qkv"], r=4))
    trainer = _fit_one_step(model, synthetic_dir)
    trainer.save_checkpoint(tmp_path / "adapted.ckpt")
    state = torch.load(tmp_path / "adapted.ckpt", weights_only=True)["state_dict"]

    for name in ("text_encoder", "image_encoder"):
        encoder = getattr(model.item_tower, name)
        prefix = f"item_tower.{name}."
        saved = {key.removeprefix(prefix) for key in state if key.startswith(prefix)}
        assert saved == _adapter_names(encoder) | {DIGEST_KEY}
        # the frozen weights were not duplicated: what the encoder saves is a few percent of what it holds
        full = sum(p.numel() for p in encoder.parameters())
        assert sum(state[prefix + key].numel() for key in saved) < 0.1 * full

    # restored as load_from_checkpoint builds a model: the pretrained weights are read from their source again
    with restoring_checkpoint():
        fresh = _model(sources, LoRA(["query", "value"], r=4), LoRA(["qkv"], r=4), seed=1)
    fresh.load_state_dict(state)
    ours = dict(fresh.named_parameters())
    for name, theirs in model.named_parameters():  # the left-out weights too
        assert torch.equal(theirs, ours.pop(name)), name
    assert not ours
    model.eval(), fresh.eval()
    for name in ("text_encoder", "image_encoder"):
        encoder = getattr(model.item_tower, name)
        assert torch.equal(encoder(*_inputs(encoder)), getattr(fresh.item_tower, name)(*_inputs(encoder)))


def test_strict_loading_still_catches_what_does_not_fit(sources, tokenizer_dir, tmp_path):
    encoder = _text(sources["bert"], tokenizer_dir, LoRA(["query"]))
    state = encoder.state_dict()
    missing = next(name for name in state if "lora_B" in name)
    with pytest.raises(RuntimeError, match=f'Missing key\\(s\\) in state_dict: "{missing}"'):
        encoder.load_state_dict({k: v for k, v in state.items() if k != missing})
    with pytest.raises(RuntimeError, match="Missing key"):  # no digest: the left-out weights are missing
        encoder.load_state_dict({k: v for k, v in state.items() if k != DIGEST_KEY})

    other = tmp_path / "other-bert"
    _bert(seed=1).save_pretrained(other)
    with pytest.raises(ConfigurationError, match="pretrained weights from text model .* are not those"):
        _text(other, tokenizer_dir, LoRA(["query"])).load_state_dict(state)


def test_weights_missing_from_the_pretrained_folder_stay_in_checkpoints(tokenizer_dir, tmp_path):
    state = _bert().state_dict()
    del state["encoder.layer.0.intermediate.dense.weight"]  # initialised at random when loaded: no source has it
    _bert().save_pretrained(tmp_path, state_dict=state)
    encoder = _text(tmp_path, tokenizer_dir, LoRA(["query"]))
    assert "model.model.encoder.layer.0.intermediate.dense.weight" in encoder.state_dict()


def test_bad_adapter_settings_are_one_clear_line(sources, tokenizer_dir):
    typo = (
        r"text encoder: adapter.target_modules: 'qurey' names no layer of BertModel \(did you mean 'query'\?\); "
        r"layers it can adapt: dense, key, .*query, .*value"
    )
    with pytest.raises(ConfigurationError, match=typo):  # the other target matching does not hide the typo
        _text(sources["bert"], tokenizer_dir, LoRA(["query", "qurey"]))
    container = r"image encoder: adapter.target_modules: 'attn' names Attention, which .* among: fc1, fc2, proj, qkv"
    with pytest.raises(ConfigurationError, match=container):
        TimmImageEncoder("test_vit", adapter=LoRA(["attn"]))
    with pytest.raises(ConfigurationError, match="IA3.feedforward_modules"):
        IA3(["qkv"], ["fc2"])
    with pytest.raises(ConfigurationError, match="drop freeze"):
        TimmImageEncoder("test_vit", train_blocks=1, adapter=LoRA(["qkv"]))


def test_fit_resume_and_export_with_a_lora_adapter_from_yaml(synthetic_dir, tokenizer_dir, bert_dir, tmp_path):
    path = tiny_config(tmp_path, synthetic_dir, tokenizer_dir, max_epochs=1)
    config = yaml.safe_load(path.read_text())
    config["model"]["init_args"]["text_encoder"]["init_args"] = {
        "model_name_or_path": str(bert_dir),
        "tokenizer": str(tokenizer_dir),
        "max_length": 16,
        "adapter": {
            "class_path": "mmrec_lightning.encoders.adapters.LoRA",
            "init_args": {"target_modules": ["query", "value"], "r": 4},
        },
    }
    path.write_text(yaml.safe_dump(config))
    fit = RecommenderCLI(args=["fit", "--config", str(path)])
    last = fit.trainer.checkpoint_callback.last_model_path
    state = torch.load(last, weights_only=True)["state_dict"]
    text = {k for k in state if k.startswith("item_tower.text_encoder.")}
    assert text == {f"item_tower.text_encoder.{n}" for n in _adapter_names(fit.model.item_tower.text_encoder)} | {
        f"item_tower.text_encoder.{DIGEST_KEY}"
    }

    resumed = RecommenderCLI(args=["fit", "--config", str(path), "--ckpt_path", last, "--trainer.max_epochs=2"])
    assert resumed.trainer.current_epoch == 2  # the model and its optimizer state restored, one more epoch run

    restored = MultimodalRecommender.load_from_checkpoint(last, weights_only=True).eval()  # from its hyper-parameters
    export = RecommenderCLI(
        args=["predict", "--config", str(path), "--ckpt_path", last, "--export.enabled=true",
              "--export.index=exact", f"--export.directory={tmp_path / 'export'}"]
    )  # fmt: skip
    merged = export.model.item_tower.text_encoder
    assert merged.adapter is None and any(isinstance(cb, VectorExporter) for cb in export.trainer.callbacks)
    inputs = _inputs(merged)
    with torch.no_grad():
        assert torch.allclose(merged.eval()(*inputs), restored.item_tower.text_encoder(*inputs), atol=1e-5, rtol=0)
    assert np.load(tmp_path / "export" / "item_vectors.npy").shape[0] == TINY_SPEC.items
