"""The report's sample users: their recent training items, the model's top-K for them with each item's
modality weights, and their held-out test items; and the distribution of the modality weights over the
catalogue. Computed with the trained model on the evaluation path, from the loaders the test just used."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from mmrec_lightning.evaluation import CATALOGUE, USERS

WEIGHT_BINS = 20


@dataclass(frozen=True)
class Recommendation:
    """One recommended item: its rank is its place in the list."""

    item: int
    score: float
    weights: dict[str, float]
    """The item's fusion weight per modality (empty for models without modalities)."""
    hit: bool
    """Whether the item is one of the user's held-out test items."""


@dataclass(frozen=True)
class SampleUser:
    user: int
    history: list[int]
    """The user's most recent training items, most recent first."""
    recommendations: list[Recommendation]
    held_out: list[int]
    """The user's test items."""


@dataclass(frozen=True)
class WeightHistogram:
    """How the fusion weight of each modality is distributed over the catalogue's items."""

    modalities: list[str]
    counts: np.ndarray
    """``[modalities, WEIGHT_BINS]`` items per weight bin; the bins split [0, 1] evenly."""
    means: np.ndarray
    """``[modalities]`` mean weight over the catalogue."""


@dataclass(frozen=True)
class Gallery:
    samples: list[SampleUser]
    modalities: list[str]
    histogram: WeightHistogram | None


def compute_gallery(
    trainer: L.Trainer, module: L.LightningModule, num_users: int, top_k: int, history: int, seed: int
) -> Gallery:
    """The sample users' top-``top_k`` (at most the model's largest K) and the catalogue's modality weights,
    from the model's own ``predict_step`` over the test's catalogue loader and a batch of ``num_users`` test
    users drawn with ``seed``. A collective under DDP: every rank encodes its share of the catalogue."""
    catalogue_loader, users_loader = (trainer.test_dataloaders[i] for i in (CATALOGUE, USERS))
    train = module.data_facts.train
    users = users_loader.dataset
    drawn = np.random.default_rng(seed).permutation(len(users))
    drawn = drawn[train.lengths()[users.users[drawn]] > 0][:num_users].tolist()  # users with a history to show
    if not drawn:
        return Gallery([], [], None)
    examples = users_loader.collate_fn(users.__getitems__(drawn))
    modalities = list(module.item_output_columns.get("modality_weights", []))
    weights: list[torch.Tensor] = []  # every catalogue item's modality weights, for multimodal models
    module.on_predict_epoch_start()  # a prediction epoch by hand: start from an empty catalogue table
    with torch.inference_mode(), trainer.precision_plugin.predict_step_context():
        for index, batch in enumerate(catalogue_loader):
            encoded = module.predict_step(trainer.strategy.batch_to_device(batch), index, CATALOGUE)
            if "modality_weights" in encoded:
                weights.append(encoded["modality_weights"].float())
        prediction = module.predict_step(trainer.strategy.batch_to_device(examples), 0, USERS)
    histogram = _histogram(trainer, modalities, weights, module.device) if modalities else None
    items = prediction["items"][:, :top_k].tolist()
    scores = prediction["scores"][:, :top_k].tolist()
    item_weights = prediction.get("modality_weights")
    item_weights = None if item_weights is None else item_weights[:, :top_k].float().tolist()
    samples = []
    for row, user in enumerate(examples["users"].tolist()):
        held_out = examples["target_items"][examples["target_rows"] == row].tolist()
        recommendations = [
            Recommendation(
                item=item,
                score=score,
                weights={} if item_weights is None else dict(zip(modalities, item_weights[row][rank], strict=True)),
                hit=item in held_out,
            )
            for rank, (item, score) in enumerate(zip(items[row], scores[row], strict=True))
        ]
        recent = train.row(user)[::-1][:history].tolist()
        samples.append(SampleUser(user, recent, recommendations, held_out))
    return Gallery(samples, modalities, histogram)


def _histogram(
    trainer: L.Trainer, modalities: list[str], weights: list[torch.Tensor], device: torch.device
) -> WeightHistogram:
    """Bin counts and sums of this rank's items, summed over ranks (each rank saw its share of the catalogue,
    possibly none of it)."""
    table = torch.cat(weights) if weights else torch.zeros(0, len(modalities), device=device)
    counts = torch.stack([torch.histc(table[:, m], WEIGHT_BINS, min=0.0, max=1.0) for m in range(table.shape[1])])
    totals = torch.cat([counts, table.sum(0, keepdim=True).T], dim=1)
    totals = trainer.strategy.reduce(totals, reduce_op="sum").cpu().numpy()
    counts, sums = totals[:, :-1], totals[:, -1]
    return WeightHistogram(modalities, counts, sums / max(counts[0].sum(), 1.0))
