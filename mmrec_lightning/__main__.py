"""``python -m mmrec_lightning <command>``: one table of commands, from which both the dispatch and the usage
text are made. A command's module is imported only when it runs, so ``prepare`` starts without torch."""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

from mmrec_lightning.errors import find_configuration_error


class Command(NamedTuple):
    """A command: its help line, and the ``module:function`` run with ``[*before, *arguments, *after]``."""

    help: str
    target: str
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


TRAINING = "train and evaluate models (LightningCLI; --config FILE, --help)"
COMMANDS: dict[str, Command] = {
    **{name: Command(TRAINING, "mmrec_lightning.cli:main", (name,)) for name in ("fit", "validate", "test", "predict")},
    "prepare": Command("build a prepared dataset from a raw source (--help)", "mmrec_lightning.data.prepare:main"),
    "pack": Command(
        "write the items' images and text as litData shards, to stream from disk or object store (--help)",
        "mmrec_lightning.data.pack:main",
    ),
    "extract-features": Command(
        "encode the catalogue once, store item features for training (--help)", "mmrec_lightning.features.extract:main"
    ),
    "export": Command(
        "a trained model's user and item vectors with FAISS indexes (as predict: --config FILE --ckpt_path "
        "CHECKPOINT; --export.index exact|approximate|auto)",
        "mmrec_lightning.cli:main",
        ("predict",),
        ("--export.enabled=true",),
    ),
    "recommend": Command(
        "top-K for a user, similar items, or items like a new image/text (--help)",
        "mmrec_lightning.export.recommend:main",
    ),
    "serve": Command(
        "an export behind HTTP on LitServe: /recommend, /similar, /items (new items, added live) (--help)",
        "mmrec_lightning.serve.server:main",
    ),
    "sweep": Command(
        "hyper-parameter search with Optuna, chosen on validation, tested once (--help)",
        "mmrec_lightning.tuning.sweep:main",
    ),
}


def usage() -> str:
    """The usage text: the training commands on one line, then one line per other command."""
    training = [name for name, command in COMMANDS.items() if command.help == TRAINING]
    lines = [f"  {', '.join(training):<30} {TRAINING}"]
    lines += [f"  {name:<30} {command.help}" for name, command in COMMANDS.items() if command.help != TRAINING]
    return "usage: python -m mmrec_lightning <command> [options]\n\ncommands:\n" + "\n".join(lines) + "\n"


def run(argv: list[str]) -> None:
    command = COMMANDS.get(argv[0]) if argv else None
    if command is None:
        print(usage(), end="")
        sys.exit(0 if not argv or argv[0] in {"-h", "--help"} else 2)
    module, function = command.target.split(":")
    getattr(importlib.import_module(module), function)([*command.before, *argv[1:], *command.after])


def main() -> None:
    try:
        run(sys.argv[1:])
    except Exception as error:
        problem = find_configuration_error(error)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
