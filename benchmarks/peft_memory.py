"""Full fine-tuning against LoRA: peak memory and time per training step of large encoders, on CPU.

    python benchmarks/peft_memory.py [--encoders vit_base bert_base] [--batch 8] [--steps 5] [--threads 1]

The encoders are the package's, randomly initialised (nothing is downloaded; the weights' values do not change
memory or time): ``vit_base`` is ``TimmImageEncoder("vit_base_patch16_224")`` on 224 px images, ``bert_base`` an
``HFTextEncoder`` built from a BERT-base ``BertConfig`` (12 layers, 768 wide) on 64 tokens, ``vit_small``
``vit_small_patch16_224``. Each is trained twice, every weight trainable ("full") and with a LoRA adapter (rank 8,
alpha 16) on its attention's projections, each time in a child process of its own, so that neither run inherits
the other's freed memory: AdamW (weight decay 0.01) on the trainable weights, the mean square of the output
vectors as the loss, one warm-up step, then ``--steps`` timed steps (zero the gradients, forward, backward,
step).

Peak memory is the growth of the child's RSS high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``
once the encoder exists, as in ``large_catalogue.py``) over its RSS then: what training adds to the weights —
gradients and AdamW's two moments of the trainable weights (``3 x trainable x 4`` bytes, the "grad + AdamW"
column) and the activations kept for the backward pass. Prints the machine, a table with the ratios LoRA / full,
and writes ``benchmarks/results/peft_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MB = 2**20
ENCODERS = ("vit_small", "vit_base", "bert_base")
MODES = ("full", "lora")
TOKENS = 64
LORA_TARGETS = {"vit_small": ["qkv", "proj"], "vit_base": ["qkv", "proj"], "bert_base": ["query", "value"]}
BERT_BASE = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}


def memory_kb(field: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of ``/proc/self/status``, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def build(encoder: str, mode: str, batch: int):
    """The encoder and a ``batch`` of its input (seeded)."""
    import torch

    from mmrec_lightning.encoders.adapters import LoRA
    from mmrec_lightning.encoders.image import TimmImageEncoder
    from mmrec_lightning.encoders.text import HFTextEncoder

    torch.manual_seed(0)
    adapter = LoRA(LORA_TARGETS[encoder], r=8, alpha=16.0) if mode == "lora" else None
    if encoder == "bert_base":
        # the tokenizer is named only because the encoder asks for one; it is never loaded (the batch is token ids)
        model = HFTextEncoder(config=BERT_BASE, tokenizer="bert-base-uncased", max_length=TOKENS, adapter=adapter)
        return model, (torch.randint(1000, BERT_BASE["vocab_size"], (batch, TOKENS)), torch.ones(batch, TOKENS))
    name = f"{encoder}_patch16_224"
    model = TimmImageEncoder(name, pretrained=False, image_size=224, adapter=adapter)
    return model, (torch.randn(batch, 3, 224, 224),)  # float input: taken as normalised already


def child(encoder: str, mode: str, steps: int, batch: int) -> dict:
    """One encoder trained in one mode, in this process: its sizes, step times and peak memory growth."""
    import torch

    model, inputs = build(encoder, mode, batch)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01)
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark from here: what training adds
    before = memory_kb("VmRSS")
    times = []
    for _ in range(1 + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(*inputs).pow(2).mean().backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {
        "encoder": encoder,
        "mode": mode,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / MB,
        "grad_adamw_mb": 3 * sum(p.numel() * p.element_size() for p in trainable) / MB,
        "rss_before_mb": before / 1024,
        "peak_growth_mb": (memory_kb("VmHWM") - before) / 1024,
        "warmup_s": times[0],
        "step_s": times[1:],
        "median_step_s": statistics.median(times[1:]),
    }


def run_child(encoder: str, mode: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, __file__, "--child", encoder, mode, "--batch", str(args.batch)]
    command += ["--steps", str(args.steps), "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{encoder} {mode}: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(result: dict) -> str:
    from peers import describe

    lines = [
        describe(result["machine"]),
        f"batch {result['batch']} (images 224 px, texts {TOKENS} tokens), {result['steps']} timed steps after 1 "
        f"warm-up, {result['threads']} thread(s); 1-min load average {result['load_average']:.2f}",
        f"{'encoder':<11}{'mode':<6}{'params M':>9}{'trainable':>12}{'weights MB':>11}{'grad+AdamW MB':>14}"
        f"{'peak growth MB':>15}{'s/step':>8}",
    ]
    for run in result["runs"]:
        lines.append(
            f"{run['encoder']:<11}{run['mode']:<6}{run['parameters'] / 1e6:>9.1f}{run['trainable']:>12,}"
            f"{run['weights_mb']:>11.0f}{run['grad_adamw_mb']:>14.0f}{run['peak_growth_mb']:>15.0f}"
            f"{run['median_step_s']:>8.2f}"
        )
    for encoder, ratio in result["ratios"].items():
        lines.append(
            f"{encoder}: LoRA / full — trainable {ratio['trainable']:.4f}, peak growth {ratio['peak_growth']:.2f}, "
            f"s/step {ratio['step_s']:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", choices=ENCODERS, default=["vit_base", "bert_base"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after one warm-up step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS of each child)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "peft_memory.json"))
    parser.add_argument("--child", nargs=2, metavar=("ENCODER", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(child(*args.child, args.steps, args.batch)))
        return None

    from peers import machine
    from results_file import publish

    runs = [run_child(encoder, mode, args) for encoder in args.encoders for mode in MODES]
    by = {(run["encoder"], run["mode"]): run for run in runs}
    ratios = {
        encoder: {
            key: by[encoder, "lora"][field] / by[encoder, "full"][field]
            for key, field in (
                ("trainable", "trainable"),
                ("peak_growth", "peak_growth_mb"),
                ("step_s", "median_step_s"),
            )
        }
        for encoder in args.encoders
    }
    info = machine()
    info["threads"] = args.threads  # the children's, not this process's
    result = {
        "machine": info,
        "batch": args.batch,
        "steps": args.steps,
        "threads": args.threads,
        "load_average": os.getloadavg()[0],
        "runs": runs,
        "ratios": ratios,
    }
    publish(table(result), result, args.output)
    return result


if __name__ == "__main__":
    main()
