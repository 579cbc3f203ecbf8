"""What every benchmark ends with: its table printed, its numbers written to JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def publish(table: str, result: dict[str, Any], output: str | Path) -> None:
    """Print ``table`` and write ``result`` to ``output`` (its folder made if missing)."""
    print(table)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
