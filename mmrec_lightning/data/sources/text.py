"""Plain text from the cells of a raw item table (at prepare) and from stored texts (at load): HTML entities
decoded, tags and control characters removed, whitespace collapsed."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

# Tags that break a line become a space; the others (<b>, <span>, …) sit inside words and phrases and vanish.
_BREAK_TAG = re.compile(r"<\s*/?\s*(?:br|p|div|li|ul|ol|tr|td|th|h[1-6]|hr|table|blockquote|section)\b[^<>]*>", re.I)
_TAG = re.compile(r"<!--.*?-->|<\s*/?\s*[A-Za-z][^<>]*>", re.DOTALL)
_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")


def is_missing(value: object) -> bool:
    """Whether a cell is empty: None, NaN or pandas' NA."""
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def clean_text(value: object) -> str | None:
    """Plain text from a cell: HTML entities decoded, tags and control characters removed, whitespace
    collapsed; None when empty.
    A list (Amazon's descriptions) is joined with spaces."""
    if isinstance(value, (list, tuple, np.ndarray)):
        value = " ".join(str(part) for part in value if not is_missing(part))
    elif is_missing(value):
        return None
    # Unescape first: some dumps escape their markup twice ("&lt;br&gt;").
    text = _TAG.sub("", _BREAK_TAG.sub(" ", html.unescape(str(value))))
    text = _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()
    return text or None


def join_text(items: pd.DataFrame, columns: Sequence[str]) -> list[str | None]:
    """Each item's cleaned text; several columns are joined with their names, ``title: … | overview: …``."""
    if not columns:
        return [None] * len(items)
    cleaned = {column: [clean_text(value) for value in items[column].tolist()] for column in columns}
    if len(columns) == 1:
        return cleaned[columns[0]]
    rows = zip(*cleaned.values(), strict=True)
    return [
        " | ".join(f"{name}: {text}" for name, text in zip(columns, row, strict=True) if text) or None for row in rows
    ]
