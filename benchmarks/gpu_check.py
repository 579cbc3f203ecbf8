"""GPU check: end-to-end training throughput against the encoders' own, bf16 and fp16 AMP, gradient
checkpointing, peak memory, DDP.

    python benchmarks/gpu_check.py                 # on a GPU machine (about 4 minutes on one H100)
    python benchmarks/gpu_check.py --smoke         # the same path on CPU with tiny models

End to end: the real DataModule (decode, augment, tokenise in workers) and MultimodalRecommender with a
ResNet-50 image encoder at 224 px and a MiniLM-size text encoder (6 layers, 384 wide; random weights, so
nothing is downloaded), trained with ``precision="bf16-mixed"``, alone and with the ``NonFiniteGuard`` that
the command line adds to every run. Upper bound: the same two encoders' forward + backward under bf16
autocast on the same batches, already on the GPU. Then: ``16-mixed`` training and validation (finite float32
loss and metrics), peak memory with gradient checkpointing in both encoders, and ``strategy="ddp"`` with one
device. Prints a table and writes ``benchmarks/results/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from results_file import publish

from mmrec_lightning.callbacks import NonFiniteGuard
from mmrec_lightning.connect import connect
from mmrec_lightning.data.schema import write_prepared
from mmrec_lightning.data.sources.synthetic import CATEGORIES, MATERIALS, STYLES, SyntheticSpec, generate
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.encoders.image import TimmImageEncoder
from mmrec_lightning.encoders.text import HFTextEncoder
from mmrec_lightning.models import MultimodalRecommender

MINILM = {
    "model_type": "bert", "vocab_size": 256, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
    "intermediate_size": 1536, "max_position_embeddings": 128,
}  # fmt: skip
TINY = {**MINILM, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def write_tokenizer(directory: Path) -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [*CATEGORIES, *MATERIALS, *STYLES, "made of", "great gift", "ships fast"]
    tokenizer.train_from_iterator(words, trainers.WordPieceTrainer(vocab_size=256, special_tokens=specials))
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    ).save_pretrained(directory)
    return str(directory)


class StepTimer(L.Callback):
    """Wall time from training step ``warmup`` to the end of training, and the examples those steps held.
    The GPU is synchronised only at the two ends, so the host runs ahead of the GPU as in any training run."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.examples = 0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync()
            self.start = time.perf_counter()
        if batch_idx >= self.warmup:
            self.examples += len(batch["users"])

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync()
        self.end = time.perf_counter()

    @property
    def examples_per_s(self) -> float:
        return self.examples / (self.end - self.start)


def build(
    args, data_path: str, tokenizer: str, grad_checkpointing: bool = False
) -> tuple[MultimodalRecommender, RecDataModule]:
    L.seed_everything(0)
    image = TimmImageEncoder(args.image_model, image_size=args.image_size, grad_checkpointing=grad_checkpointing)
    text = HFTextEncoder(
        config=args.text_config, tokenizer=tokenizer, max_length=32, grad_checkpointing=grad_checkpointing
    )
    model = MultimodalRecommender(
        num_users=args.users, num_items=args.items, num_categories=len(CATEGORIES), embed_dim=128, top_k=[10, 20],
        image_encoder=image, text_encoder=text,
    )  # fmt: skip
    data = RecDataModule(
        path=data_path, batch_size=args.batch_size, history_length=0, num_workers=args.workers, pin_memory=args.gpu
    )
    connect(model, data)
    return model, data


def encoder_bound(model: MultimodalRecommender, data: RecDataModule, batches: int, repeats: int) -> float:
    """Examples per second of image + text encoder forward and backward alone, on batches already on device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).train()
    data.setup("fit")
    loader = iter(data.train_dataloader())
    held = []
    for _ in range(batches):
        batch = next(loader)
        items = {k: v.to(device, non_blocking=True) for k, v in batch["items"].items()}
        held.append((len(batch["users"]), items))
    tower = model.item_tower
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step(items):
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            image = tower.image_encoder(items["image"])
            text = tower.text_encoder(items["input_ids"], items["attention_mask"])
        (image.float().sum() + text.float().sum()).backward()

    for _, items in held:  # one untimed pass: cuDNN's plans for these shapes are built, as in a long run
        step(items)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, examples = time.perf_counter(), 0
    for _ in range(repeats):
        for size, items in held:
            step(items)
            examples += size
    if device.type == "cuda":
        torch.cuda.synchronize()
    return examples / (time.perf_counter() - start)


def loader_throughput(model: MultimodalRecommender, data: RecDataModule, batches: int) -> float:
    """Examples per second of the training loader alone (workers decoding, augmenting, tokenising)."""
    data.setup("fit")
    loader = iter(data.train_dataloader())
    next(loader)  # workers started
    start, examples = time.perf_counter(), 0
    for _ in range(batches):
        examples += len(next(loader)["users"])
    return examples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU: checks the script, not speed")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "gpu_check.json"))
    parser.add_argument("--workers", type=int, default=12, help="data-loader workers on a GPU machine")
    args = parser.parse_args()
    workers = args.workers
    args.gpu = torch.cuda.is_available() and not args.smoke
    smoke = args.smoke
    args.users, args.items = (60, 40) if smoke else (2000, 2000)
    args.image_model, args.image_size = ("test_resnet", 32) if smoke else ("resnet50", 224)
    args.text_config = TINY if smoke else MINILM
    args.batch_size, args.workers = (16, 0) if smoke else (128, workers)
    # warm-up long enough that most batch shapes (distinct items per batch, text lengths) have been seen
    steps, warmup = (6, 2) if smoke else (120, 60)
    torch.set_float32_matmul_precision("high")

    result: dict = {"device": torch.cuda.get_device_name() if args.gpu else "cpu", "smoke": smoke}
    with tempfile.TemporaryDirectory() as tmp:
        source = generate(SyntheticSpec(users=args.users, items=args.items, image_size=32 if smoke else 128))
        data_path = str(Path(tmp) / "data")
        write_prepared(
            data_path,
            interactions=source.interactions,
            items=source.items,
            users=source.users,
            metadata=source.metadata,
        )
        tokenizer = write_tokenizer(Path(tmp) / "tokenizer")
        trainer_args = {
            "accelerator": "gpu" if args.gpu else "cpu", "devices": 1, "max_epochs": 1, "limit_train_batches": steps,
            "limit_val_batches": 0, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": tmp,
        }  # fmt: skip
        precision = "bf16-mixed" if args.gpu else "32-true"

        def train(callbacks: list, **overrides) -> tuple[MultimodalRecommender, L.Trainer]:
            model, data = build(args, data_path, tokenizer, overrides.pop("grad_checkpointing", False))
            if args.gpu:
                torch.cuda.reset_peak_memory_stats()
            trainer = L.Trainer(callbacks=callbacks, **{**trainer_args, "precision": precision, **overrides})
            trainer.fit(model, datamodule=data)
            return model, trainer

        def peak_gb() -> float | None:
            return torch.cuda.max_memory_allocated() / 2**30 if args.gpu else None

        timer = StepTimer(warmup)
        model, _ = train([timer])
        result["end_to_end_examples_per_s"] = timer.examples_per_s
        result["peak_gpu_memory_gb"] = peak_gb()
        result["final_loss_finite"] = bool(torch.isfinite(model.trainer.callback_metrics["train/loss"]))

        guarded = StepTimer(warmup)
        train([guarded, NonFiniteGuard()])
        result["end_to_end_with_guard_examples_per_s"] = guarded.examples_per_s

        model, data = build(args, data_path, tokenizer)
        result["encoders_examples_per_s"] = encoder_bound(
            model, data, batches=4 if smoke else 10, repeats=1 if smoke else 3
        )
        result["ratio"] = result["end_to_end_examples_per_s"] / result["encoders_examples_per_s"]
        result["ratio_with_guard"] = result["end_to_end_with_guard_examples_per_s"] / result["encoders_examples_per_s"]
        result["loader_examples_per_s"] = loader_throughput(model, data, batches=4 if smoke else 40)

        fp16_precision = "16-mixed" if args.gpu else "32-true"
        model, trainer = train([], precision=fp16_precision, limit_train_batches=10, limit_val_batches=1.0)
        metrics = trainer.callback_metrics
        result["fp16_loss_and_metrics_finite_float32"] = all(
            bool(torch.isfinite(metrics[name])) and metrics[name].dtype == torch.float32
            for name in ("train/loss", "val/recall@20", "val/ndcg@20")
        )

        train([], limit_train_batches=10, grad_checkpointing=True)
        result["peak_gpu_memory_grad_checkpointing_gb"] = peak_gb()

        _, ddp = train([], strategy="ddp", limit_train_batches=5)
        result["ddp_devices_1_ok"] = ddp.state.finished and ddp.global_step == 5

    def gigabytes(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "-"

    rows = [
        ("device", result["device"]),
        ("end-to-end examples/s (bf16)", f"{result['end_to_end_examples_per_s']:.0f}"),
        ("  with NonFiniteGuard", f"{result['end_to_end_with_guard_examples_per_s']:.0f}"),
        ("encoders fwd+bwd examples/s", f"{result['encoders_examples_per_s']:.0f}"),
        ("ratio", f"{result['ratio']:.2f}"),
        ("  with NonFiniteGuard", f"{result['ratio_with_guard']:.2f}"),
        (f"loader alone examples/s ({args.workers} workers)", f"{result['loader_examples_per_s']:.0f}"),
        ("peak GPU memory (GB)", gigabytes(result["peak_gpu_memory_gb"])),
        ("  with grad checkpointing", gigabytes(result["peak_gpu_memory_grad_checkpointing_gb"])),
        ("bf16 loss finite", str(result["final_loss_finite"])),
        ("16-mixed loss, val metrics finite fp32", str(result["fp16_loss_and_metrics_finite_float32"])),
        ("DDP, devices=1", "ok" if result["ddp_devices_1_ok"] else "FAILED"),
    ]
    publish("\n".join(f"{name:40}{value}" for name, value in rows), result, args.output)


if __name__ == "__main__":
    main()
