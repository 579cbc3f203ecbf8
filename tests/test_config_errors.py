"""Mistakes in a config, and configs that cannot work, stop `python -m mmrec_lightning fit` before training with
one line on stderr that names the key (or file) and the fix, and exit status 2."""

import re
import warnings
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch
import yaml
from conftest import TINY_SPEC, tiny_config

from mmrec_lightning.__main__ import main as entry_point
from mmrec_lightning.cli import RecommenderCLI
from mmrec_lightning.data.schema import write_prepared
from mmrec_lightning.data.sources import synthetic as syn
from mmrec_lightning.models import RecommenderModule

HELP = "see `python -m mmrec_lightning fit --help`"


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if training starts."""

    def started(self):
        raise AssertionError("training started")

    monkeypatch.setattr(RecommenderModule, "on_train_start", started)


def edited_config(tmp_path: Path, synthetic_dir: Path, tokenizer_dir: Path, edit) -> Path:
    """The tiny test config after ``edit(config)``, written back to its file."""
    path = tiny_config(tmp_path, synthetic_dir, tokenizer_dir)
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config))
    return path


def refused(monkeypatch, capsys, *args: str) -> list[str]:
    """The lines on stderr of ``python -m mmrec_lightning fit ARGS``, which must exit with status 2."""
    monkeypatch.setattr("sys.argv", ["mmrec_lightning", "fit", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own warnings would reach stderr without pytest's capture
        entry_point()
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def set_key(dotted: str, value):
    def edit(config: dict) -> None:
        *parents, last = dotted.split(".")
        for key in parents:
            config = config[key]
        config[last] = value

    return edit


def rename_key(dotted: str, new_name: str):
    def edit(config: dict) -> None:
        *parents, last = dotted.split(".")
        for key in parents:
            config = config[key]
        config[new_name] = config.pop(last)

    return edit


IMAGE_ENCODER = "mmrec_lightning.encoders.image.TimmImageEncoder"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (
            rename_key("model.init_args.embed_dim", "embed_dimm"),
            "model.init_args.embed_dimm is not an option of MultimodalRecommender (did you mean embed_dim?)",
        ),
        (
            rename_key("trainer.max_epochs", "max_epoch"),
            "trainer.max_epoch is not an option (did you mean trainer.max_epochs?)",
        ),
        (set_key("data.batch_size", "big"), "data.batch_size must be int, got 'big'"),
        (
            set_key("model.init_args.image_encoder.class_path", IMAGE_ENCODER + "s"),
            f"model.init_args.image_encoder.class_path '{IMAGE_ENCODER}s' cannot be imported (module "
            f"'mmrec_lightning.encoders.image' has no attribute 'TimmImageEncoders') (did you mean {IMAGE_ENCODER}?)",
        ),
        (
            set_key("model.class_path", "MultimodalRecomender"),
            "model.class_path 'MultimodalRecomender' is not a known class (did you mean MultimodalRecommender?)",
        ),
    ],
    ids=["unknown key", "unknown trainer key", "wrong type", "unknown class_path", "unknown class name"],
)
def test_a_mistake_in_the_config_file_is_one_line_naming_the_file_and_key(
    edit, problem, tmp_path, synthetic_dir, tokenizer_dir, monkeypatch, capsys, no_training
):
    config = edited_config(tmp_path, synthetic_dir, tokenizer_dir, edit)
    assert refused(monkeypatch, capsys, "--config", config) == [f"error: {config}: {problem}; {HELP}"]


@pytest.mark.parametrize(
    ("option", "problem"),
    [
        ("--trainer.max_epochs=abc", "--trainer.max_epochs must be int or null, got 'abc'"),
        ("--trainer.max_epochz=3", "--trainer.max_epochz is not an option (did you mean --trainer.max_epochs?)"),
        (
            "--model.init_args.text_encoder.init_args.max_lenght=8",
            "--model.init_args.text_encoder.init_args.max_lenght is not an option of HFTextEncoder "
            "(did you mean max_length?)",
        ),
    ],
    ids=["wrong type", "unknown option", "unknown nested option"],
)
def test_a_mistake_on_the_command_line_is_one_line_naming_the_option(
    option, problem, tmp_path, synthetic_dir, tokenizer_dir, monkeypatch, capsys, no_training
):
    config = tiny_config(tmp_path, synthetic_dir, tokenizer_dir)
    assert refused(monkeypatch, capsys, "--config", config, option) == [f"error: {problem}; {HELP}"]


def test_a_config_that_is_not_yaml_is_one_line_naming_the_file_and_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("trainer:\n  max_epochs: [1\nmodel: {}\n")
    (line,) = refused(monkeypatch, capsys, "--config", config)
    assert line.startswith(f"error: {config}: not valid YAML (") and ", line 3); see" in line


def test_a_cutoff_larger_than_the_catalogue_is_one_line_before_training(
    tmp_path, synthetic_dir, tokenizer_dir, monkeypatch, capsys, no_training
):
    config = edited_config(tmp_path, synthetic_dir, tokenizer_dir, set_key("model.init_args.top_k", [5, 1000]))
    assert refused(monkeypatch, capsys, "--config", config) == [
        f"error: model.top_k: K=1000 is larger than the catalogue ({TINY_SPEC.items} items); lower model.top_k"
    ]


def test_an_empty_split_is_one_line_before_training(tmp_path, tokenizer_dir, monkeypatch, capsys, no_training):
    data = syn.generate(TINY_SPEC)
    no_validation = data.interactions.filter(pc.not_equal(data.interactions.column("split"), 1))
    path = write_prepared(
        tmp_path / "data", interactions=no_validation, items=data.items, users=data.users, metadata=data.metadata
    )
    config = tiny_config(tmp_path, path, tokenizer_dir)
    assert refused(monkeypatch, capsys, "--config", config) == [
        f"error: {path}: the valid split is empty; prepare the dataset again"
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dir, tokenizer_dir) -> Path:
    """The config of a matrix factorisation (embed_dim 8) trained for two steps, whose checkpoints are kept in
    ``<run>/checkpoints`` with ``last.ckpt``."""
    tmp_path = tmp_path_factory.mktemp("trained")
    model = {"class_path": "mmrec_lightning.models.MatrixFactorization", "init_args": {"embed_dim": 8, "top_k": [5]}}
    checkpoints = {"dirpath": str(tmp_path / "checkpoints"), "save_last": True}

    def edit(config: dict) -> None:
        config.update(model=model)
        config["data"]["history_length"] = 0
        config["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
        config["trainer"]["callbacks"][0]["init_args"] = checkpoints

    config = edited_config(tmp_path, synthetic_dir, tokenizer_dir, edit)
    RecommenderCLI(args=["fit", "--config", str(config)])
    return config


def test_a_checkpoint_of_other_dimensions_is_one_line_naming_it_and_the_parameter(
    trained, monkeypatch, capsys, no_training
):
    last = trained.parent / "checkpoints" / "last.ckpt"
    assert refused(monkeypatch, capsys, "--config", trained, "--model.init_args.embed_dim=16", "--ckpt_path=last") == [
        f"error: {last}: parameter user_embedding.weight has shape [{TINY_SPEC.users}, 8] in the checkpoint but "
        f"[{TINY_SPEC.users}, 16] in the configured model; use the config the checkpoint was trained with "
        "(config.yaml in its run directory)"
    ]


def test_a_checkpoint_with_refused_hyper_parameters_is_one_line_naming_it(
    trained, tmp_path, monkeypatch, capsys, no_training
):
    checkpoint = torch.load(trained.parent / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["embed_dim"] = "wide"
    path = tmp_path / "edited.ckpt"
    torch.save(checkpoint, path)
    assert refused(monkeypatch, capsys, "--config", trained, "--ckpt_path", path) == [
        f"error: {path}: the model hyper-parameters saved in it are refused: model.init_args.embed_dim must be int, "
        f"got 'wide'; {HELP}"
    ]


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict", "export"])
def test_a_corrupt_or_foreign_checkpoint_is_one_line_naming_it(command, trained, tmp_path, monkeypatch, capsys):
    whole = (trained.parent / "checkpoints" / "last.ckpt").read_bytes()
    files = {
        "empty.ckpt": (b"", "is empty"),
        "truncated.ckpt": (whole[: len(whole) // 2], "cannot be read"),
        "random.ckpt": (bytes(range(256)) * 8, "cannot be read"),
    }
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.ckpt")  # a torch file, but no Lightning checkpoint
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
    expected = {name: what for name, (_, what) in files.items()} | {"foreign.ckpt": "holds no Lightning checkpoint"}
    for name, what in expected.items():
        monkeypatch.setattr("sys.argv", ["mmrec_lightning", command, "--config", str(trained), "--ckpt_path",
                                         str(tmp_path / name)])  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            entry_point()
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and re.match(rf"error: {tmp_path / name}:? {what}", lines[0]), lines
