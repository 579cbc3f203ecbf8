"""``python -m mmrec_lightning <command>``: fit / validate / test / predict (LightningCLI), prepare,
extract-features, export, recommend and sweep."""

from __future__ import annotations

import sys

from mmrec_lightning.errors import find_configuration_error

COMMANDS = """usage: python -m mmrec_lightning <command> [options]

commands:
  fit, validate, test, predict   train and evaluate models (LightningCLI; --config FILE, --help)
  prepare                        build a prepared dataset from a raw source (--help)
  extract-features               encode the catalogue once, store item features for training (--help)
  export                         a trained model's user and item vectors with FAISS indexes (as predict:
                                 --config FILE --ckpt_path CHECKPOINT; --export.index exact|approximate|auto)
  recommend                      top-K for a user, similar items, or items like a new image/text (--help)
  sweep                          hyper-parameter search with Optuna, chosen on validation, tested once (--help)
"""


def main() -> None:
    try:
        run(sys.argv[1] if len(sys.argv) > 1 else None)
    except Exception as error:
        problem = find_configuration_error(error)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def run(command: str | None) -> None:
    if command == "prepare":
        from mmrec_lightning.data.prepare import main as prepare

        prepare(sys.argv[2:])
    elif command == "extract-features":
        from mmrec_lightning.extract import main as extract

        extract(sys.argv[2:])
    elif command in {"fit", "validate", "test", "predict"}:
        from mmrec_lightning.cli import RecommenderCLI

        RecommenderCLI()
    elif command == "export":
        from mmrec_lightning.cli import RecommenderCLI

        RecommenderCLI(args=["predict", *sys.argv[2:], "--export.enabled=true"])
    elif command == "sweep":
        from mmrec_lightning.tuning.sweep import main as sweep

        sweep(sys.argv[2:])
    elif command == "recommend":
        from mmrec_lightning.export.recommend import main as recommend

        recommend(sys.argv[2:])
    else:
        print(COMMANDS, end="")
        sys.exit(0 if command in {None, "-h", "--help"} else 2)


if __name__ == "__main__":
    main()
