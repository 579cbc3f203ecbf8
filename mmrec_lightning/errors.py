"""The error users see as one line: a bad config, bad input data, or a missing file, with what to do."""


class ConfigurationError(ValueError):
    """Raised for anything the user can fix in their config, command line or data. The command-line entry
    point prints its message alone (no traceback), even when it surfaces inside config instantiation."""


def find_configuration_error(error: BaseException) -> ConfigurationError | None:
    """The first :class:`ConfigurationError` in the chain of causes of ``error``, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ConfigurationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
