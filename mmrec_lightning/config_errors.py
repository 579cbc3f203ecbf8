"""One-line explanations of the configuration mistakes that jsonargparse and checkpoint loading report at length:
an unknown key, a value of the wrong type, a class path that does not import, YAML that does not parse, and a
checkpoint whose parameters do not fit the configured model."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from mmrec_lightning.errors import causes

# jsonargparse states each step of a failed check as the message of one exception in a chain of causes:
# 'Parser key "model":' (a key), "Problem with given class_path 'x.Y':" (that class's init_args), then the reason.
KEY = re.compile(r'^Parser key "([^"]+)"')
CLASS = re.compile(r"^Problem with given class_path '([^']+)'")
OPTION = re.compile(r"^Option '([^']+)' is not accepted")
SUBCOMMAND_OPTION = re.compile(r"^Subcommand '[^']+' does not accept option '([^']+)'")
GROUP_OPTION = re.compile(r"^Group '([^']+)' does not accept option '([^']+)'")
UNION = re.compile(r"^Does not validate against any of the Union subtypes\nSubtypes: \[(.*)\]\n")
EXPECTED = re.compile(r"^Expected (?:a )?(.+?)\. Got value: (.*)")
CLASS_NAME = re.compile(r"^Expected a dot import path string: (.+)")
UNRECOGNIZED = re.compile(r"^unrecognized arguments: (\S+)")
TYPE_NAME = re.compile(r"<class '(?:builtins\.)?([\w.]+)'>|typing\.")
CLASS_REPR = re.compile(r"<class '([\w.]+)'>")
SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)
KEY_LISTED = re.compile(r'(Missing|Unexpected) key\(s\) in state_dict: "([^"]+)"')
SUBCOMMANDS = ("fit", "validate", "test", "predict")


@dataclass
class Trail:
    """Where a jsonargparse error points: the key path, the class whose init_args it is in, the types the key
    accepts when it accepts several (a Union, as jsonargparse writes it), and the reason."""

    path: list[str] = field(default_factory=list)
    class_path: str | None = None
    union: str | None = None
    reason: BaseException | None = None


def explain_parse_error(error: BaseException, args: Sequence[str], parser: Any) -> str:
    """One line saying what is wrong in the config files or command line, where, and how to fix it.

    Args:
        error: what jsonargparse raised (with ``exit_on_error=False``).
        args: the command line that was parsed, without the program name.
        parser: the subcommand's parser; its keys are the candidates for "did you mean".
    """
    trail = follow(error)
    where = Source(args)
    help_hint = f"see `python -m mmrec_lightning {next((a for a in args if a in SUBCOMMANDS), 'fit')} --help`"
    return f"{explain(trail, where, parser)}; {help_hint}"


def explain(trail: Trail, where: Source, parser: Any) -> str:
    """The problem found at the end of ``trail``, naming the key and where it was set."""
    reason = trail.reason
    message = str(reason).strip()
    if isinstance(reason, yaml.YAMLError):
        return where.unparsable_yaml(reason)
    if match := UNRECOGNIZED.match(message):
        option = match.group(1).split("=")[0]
        return f"{option} is not an option{did_you_mean(option, [f'--{key}' for key in parser_keys(parser)])}"
    if match := OPTION.match(message) or SUBCOMMAND_OPTION.match(message):
        key = ".".join([*trail.path, match.group(1)])
        return f"{where.of(key)} {unknown_option(key, trail.class_path, parser)}"
    if match := GROUP_OPTION.match(message):
        key = ".".join([*trail.path, *match.groups()])
        return f"{where.of(key)} {unknown_option(key, None, parser)}"
    if trail.class_path and trail.path[-1:] == ["init_args"] and isinstance(reason, ImportError | AttributeError):
        key = ".".join([*trail.path[:-1], "class_path"])
        return f"{where.of(key)} {unimportable_class(trail.class_path, reason)}"
    if match := CLASS_NAME.match(message):
        key, candidates = ".".join([*trail.path, "class_path"]), subclass_names(trail.union or "")
        return f"{where.of(key)} {match.group(1)!r} is not a known class{did_you_mean(match.group(1), candidates)}"
    if match := EXPECTED.match(message):
        expected = TYPE_NAME.sub(r"\1", " or ".join(split_types(trail.union)) if trail.union else match.group(1))
        given = match.group(2).splitlines()[0]
        return f"{where.of('.'.join(trail.path))} must be {expected}, got {given!r}"
    first_line = message.splitlines()[0] if message else type(reason).__name__
    return f"{where.of('.'.join(trail.path))}: {first_line}" if trail.path else first_line


def follow(error: BaseException) -> Trail:
    """Read the key path, the innermost class and the reason off jsonargparse's chain of causes."""
    trail = Trail()
    for link in causes(error):
        message = str(link)
        if match := KEY.match(message):
            keys = match.group(1).split(".")
            if trail.path[-len(keys) :] != keys:  # several wrappers restate the same key
                trail.path += keys
                trail.union = None
        elif match := CLASS.match(message):
            trail.class_path = match.group(1)
            trail.path.append("init_args")
            trail.union = None
        elif match := UNION.match(message):
            trail.union = match.group(1)
        trail.reason = link
    return trail


def parser_keys(parser: Any) -> list[str]:
    """Every key the parser accepts, dotted (``trainer.max_epochs``)."""
    return [action.dest for action in parser._actions if action.dest != "help" and not action.dest.endswith(".help")]


def unknown_option(key: str, class_path: str | None, parser: Any) -> str:
    """``is not an option of <owner> (did you mean …?)`` for an unknown ``key``."""
    if class_path is not None:
        owner, name = class_path.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1]
        return f"is not an option of {owner}{did_you_mean(name, init_options(class_path))}"
    group = parser.groups.get(key.rsplit(".", 1)[0]) if "." in key else None
    owner = getattr(group, "group_class", None)
    siblings = [other for other in parser_keys(parser) if other.count(".") == key.count(".")]
    return f"is not an option{f' of {owner.__name__}' if owner else ''}{did_you_mean(key, siblings)}"


def split_types(union: str) -> list[str]:
    """The types of a Union as jsonargparse lists them (``<class 'int'>, typing.Literal[1, 2]``), ``null`` for
    ``NoneType``."""
    types, depth, start = [], 0, 0
    for position, character in enumerate(union + ","):
        depth += {"[": 1, "]": -1}.get(character, 0)
        if character == "," and depth == 0:
            types.append(union[start:position].strip())
            start = position + 1
    return ["null" if kind == "<class 'NoneType'>" else kind for kind in types]


def subclass_names(union: str) -> list[str]:
    """The names of the imported subclasses of the classes in a Union: what a short class_path may name."""
    names, pending = [], [import_class(path) for path in CLASS_REPR.findall(union)]
    while pending:
        cls = pending.pop()
        if isinstance(cls, type):
            names.append(cls.__name__)
            pending += cls.__subclasses__()
    return names


def import_class(class_path: str) -> Any:
    """The object at ``class_path`` (``package.module.Name``), or ``None`` if it does not import."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def init_options(class_path: str) -> list[str]:
    """The keyword arguments of a class, following ``**kwargs`` up to its bases as jsonargparse does."""
    names: list[str] = []
    for klass in getattr(import_class(class_path), "__mro__", ()):
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def unimportable_class(class_path: str, reason: BaseException) -> str:
    """``'a.B' cannot be imported (…) (did you mean a.C?)``, suggesting the closest name in the module."""
    module = class_path.rpartition(".")[0]
    try:
        candidates = [f"{module}.{n}" for n in dir(importlib.import_module(module)) if not n.startswith("_")]
    except (ImportError, ValueError):
        candidates = []
    return f"{class_path!r} cannot be imported ({reason}){did_you_mean(class_path, candidates)}"


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {match[0]}?)" if match else ""


class Source:
    """Where the keys of one command line were set: on it, or in its ``--config`` files (later ones win)."""

    def __init__(self, args: Sequence[str]) -> None:
        self.options = [arg[2:].split("=")[0] for arg in args if arg.startswith("--")]
        self.configs = config_files(args)

    def of(self, key: str) -> str:
        """``key`` as the user wrote it: ``--key`` if on the command line, ``file: key`` if in a config file."""
        shorthand = key.replace(".init_args.", ".")  # jsonargparse also accepts --model.embed_dim
        if any(option in (key, shorthand) or key.startswith(f"{option}.") for option in self.options):
            return f"--{key}"
        for config in reversed(self.configs):
            written = read_yaml(config)
            for form in (key, shorthand):
                if sets(written, form.split(".")):
                    return f"{config}: {form}"
        return key

    def unparsable_yaml(self, error: yaml.YAMLError) -> str:
        """``file: not valid YAML (problem, line N)`` for the first config file that does not parse."""
        for config in self.configs:
            try:
                with open(config, encoding="utf-8") as file:
                    yaml.safe_load(file)
            except OSError:
                continue
            except yaml.YAMLError as problem:
                mark = getattr(problem, "problem_mark", None)
                line = f", line {mark.line + 1}" if mark is not None else ""
                return f"{config}: not valid YAML ({getattr(problem, 'problem', None) or problem}{line})"
        return f"a value given on the command line is not valid YAML ({' '.join(str(error).split())})"


def config_files(args: Sequence[str]) -> list[str]:
    """The files given with ``--config FILE``, ``--config=FILE`` or ``-c FILE``, in order."""
    files = []
    for flag, value in zip(args, [*args[1:], None], strict=True):
        if flag in ("--config", "-c") and value is not None:
            files.append(value)
        elif flag.startswith("--config="):
            files.append(flag.split("=", 1)[1])
    return files


def read_yaml(path: str) -> Any:
    """The parsed file, or ``None`` when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as file:
            return yaml.safe_load(file)
    except (OSError, yaml.YAMLError):
        return None


def sets(config: Any, keys: list[str]) -> bool:
    """Whether a parsed config sets the dotted ``keys`` (in any element of a list on the way)."""
    if not keys:
        return True
    if isinstance(config, list):
        return any(sets(element, keys) for element in config)
    return isinstance(config, dict) and keys[0] in config and sets(config[keys[0]], keys[1:])


def explain_checkpoint_mismatch(error: BaseException, checkpoint: str | os.PathLike | None) -> str | None:
    """One line for a checkpoint whose parameters do not fit the configured model; ``None`` for other errors.

    Args:
        error: what ``load_state_dict`` raised.
        checkpoint: the checkpoint that was being loaded.
    """
    message = str(error)
    if not message.startswith("Error(s) in loading state_dict"):
        return None
    fix = "use the config the checkpoint was trained with (config.yaml in its run directory)"
    if match := SIZE_MISMATCH.search(message):
        name, saved, configured = match.groups()
        return (
            f"{checkpoint}: parameter {name} has shape [{saved}] in the checkpoint but [{configured}] in the "
            f"configured model; {fix}"
        )
    if match := KEY_LISTED.search(message):
        kind, name = match.groups()
        missing = "the checkpoint has no" if kind == "Missing" else "the configured model has no"
        return f"{checkpoint}: {missing} parameter {name}; {fix}"
    return None
