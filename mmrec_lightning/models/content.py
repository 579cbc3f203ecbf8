"""What the models that read precomputed item features (VBPR, FREEDOM) share: checking the feature arguments
and projecting the features of a batch of items."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.encoder import ItemFeatures


def checked_features(num_items: int, **modalities: ItemFeatures | None) -> dict[str, ItemFeatures]:
    """The feature matrices that are set, by modality (the model argument ``<modality>_features``), in the
    order given; each must have one row per item, and at least one must be set."""
    given = {modality: matrix for modality, matrix in modalities.items() if matrix is not None}
    if not given:
        names = " or ".join(f"model.{modality}_features" for modality in modalities)
        raise ConfigurationError(
            f"{names}: set at least one, e.g. {{class_path: mmrec_lightning.features.ItemFeatures, "
            "init_args: {path: <dataset>/features/image_feat.npy}}"
        )
    for modality, matrix in given.items():
        matrix.check_rows(num_items, f"model.{modality}_features")
    return given


class _GatheredLinear(torch.autograd.Function):
    """``F.linear(features(items), weight, bias)`` with the gathered rows in ``features``' reused block (see
    ``ItemFeatures.gather``): one product each way, no per-step allocation of the rows. The backward reuses
    the rows when no other gather has replaced them since, and gathers them again otherwise."""

    @staticmethod
    def forward(ctx, weight, bias, features: ItemFeatures, items: torch.Tensor) -> torch.Tensor:
        rows = features.gather(items)
        ctx.features, ctx.gather_number = features, features.gathers
        ctx.save_for_backward(items)
        ctx.dtypes = weight.dtype, None if bias is None else bias.dtype
        return _linear(rows, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (items,) = ctx.saved_tensors
        rows = ctx.features.gathered(items, ctx.gather_number)
        grad = grad.to(rows.dtype)  # under autocast the output, and so its gradient, is in the lower precision
        weight_dtype, bias_dtype = ctx.dtypes
        grad_weight = (grad.T @ rows).to(weight_dtype) if ctx.needs_input_grad[0] else None
        grad_bias = grad.sum(0).to(bias_dtype) if bias_dtype is not None and ctx.needs_input_grad[1] else None
        return grad_weight, grad_bias, None, None


def _linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` in the features' dtype (bfloat16 features: a bfloat16 product, float32 accumulation),
    returned in the weight's."""
    if rows.dtype == weight.dtype:
        return F.linear(rows, weight, bias)
    bias = None if bias is None else bias.to(rows.dtype)
    return F.linear(rows, weight.to(rows.dtype), bias).to(weight.dtype)


@torch.compiler.disable  # a traced backward would not see whether the reused rows were replaced since
def project(
    features: ItemFeatures, items: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(features(items), weight, bias)``: the projected features of ``items``, or of every item when
    None."""
    if items is None:
        return _linear(features.matrix, weight, bias)
    return _GatheredLinear.apply(weight, bias, features, items)
