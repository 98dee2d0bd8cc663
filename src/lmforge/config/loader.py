"""Strict loading of YAML files and ``--section.key=value`` overrides onto nested dataclasses.

A run is described by dataclasses (one per section) and this module turns plain dicts into
them and back. It is strict on purpose: a misspelt key or a value of the wrong type is an
error that names the dotted key path, never a silently ignored setting.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}
_NULL_WORDS = {"null", "none", "~"}


class ConfigError(ValueError):
    """A config key or value is wrong; the message starts with the dotted key path."""


def _error(path: str, problem: str) -> ConfigError:
    return ConfigError(f"{path or '(top level)'}: {problem}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    matches = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _is_dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    # Fields with init=False are computed by the dataclass itself, so they are not settable.
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


# --- dict -> dataclass --------------------------------------------------------------------


def from_dict(cls: type, data: Mapping[str, Any] | None, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, checking every key and coercing every value.

    Missing keys keep their default and ``None`` means "all defaults". ``path`` is the dotted
    location of ``data`` in the whole config, used to prefix error messages.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise _error(path, f"expected a section of 'key: value' lines, got {data!r}")
    fields = _init_fields(cls)
    for key in data:
        if key not in fields:
            valid = ", ".join(fields)
            hint = _did_you_mean(str(key), list(fields))
            raise _error(_join(path, str(key)), f"unknown key{hint}  (valid keys: {valid})")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise _error(_join(path, name), "required key is missing")
    return _build_and_validate(cls, kwargs, path)


def _build_and_validate(cls: type, kwargs: dict[str, Any], path: str) -> Any:
    """Construct the dataclass and run its optional ``validate()``, adding the path to errors."""
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    except ValueError as err:
        # A message that starts with one of the fields ("lr: must be ...") gets the full key path.
        field_name, sep, rest = str(err).partition(": ")
        if sep and field_name in _init_fields(cls):
            raise _error(_join(path, field_name), rest) from err
        raise _error(path, str(err)) from err
    return obj


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the type annotation ``tp`` and return it in that type."""
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _convert_optional(value, tp, path)
    if origin is Literal:
        return _convert_literal(value, get_args(tp), path)
    if origin is list or origin is tuple:
        return _convert_sequence(value, tp, path)
    if origin is dict:
        return _convert_dict(value, tp, path)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp in _SCALAR_CONVERTERS:
        return _SCALAR_CONVERTERS[tp](value, path)
    if tp is Any:
        return value
    raise TypeError(f"{path}: field type {tp!r} is not supported by the config loader")


def _convert_optional(value: Any, tp: Any, path: str) -> Any:
    inner = [arg for arg in get_args(tp) if arg is not type(None)]
    if type(None) in get_args(tp) and (value is None or (isinstance(value, str)
                                                         and value.strip().lower() in _NULL_WORDS)):
        return None
    if len(inner) == 1:
        return _convert(value, inner[0], path)
    problems = []
    for option in inner:  # e.g. Literal["none", "all"] | int: the first type that accepts the value wins
        try:
            return _convert(value, option, path)
        except ConfigError as exc:
            problems.append(str(exc).removeprefix(f"{path}: "))
    raise _error(path, " or ".join(problems))


def _convert_literal(value: Any, choices: tuple, path: str) -> Any:
    # Compare types too: True == 1 in Python, but `true` is not a valid choice for Literal[1, 2].
    if any(value == choice and type(value) is type(choice) for choice in choices):
        return value
    allowed = ", ".join(repr(choice) for choice in choices)
    text_choices = [choice for choice in choices if isinstance(choice, str)]
    hint = _did_you_mean(value, text_choices) if isinstance(value, str) else ""
    raise _error(path, f"expected one of {allowed}, got {value!r}{hint}")


def _convert_sequence(value: Any, tp: Any, path: str) -> list | tuple:
    if not isinstance(value, (list, tuple)):
        raise _error(path, f"expected a list like [a, b], got {value!r}")
    args = get_args(tp)
    is_tuple = get_origin(tp) is tuple
    if is_tuple and Ellipsis not in args:  # tuple[X, Y]: one type per position
        if len(value) != len(args):
            raise _error(path, f"expected a list of {len(args)} items, got {value!r}")
        item_types = list(args)
    else:  # list[X] and tuple[X, ...]: one type for every item
        item_types = [args[0]] * len(value)
    items = [_convert(item, item_type, f"{path}[{index}]")
             for index, (item, item_type) in enumerate(zip(value, item_types))]
    return tuple(items) if is_tuple else items


def _convert_dict(value: Any, tp: Any, path: str) -> dict:
    if not isinstance(value, Mapping):
        raise _error(path, f"expected a mapping like {{name: value}}, got {value!r}")
    key_type, value_type = get_args(tp)
    converted = {}
    for key, item in value.items():
        key_path = _join(path, str(key))
        converted[_convert(key, key_type, key_path)] = _convert(item, value_type, key_path)
    return converted


def _to_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _TRUE_WORDS | _FALSE_WORDS:
        return word in _TRUE_WORDS
    raise _error(path, f"expected a boolean (true/false, yes/no, on/off, 1/0), got {value!r}")


def _to_number(value: Any, path: str, expected: str) -> int | float:
    # bool is a subclass of int, but `lr: true` is a mistake, not the number 1.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        for parse in (int, float):  # int first, so large integers keep every digit
            try:
                return parse(value.strip())
            except ValueError:
                pass
    raise _error(path, f"expected {expected}, got {value!r}")


def _to_int(value: Any, path: str) -> int:
    number = _to_number(value, path, "an integer")
    if isinstance(number, float):
        if not number.is_integer():
            raise _error(path, f"expected an integer, got {value!r}")
        return int(number)
    return number


def _to_float(value: Any, path: str) -> float:
    return float(_to_number(value, path, "a number"))


def _to_str(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    raise _error(path, f"expected a string, got {value!r}; put it in quotes if you meant text")


_SCALAR_CONVERTERS: dict[type, Callable[[Any, str], Any]] = {
    bool: _to_bool, int: _to_int, float: _to_float, str: _to_str,
}


# --- dataclass -> dict, merging, files and overrides -------------------------------------


def to_dict(obj: Any) -> dict[str, Any]:
    """Turn a dataclass instance into plain nested dicts and lists that ``from_dict`` accepts."""
    if not _is_dataclass_instance(obj):
        raise TypeError(f"to_dict needs a dataclass instance, got {obj!r}")
    return _plain(obj)


def _plain(value: Any) -> Any:
    if _is_dataclass_instance(value):
        return {name: _plain(getattr(value, name)) for name in _init_fields(type(value))}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """Merge nested dicts: ``override`` wins key by key; the inputs are left untouched."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (an empty file gives ``{}``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        problem = f"cannot read config file ({err.strerror}); check the path"
        raise _error(str(path), problem) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise _error(where, f"invalid YAML: {getattr(err, 'problem', None) or err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise _error(str(path), f"the top level must be 'section: ...' lines, got a {kind}")
    return data


_OVERRIDE_FORM = "write overrides as --section.key=value, e.g. --train.lr=3e-4"


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Turn ``--section.key=value`` command-line arguments into a nested dict.

    ``--a.b=value`` and ``--a.b value`` both work; a bare ``--a.b`` means true. Values are
    read as YAML (``[q, v]`` is a list, ``null`` is None); ``from_dict`` coerces them later.
    Dashes in key names become underscores, so ``--train.max-steps`` sets ``max_steps``.
    """
    overrides: dict[str, Any] = {}
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        if not arg.startswith("--"):
            raise _error(arg, f"not an override; {_OVERRIDE_FORM}")
        key, has_equals, text = arg[2:].partition("=")
        keys = [part.replace("-", "_") for part in key.split(".")]
        if len(keys) < 2 or not all(keys):
            raise _error(arg, f"the key needs a section and a name; {_OVERRIDE_FORM}")
        if has_equals:
            value = _parse_yaml_value(text, arg)
        elif pending and not pending[0].startswith("--"):
            value = _parse_yaml_value(pending.pop(0), arg)
        else:
            value = True
        _set_nested(overrides, keys, value, arg)
    return overrides


def _parse_yaml_value(text: str, arg: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        reason = getattr(err, "problem", None) or err
        raise _error(arg, f"the value {text!r} is not valid YAML ({reason})") from err


def _set_nested(tree: dict, keys: list[str], value: Any, arg: str) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise _error(arg, f"'{key}' was already given a value, so it cannot have keys")
    tree[keys[-1]] = value


# --- commented YAML for `lmforge init` ----------------------------------------------------


def to_commented_yaml(obj: Any, header: str | None = None) -> str:
    """Render a dataclass instance as YAML with each field's help text as an aligned comment."""
    lines = []
    if header:
        lines = [f"# {line}".rstrip() for line in header.splitlines()] + [""]
    previous_was_section = False
    for index, (is_section, entry_lines) in enumerate(_field_entries(obj, depth=0)):
        if index > 0 and (is_section or previous_was_section):
            lines.append("")  # a blank line around each top-level section
        lines.extend(entry_lines)
        previous_was_section = is_section
    return "\n".join(lines) + "\n"


def _field_entries(obj: Any, depth: int) -> list[tuple[bool, list[str]]]:
    """One ``(is_section, lines)`` entry per field of ``obj``, indented for ``depth``."""
    indent = "  " * depth
    hints = get_type_hints(type(obj))
    fields = _init_fields(type(obj)).values()
    scalars = {}  # field name -> (the "key: value" line, its comment)
    for field in fields:
        value = getattr(obj, field.name)
        if not _is_dataclass_instance(value):
            line = f"{indent}{field.name}: {_yaml_value(_plain(value))}"
            scalars[field.name] = (line, _field_comment(field, hints[field.name]))
    # Align only the lines that have a comment, so one long bare value cannot push them all.
    column = max((len(line) for line, comment in scalars.values() if comment), default=0) + 2
    entries = []
    for field in fields:
        if field.name in scalars:
            line, comment = scalars[field.name]
            entries.append((False, [f"{line.ljust(column)}# {comment}" if comment else line]))
        else:
            entries.append((True, _section_lines(field, getattr(obj, field.name), depth)))
    return entries


def _section_lines(field: dataclasses.Field, section: Any, depth: int) -> list[str]:
    indent = "  " * depth
    title = _section_title(section) or field.metadata.get("help", "")
    heading = [f"{indent}# {title}"] if title else []
    nested = [line for _, lines in _field_entries(section, depth + 1) for line in lines]
    return heading + [f"{indent}{field.name}:"] + nested


def _yaml_value(value: Any) -> str:
    """The value as one line of YAML that reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"),
                          allow_unicode=True, sort_keys=False)
    text = text.removesuffix("...\n").strip()  # PyYAML ends a bare scalar with a "..." marker
    # PyYAML folds strings with newlines over several lines; JSON (valid YAML) keeps them on one.
    return json.dumps(value, ensure_ascii=False) if "\n" in text else text


def _field_comment(field: dataclasses.Field, tp: Any) -> str:
    help_text = " ".join(field.metadata.get("help", "").split())
    for candidate in (tp, *get_args(tp)):  # also finds Literal[...] inside `| None` or list[...]
        if get_origin(candidate) is Literal:
            choices = ", ".join(str(choice) for choice in get_args(candidate))
            return f"{help_text}  (one of: {choices})".strip()
    return help_text


def _section_title(section: Any) -> str:
    doc = type(section).__doc__ or ""
    # @dataclass invents a docstring like "TrainConfig(lr: float = ...)" when there is none.
    if doc.startswith(type(section).__name__ + "("):
        return ""
    return doc.strip().split("\n")[0]
