"""The error users see as one line: a bad config, bad input data, or a missing file, with what to do."""

from __future__ import annotations

import re
from collections.abc import Iterator


class ConfigurationError(ValueError):
    """Raised for anything the user can fix in their config, command line or data. The command-line entry
    point prints its message alone (no traceback), even when it surfaces inside config instantiation."""


def causes(error: BaseException, implicit: bool = False) -> Iterator[BaseException]:
    """``error`` and its explicit causes (``raise … from``), outermost first; with ``implicit``, also the
    exceptions being handled when each was raised."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (current.__context__ if implicit else None)


def find_configuration_error(error: BaseException) -> ConfigurationError | None:
    """The first :class:`ConfigurationError` in the chain of causes of ``error``, if any."""
    return next((e for e in causes(error, implicit=True) if isinstance(e, ConfigurationError)), None)


def reason(error: BaseException) -> str:
    """``Type: message`` of an exception for a warning, without the Python object reprs some libraries put in
    their messages (PIL: ``cannot identify image file <_io.BytesIO object at 0x…>``): messages name files and
    items, never memory addresses."""
    message = re.sub(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>", "", str(error)).strip()
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
