"""Reading the files of a raw source: checking that they exist, reading delimited text and Parquet tables, and
turning their columns into ids, numbers and seconds, with errors that name the file and row at fault."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmrec_lightning.errors import ConfigurationError

PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class FileRows:
    """Names a data row of a file in messages: ``line N`` of a text file, ``row N`` of a Parquet file.

    Args:
        path: the file.
        first_line: the line of the first data row (2 below a header); None for a file without lines.
    """

    path: Path
    first_line: int | None

    def __call__(self, position: int) -> str:
        if self.first_line is None:
            return f"{self.path} row {position + 1}"
        return f"{self.path} line {position + self.first_line}"


def require_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a file, else a ConfigurationError saying what the file was for."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"{path}: file not found ({what})")
    return path


def require_folder(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ConfigurationError(f"{path}: folder not found ({what})")
    return path


def _check_columns(found: Sequence[str], expected: Sequence[str], path: Path, sep: str | None) -> None:
    missing = [c for c in expected if c not in found]
    if not missing:
        return
    if sep is not None and len(found) == 1 and len(expected) > 1:
        raise ConfigurationError(
            f"{path}: read as the single column {found[0]!r} with delimiter {sep!r}; is the file delimited by "
            f"something else? (expected columns {list(expected)})"
        )
    raise ConfigurationError(f"{path}: missing column(s) {missing}; expected {list(expected)}, found {list(found)}")


def read_delimited(
    path: Path,
    sep: str,
    columns: Sequence[str],
    *,
    optional: Sequence[str] = (),
    header: bool = True,
    encoding: str = "utf-8-sig",
    quoted: bool = True,
    encoding_option: str | None = None,
) -> pd.DataFrame:
    """Read ``columns`` of a delimited text file, every cell a string (ids keep their leading zeros) and only
    empty cells missing. Without a header, ``columns`` name the fields in order and their count must match.

    Args:
        path: the file.
        sep: the field separator; one of several characters (MovieLens ``::``) is supported too.
        columns: the columns to read.
        optional: columns read when the header has them.
        header: whether the first line names the columns.
        encoding: the text encoding (default UTF-8, with or without a byte-order mark).
        quoted: whether fields may be quoted (MovieLens titles hold bare quotes: pass False).
        encoding_option: the option that sets ``encoding``, named in the error for a file in another encoding.
    """
    fix = f"; give its encoding with {encoding_option} (e.g. latin-1, cp1252)" if encoding_option else ""
    source: Path | io.StringIO = path
    if len(sep) > 1:  # the fast C parser takes one character: swap the separator for a control character
        try:
            source = io.StringIO(path.read_text(encoding=encoding).replace(sep, "\x1f"))
        except UnicodeDecodeError as error:
            raise _not_text(path, encoding, error, fix) from None
    options: dict[str, Any] = {
        "sep": "\x1f" if len(sep) > 1 else sep,
        "dtype": str,
        "keep_default_na": False,
        "na_values": [""],
        "encoding": encoding,
        "quoting": csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
    }
    try:
        if not header:
            frame = pd.read_csv(source, header=None, **options)
            if frame.shape[1] != len(columns):
                raise ConfigurationError(
                    f"{path}: expected {len(columns)} fields separated by {sep!r} ({', '.join(columns)}), "
                    f"found {frame.shape[1]}"
                )
            frame.columns = list(columns)
            return frame
        found = list(pd.read_csv(source, nrows=0, **options).columns)
        _check_columns(found, columns, path, sep)
        if isinstance(source, io.StringIO):
            source.seek(0)
        wanted = [*columns, *(column for column in optional if column in found)]
        return pd.read_csv(source, usecols=list(dict.fromkeys(wanted)), **options)
    except pd.errors.EmptyDataError:
        raise ConfigurationError(f"{path} is empty") from None
    except pd.errors.ParserError as error:
        raise ConfigurationError(f"{path}: cannot be read with delimiter {sep!r} ({error})".strip()) from None
    except UnicodeDecodeError as error:
        raise _not_text(path, encoding, error, fix) from None


def _not_text(path: Path, encoding: str, error: UnicodeDecodeError, fix: str) -> ConfigurationError:
    return ConfigurationError(f"{path}: not {encoding} text ({error.reason} at byte {error.start}){fix}")


def read_table(
    path: Path, delimiter: str, columns: Sequence[str], encoding: str = "utf-8-sig", encoding_option: str | None = None
) -> tuple[pd.DataFrame, FileRows]:
    """Read ``columns`` of a Parquet file (by its extension) or a delimited text file with a header."""
    if path.suffix.lower() not in PARQUET_SUFFIXES:
        frame = read_delimited(path, delimiter, columns, encoding=encoding, encoding_option=encoding_option)
        return frame, FileRows(path, 2)
    try:
        found = pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid) as error:
        raise ConfigurationError(f"{path}: not a readable Parquet file ({error})") from None
    _check_columns(found, columns, path, None)
    return pd.read_parquet(path, columns=list(dict.fromkeys(columns))), FileRows(path, None)


def require_ids(column: pd.Series, name: str, at: FileRows) -> pd.Series:
    """A column of ids as stripped strings; an empty one is an error naming its row."""
    ids = column.astype(str).str.strip()
    empty = np.flatnonzero(column.isna().to_numpy() | (ids == "").to_numpy())
    if empty.size:
        raise ConfigurationError(f"{at(empty[0])}: empty {name} ({empty.size} such rows)")
    return ids


def to_numbers(column: pd.Series, name: str, at: FileRows) -> np.ndarray:
    """Floats from a column; a cell that is not a finite number is an error naming its row. Empty cells are NaN
    (missing)."""
    if pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        parsed = pd.to_numeric(column, errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy() & column.notna().to_numpy())
        if bad.size:
            raise ConfigurationError(
                f"{at(bad[0])}: {name} {column.iloc[bad[0]]!r} is not a number ({bad.size} such rows)"
            )
        values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    _require_finite(values, column, name, at)
    return values


def _require_finite(values: np.ndarray, column: pd.Series, name: str, at: FileRows) -> None:
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        raise ConfigurationError(
            f"{at(infinite[0])}: {name} {column.iloc[infinite[0]]!r} is not a finite number ({infinite.size} such rows)"
        )


def to_seconds(column: pd.Series, name: str, at: FileRows) -> np.ndarray:
    """Seconds since 1970 from numbers (taken as seconds) or ISO 8601 dates / date-times (UTC unless they say),
    cell by cell: a column may mix the two."""
    empty = np.flatnonzero(column.isna().to_numpy())
    if empty.size:
        raise ConfigurationError(f"{at(empty[0])}: empty {name} ({empty.size} such rows)")
    if pd.api.types.is_datetime64_any_dtype(column):
        return _since_1970(pd.to_datetime(column, utc=True))
    numbers = pd.to_numeric(column, errors="coerce")
    seconds = numbers.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)  # filled in below
    _require_finite(seconds, column, name, at)
    dated = np.flatnonzero(np.isnan(seconds))
    if dated.size:
        texts = column.iloc[dated].astype(str)
        dates = pd.to_datetime(texts, format="ISO8601", utc=True, errors="coerce")
        bad = np.flatnonzero(dates.isna().to_numpy())
        if bad.size:
            row = dated[bad[0]]
            raise ConfigurationError(
                f"{at(row)}: {name} {column.iloc[row]!r} is neither a number of seconds nor an ISO date "
                f"({bad.size} such rows)"
            )
        seconds[dated] = _since_1970(dates)
    return seconds.astype(np.int64)


def _since_1970(dates: pd.Series) -> np.ndarray:
    # independent of the datetime resolution (pandas 3 infers seconds or microseconds)
    return ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
