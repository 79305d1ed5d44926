"""Frozen dataclass configs, read from YAML at the edge, with ``key.sub=value`` overrides.

>>> @dataclass(frozen=True)
... class Optim:
...     lr: float = 1e-4   # AdamW learning rate
>>> @dataclass(frozen=True)
... class Train:
...     steps: int = 100
...     optim: Optim = Optim()
>>> load_config(Train, {"steps": 5}, ["optim.lr=0.01"]).optim.lr
0.01

An unknown key, in a file or an override, is a :class:`ConfigError` that names it; values are
converted to the field's annotated type (``int``, ``float``, ``bool``, ``str``, ``Path``,
tuples/lists, ``X | None``, nested dataclasses) and a value that does not convert is an error too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config's dataclass."""


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans, only ``true`` / ``false``: YAML 1.1 (PyYAML's default)
    also reads yes / no / on / off as booleans, which turned ``mixed_precision=no`` (a string
    field whose documented value is ``no``) into False."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def check_out_dir(option: str, value: str | Path) -> None:
    """ConfigError when an output folder ``value`` (named ``option`` in the message) is an
    existing file: the run would otherwise fail only when it first writes, mid-run."""
    if Path(value).exists() and not Path(value).is_dir():
        raise ConfigError(f"{option}={str(value)!r} is a file, not a folder")


def missing_path(value: str) -> bool:
    """``value`` reads as a file system path, not a hub id ``org/name`` (it starts with ``/``,
    ``.`` or ``~``, or has more than one ``/``), and does not exist. The one rule for every
    setting that takes a checkpoint folder or a hub id (generator, pipeline, LoRA)."""
    return bool(value) and not Path(value).expanduser().exists() and (
        value.startswith(("/", ".", "~")) or value.count("/") > 1)


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = _load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML "
                          f"({_yaml_problem(err)})") from None
    return key.strip().split("."), value


def _yaml_problem(err: Exception) -> str:
    """One line of a YAML parser error: its problem and where (``line L, column C``)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(err, 'problem', None) or type(err).__name__}{where}"


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, where + ".")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            item_types = list(args)
        else:
            item_types = [args[0] if args else Any] * len(value)
        items = [_convert(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_types, strict=True))]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            value = number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        raise ConfigError(f"unknown config key(s): {names} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field without a default
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from None


def to_dict(cfg: Any) -> dict:
    """A config as plain YAML-able data (``Path`` -> str, tuples -> lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def load_config(
    cls: type[T], source: str | Path | dict | None = None, overrides: list[str] | None = None
) -> T:
    """Build the frozen dataclass ``cls`` from a YAML file or dict, then apply overrides.

    Unset fields keep their defaults: the file overrides the dataclass, and ``key.sub=value``
    strings (values parsed as YAML scalars) override the file.
    """
    if source is None:
        data: dict = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = _load_yaml(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML ({_yaml_problem(err)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    # Start from the defaults so that overrides of nested fields merge instead of replacing.
    tree = _defaults_tree(cls)
    _merge(tree, data)
    for item in overrides or []:
        path_parts, value = _parse_override(item)
        _check_path(cls, path_parts, item)
        _set_path(tree, path_parts, value)
    return _build(cls, tree)


def with_defaults(saved: dict, cls: Any) -> dict:
    """``saved`` (a config as :func:`to_dict` wrote it, read back from JSON) with every field it
    lacks, at any depth, at dataclass ``cls``'s default (a field added since it was saved)."""
    out = json.loads(json.dumps(to_dict(cls())))
    _merge(out, copy.deepcopy(saved))
    return out


def diff_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the leaves where two nested config dicts differ (present in one only too)."""
    keys = []
    for k in set(old) | set(new):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += diff_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def _defaults_tree(cls: Any) -> dict:
    tree: dict = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            tree[f.name] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            tree[f.name] = to_dict(f.default_factory())
    return tree


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _check_path(cls: Any, parts: list[str], item: str) -> None:
    node = cls
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            if typing.get_origin(node) is dict:
                return
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} is not a section")
        hints = typing.get_type_hints(node)
        if part not in hints:
            raise ConfigError(f"unknown config key: {'.'.join(parts[: i + 1])} (in {item!r})")
        node = hints[part]
