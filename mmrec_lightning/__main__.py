"""``python -m mmrec_lightning <command>``: fit / validate / test / predict (LightningCLI) and prepare."""

from __future__ import annotations

import sys

from mmrec_lightning.errors import find_configuration_error

COMMANDS = """usage: python -m mmrec_lightning <command> [options]

commands:
  fit, validate, test, predict   train and evaluate models (LightningCLI; --config FILE, --help)
  prepare                        build a prepared dataset from a raw source (--help)
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
    elif command in {"fit", "validate", "test", "predict"}:
        from mmrec_lightning.cli import RecommenderCLI

        RecommenderCLI()
    else:
        print(COMMANDS, end="")
        sys.exit(0 if command in {None, "-h", "--help"} else 2)


if __name__ == "__main__":
    main()
