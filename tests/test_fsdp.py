"""FSDP (``mmrec_lightning.strategies.FSDPStrategy``) on CPU processes (gloo): the strategy the shipped config
builds, evaluation batches as many on every rank, and two sharded processes against DDP and against one process."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import TINY_SPEC, tiny_config, write_synthetic
from jsonargparse import ArgumentParser
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies import Strategy
from timm.models.vision_transformer import Block
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torch.utils.data import DataLoader
from transformers.models.bert.modeling_bert import BertLayer

from mmrec_lightning.checkpoint_io import AtomicCheckpointIO, use_atomic_checkpoints
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.strategies import FSDPStrategy, same_batch_count

FSDP_CONFIG = Path(__file__).parents[1] / "configs" / "fsdp" / "vit_bert.yaml"
WRAPPED = ["timm.models.vision_transformer.Block", "transformers.models.bert.modeling_bert.BertLayer"]


def test_the_shipped_config_builds_the_strategy():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--strategy", type=Strategy)
    section = yaml.safe_load(FSDP_CONFIG.read_text())["trainer"]["strategy"]
    strategy = parser.instantiate(parser.parse_object({"strategy": section})).strategy
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {Block, BertLayer}
    assert strategy.mixed_precision.param_dtype == torch.bfloat16
    assert strategy.mixed_precision.reduce_dtype == strategy.mixed_precision.buffer_dtype == torch.float32
    assert strategy._state_dict_type == "full"


def test_checkpoints_are_written_atomically():
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy(), logger=False)
    use_atomic_checkpoints(trainer.strategy)  # as the command line does
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.parametrize("batch_size", [2, 5, 7, 20])
@pytest.mark.parametrize("ranks", [2, 3])
def test_every_rank_runs_as_many_evaluation_batches_of_its_own_rows(ranks, batch_size):
    rows = list(range(41))  # shards of 21 and 20 rows (2 ranks), 14, 14 and 13 (3)
    samplers = [UnrepeatedDistributedSampler(rows, ranks, rank, shuffle=False) for rank in range(ranks)]
    loaders = [same_batch_count(DataLoader(rows, batch_size, sampler=sampler)) for sampler in samplers]
    assert len({len(loader) for loader in loaders}) == 1
    for sampler, loader in zip(samplers, loaders, strict=True):
        batches = [batch.tolist() for batch in loader]
        assert len(batches) == len(loader) and max(map(len, batches)) <= batch_size
        assert sum(batches, []) == list(sampler)  # the rank's own rows, in order


def test_a_shard_too_small_for_the_batch_count_is_refused():
    rows = list(range(3))  # rank 0: 2 batches of 1 row; rank 1 has 1 row
    with pytest.raises(ConfigurationError, match="rank 1 has 1 of the 3 evaluated rows"):
        same_batch_count(DataLoader(rows, 1, sampler=UnrepeatedDistributedSampler(rows, 2, 1, shuffle=False)))


def _run(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mmrec_lightning", *command], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_fsdp_processes_train_as_ddp_and_evaluate_as_one_process(tmp_path, tokenizer_dir):
    """A ViT whose blocks are FSDP units and a frozen text encoder, whose cached outputs leave it out of sharding;
    41 items, so that the evaluation shards (21 and 20 items) differ."""
    data = write_synthetic(tmp_path / "data", dataclasses.replace(TINY_SPEC, items=41))
    strategy = {"class_path": "mmrec_lightning.strategies.FSDPStrategy", "init_args": {"auto_wrap_policy": WRAPPED}}
    runs = {}
    for name, trainer in (("ddp", {"strategy": "ddp"}), ("fsdp", {"strategy": strategy})):
        (tmp_path / name).mkdir()
        config = tiny_config(tmp_path / name, data, tokenizer_dir, max_epochs=1, devices=2, **trainer)
        content = yaml.safe_load(config.read_text())
        encoders = content["model"]["init_args"]
        encoders["image_encoder"]["init_args"]["model_name"] = "test_vit"
        encoders["text_encoder"]["init_args"]["freeze"] = True
        config.write_text(yaml.safe_dump(content))
        _run(["fit", "--config", str(config), "--test_after_fit=true"])
        (runs[name],) = (tmp_path / name / "runs").rglob("last.ckpt")

    weights = {name: torch.load(path, weights_only=True)["state_dict"] for name, path in runs.items()}
    assert weights["fsdp"].keys() == weights["ddp"].keys()
    for key, value in weights["ddp"].items():  # the same training: the gradients averaged over the same batches
        torch.testing.assert_close(weights["fsdp"][key], value, rtol=1e-4, atol=1e-5, msg=key)

    results = {}
    for processes in (1, 2):
        directory = tmp_path / f"test-{processes}"
        sharded = ["--trainer.devices=2", f"--trainer.strategy={json.dumps(strategy)}"]
        _run([
            "test", "--config", str(tmp_path / "ddp" / "config.yaml"), "--ckpt_path", str(runs["fsdp"]),
            *(sharded if processes == 2 else ["--trainer.devices=1", "--trainer.strategy=auto"]),
            f"--test_metrics.directory={directory}", "--data.eval_batch_size=7", "--data.item_batch_size=5",
        ])  # fmt: skip
        results[processes] = json.loads((directory / "test_metrics.json").read_text())["MultimodalRecommender"]
    (after_fit,) = (tmp_path / "fsdp" / "runs").rglob("test_metrics.json")  # tested in the FSDP run itself
    results["after fit"] = json.loads(after_fit.read_text())["MultimodalRecommender"]
    assert results[1]["users"] == results[2]["users"] > 0  # every evaluated user counted exactly once
    for name, value in results[1].items():
        assert results[2][name] == pytest.approx(value, abs=1e-6), name
        assert results["after fit"][name] == pytest.approx(value, abs=1e-6), name
