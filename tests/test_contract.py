"""The contract between model and data: connected once, explicitly, and usable without a Trainer."""

import ast
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_SPEC

from mmrec_lightning.connect import connect
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.evaluation import CATALOGUE
from mmrec_lightning.models import MultimodalRecommender

PACKAGE = Path(__file__).parents[1] / "mmrec_lightning"
CLI_LAYER = {"cli.py", "connect.py", "strategies.py"}  # a Strategy holds the module it distributes


def _model() -> MultimodalRecommender:
    torch.manual_seed(0)
    return MultimodalRecommender(
        num_users=TINY_SPEC.users, num_items=TINY_SPEC.items, embed_dim=8, use_user_id=True, top_k=[5, 20]
    )


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # no Trainer to log to, on purpose
def test_a_model_and_its_data_connected_without_a_trainer_train_a_step_and_evaluate(synthetic_dir):
    model, data = _model(), RecDataModule(path=str(synthetic_dir), batch_size=32, history_length=3)
    connect(model, data)
    data.setup("fit")
    model.setup("fit")
    optimizer = model.configure_optimizers()
    before = model.item_tower.item_embedding.weight.detach().clone()
    loss = model.training_step(next(iter(data.train_dataloader())), 0)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(model.item_tower.item_embedding.weight, before)

    model.eval()
    model.on_validation_epoch_start()
    with torch.no_grad():
        for loader_index, loader in enumerate(data.val_dataloader()):
            for index, batch in enumerate(loader):
                model.validation_step(batch, index, loader_index)
    ours = {name: float(value) for name, value in model.val_metrics.compute().items()}
    weights = model._items()["modality_weights"]  # the ID's weight: 1, but 0 for a cold item, whose ID never trained
    trained = torch.as_tensor(data.facts.item_train_counts > 0)
    assert weights.shape == (TINY_SPEC.items, 1) and torch.equal(weights[:, 0], trained.float())
    model.val_metrics.reset()

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    through_lightning = trainer.validate(model, datamodule=data, verbose=False)[-1]  # one dict per loader
    assert ours["users"] > 0 and 0 < ours["recall@20"] <= 1
    for name in ("recall@20", "ndcg@20", "hit@5"):
        assert ours[name] == pytest.approx(through_lightning[f"val/{name}"], abs=1e-6)
    assert through_lightning["val/modality_weights/id"] == pytest.approx(float(trained.float().mean()))


def test_a_model_that_is_not_connected_says_how_to_connect_it():
    with pytest.raises(RuntimeError, match=r"not connected to its data: call mmrec_lightning.connect.connect"):
        _model().setup("fit")


def test_the_data_gets_the_models_preprocessing_and_the_model_the_datas_facts(synthetic_dir):
    model, data = _model(), RecDataModule(path=str(synthetic_dir))
    connect(model, data)
    assert model.data_facts is data.facts and model.data_facts.num_items == TINY_SPEC.items
    assert data.preprocessing == model.item_preprocessing()
    assert CATALOGUE == 0  # the catalogue loader comes first in every evaluation


def _reads_across(tree: ast.AST) -> list[str]:
    """``x.datamodule`` and ``x.lightning_module`` reads in a module."""
    return [
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in {"datamodule", "lightning_module"}
    ]


def test_nothing_outside_the_cli_layer_reaches_across_through_the_trainer():
    found = {
        str(path.relative_to(PACKAGE)): reads
        for path in PACKAGE.rglob("*.py")
        if path.name not in CLI_LAYER and (reads := _reads_across(ast.parse(path.read_text())))
    }
    assert found == {}
    assert _reads_across(ast.parse("trainer.datamodule.dataset"))  # the check finds what it looks for
