"""Typed configs from mappings, files and `key=value` strings: the project's one way.

Every config is a (nested) dataclass: `TrainConfig`, the curation rules, the validation
gate's thresholds, the promotion gate. Their fields' annotations are the schema; this
module reads a mapping against them and names the offending key with the expected type:

    build(GateConfig, {"primary_metric": "m", "min_improvement": "a lot"})
    -> ConfigError: min_improvement: expected float, got 'a lot'

- `build(cls, doc)`: a dataclass from a JSON/YAML mapping. Unknown keys, wrong types and
  missing required keys are errors; nested dataclasses, `list[...]`, `tuple[...]`,
  `Mapping[K, V]`, `Literal[...]` and `X | None` are followed. Values must already have
  the field's type (JSON's int for a float field is accepted, `true` for a number is not).
- `set_path(obj, "stages.0.steps", "50")`: one command-line override (`--set`) on a
  mutable dataclass tree; the string is parsed for the field's type ("true", "1e-3",
  "0.5,1.0" for a pair, "none").
- `parse_mapping(text, where)`: the text of a `.json` file (JSON) or of any other file
  (YAML, a superset of JSON) as a mapping, optionally one top-level section of it.

Errors are `ConfigError` (a ValueError) unless the caller names its own subclass of
Exception with `error=`: each config keeps the exception type its callers catch.
Cross-field rules (ranges, one value below another) stay with each config, in its
`__post_init__` or `validate`; this module only knows types. Only the standard library
is used (PyYAML, when a YAML file is read).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar("T")

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NONE = ("none", "null", "")


class ConfigError(ValueError):
    """A bad config value, key or file; the message names the key (or file)."""


def type_name(typ: Any) -> str:
    """How an error message names `typ`: int, float, str, bool, list[str], one of (...)."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        return f"one of {typing.get_args(typ)}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(typ))
    if typ is type(None):
        return "null"
    return getattr(typ, "__name__", None) or str(typ).replace("typing.", "")


def convert(
    key: str, raw: Any, typ: Any, *, text: bool = False, error: type[Exception] = ConfigError
) -> Any:
    """`raw` as a value of type `typ`, or `error` naming `key` and the expected type.

    text: `raw` may be a command-line string to parse ("3", "true", "0.5,1.0", "none");
    without it, `raw` is a JSON/YAML value and must already have the type.
    """
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if typ is Any:
        return raw
    if origin in (typing.Union, types.UnionType):
        is_none = raw is None or (text and isinstance(raw, str) and raw.lower() in _NONE)
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return convert(key, raw, inner[0], text=text, error=error)
        for option in inner:  # the first that fits, e.g. `int | str`
            try:
                return convert(key, raw, option, text=text, error=error)
            except error:
                continue
        raise error(f"{key}: expected {type_name(typ)}, got {raw!r}")
    if origin is Literal:
        if raw not in args:
            raise error(f"{key}: expected one of {args}, got {raw!r}")
        return raw
    if origin in (tuple, list) or typ in (tuple, list):
        items = raw.split(",") if text and isinstance(raw, str) else raw
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise error(f"{key}: expected a list ({type_name(typ)}), got {raw!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                sep = "comma-separated " if text else ""
                raise error(f"{key}: expected {len(args)} {sep}values, got {raw!r}")
            kinds = list(args)
        else:
            kinds = [args[0] if args else Any] * len(items)
        values = [
            convert(f"{key}.{i}", v, k, text=text, error=error)
            for i, (v, k) in enumerate(zip(items, kinds, strict=True))
        ]
        return tuple(values) if origin is tuple or typ is tuple else values
    if origin in (Mapping, dict) or typ in (Mapping, dict):
        if not isinstance(raw, Mapping):
            raise error(f"{key}: expected a mapping, got {raw!r}")
        k_type, v_type = args if args else (Any, Any)
        return {
            convert(key, k, k_type, text=text, error=error): convert(
                f"{key}.{k}", v, v_type, text=text, error=error
            )
            for k, v in raw.items()
        }
    if dataclasses.is_dataclass(typ):
        if not isinstance(raw, Mapping):
            raise error(f"{key}: expected a mapping of {typ.__name__} fields, got {raw!r}")
        return build(typ, raw, prefix=key, text=text, error=error)
    value = _scalar(raw, typ, text)
    if value is _BAD:
        raise error(f"{key}: expected {type_name(typ)}, got {raw!r}")
    return value


_BAD = object()


def _scalar(raw: Any, typ: Any, text: bool) -> Any:
    """`raw` as bool / int / float / str, or _BAD. bool is never a number (`true` for a
    threshold is a typo, not 1) and a float is an int only when it is whole."""
    if text and isinstance(raw, str) and typ in (bool, int, float):
        low = raw.strip().lower()
        if typ is bool:
            return True if low in _TRUE else False if low in _FALSE else _BAD
        try:
            raw = float(low) if typ is float or "." in low or "e" in low else int(low)
        except ValueError:
            return _BAD
    if typ is bool:
        return raw if isinstance(raw, bool) else _BAD
    if typ is str:
        return raw if isinstance(raw, str) else _BAD
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return _BAD
    if typ is int:
        return int(raw) if isinstance(raw, int) or raw.is_integer() else _BAD
    if typ is float:
        return float(raw)
    return _BAD  # a field type this module does not know: a schema error, reported as such


def build(
    cls: type[T],
    doc: Mapping[str, Any],
    *,
    prefix: str = "",
    what: str = "config key(s)",
    text: bool = False,
    error: type[Exception] = ConfigError,
) -> T:
    """An instance of the dataclass `cls` from `doc`; missing keys keep their defaults.

    prefix: the dotted key of `doc` inside a larger config (for messages); what: how an
    unknown-key message names the keys ("unknown gate config key(s) [...]").
    """
    if not isinstance(doc, Mapping):
        raise error(f"{prefix or 'config'}: expected a mapping, got {doc!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    where = f"{prefix}." if prefix else ""
    unknown = [where + str(k) for k in doc if k not in fields]
    if unknown:
        raise error(f"unknown {what} {unknown}; valid keys here: {', '.join(fields)}")
    missing = [
        where + name
        for name, f in fields.items()
        if name not in doc
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise error(f"missing required key(s) {missing}")
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: convert(where + name, value, hints[name], text=text, error=error)
        for name, value in doc.items()
    }
    return cls(**kwargs)


def set_path(obj: Any, dotted: str, raw: Any, *, error: type[Exception] = ConfigError) -> None:
    """Sets the field `a.b.c` of a mutable dataclass tree (list items by index:
    `stages.0.steps`) to the command-line value `raw`, parsed for the field's type."""
    parts = dotted.split(".")
    for i, name in enumerate(parts):
        here = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(obj, list):
            if not name.isdigit() or int(name) >= len(obj):
                raise error(f"unknown key {here!r}: index must be 0..{len(obj) - 1}")
            if last:
                raise error(f"{here!r} is a whole section; set one of its fields")
            obj = obj[int(name)]
            continue
        fields = [f.name for f in dataclasses.fields(obj)]
        if name not in fields:
            raise error(f"unknown key {here!r}; valid keys here: {', '.join(fields)}")
        if not last:
            obj = getattr(obj, name)
            continue
        typ = typing.get_type_hints(type(obj))[name]
        if dataclasses.is_dataclass(typ) or typing.get_origin(typ) is list:
            raise error(f"{here!r} is a whole section; set one of its fields")
        setattr(obj, name, convert(here, raw, typ, text=True, error=error))


def parse_mapping(
    text: str,
    where: str,
    *,
    section: str | None = None,
    error: type[Exception] = ConfigError,
) -> dict[str, Any]:
    """The mapping a config file holds: JSON for `*.json`, else YAML (which reads JSON
    too); an empty file is `{}`. section: only that top-level key's mapping (so
    `params.yaml` can hold a step's settings under its name)."""
    if where.lower().endswith(".json"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise error(f"{where}: invalid JSON ({e})") from None
    else:
        try:
            import yaml
        except ImportError:  # pragma: no cover - PyYAML comes with the platform layer
            raise error(f"{where}: YAML needs PyYAML; use a JSON config") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise error(f"{where}: invalid YAML ({e})") from None
    if section is not None:
        if not isinstance(doc, Mapping) or section not in doc:
            raise error(f"{where}: no section {section!r}")
        doc = doc[section]
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise error(f"{where}: expected a mapping of keys to values, got {type(doc).__name__}")
    return dict(doc)
