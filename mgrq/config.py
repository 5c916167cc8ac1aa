"""Frozen config dataclasses: building them from ``key=value`` overrides with clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from mgrq.errors import ConfigError, did_you_mean


def path_arg(s: str) -> str:
    """A path option as an absolute path, ``~`` expanded: a quoted ``~`` or ``--opt=~/x`` is not
    expanded by the shell, and an output folder would otherwise be made as a folder named ``~``
    in the working directory. The record names the file wherever it is read from.
    (``$MGRQ_RUNS`` is expanded where it is read, :func:`mgrq.runner.layout.default_out`.) An
    empty path is refused: it would otherwise mean the option's default (``--out ""``, say, from
    an unset shell variable, would write into ``./runs``)."""
    if not s:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return os.path.abspath(os.path.expanduser(s))


def _type_name(typ: Any) -> str:
    """A field type in words: ``int`` -> ``an integer``, ``int | None`` -> ``an integer or none``;
    other types as written (``tuple[int, ...]``)."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(typ))
    if typ is type(None):
        return "none"
    if isinstance(typ, type) and typing.get_origin(typ) is None:
        return {"bool": "a boolean (true/false)", "int": "an integer", "float": "a number", "str": "a string"}.get(typ.__name__, typ.__name__)
    return str(typ).replace("typing.", "")


def _coerce(cls_name: str, f: dataclasses.Field, value: Any, hints: dict[str, Any]) -> Any:
    typ = hints.get(f.name, f.type)
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    allowed: tuple[Any, ...] = args if origin in (typing.Union, types.UnionType) else (typ,)
    if isinstance(value, str):
        for t in allowed:
            if t is type(None) and value.lower() in ("none", "null"):
                return None
        for t in allowed:
            try:
                if t is bool:
                    if value.lower() in ("1", "true", "yes", "on"):
                        return True
                    if value.lower() in ("0", "false", "no", "off"):
                        return False
                    raise ValueError(value)
                if t in (int, float):
                    return t(value)
                if t is str:
                    return value
                if typing.get_origin(t) is tuple or t is tuple:
                    return tuple(json.loads(value if value.startswith("[") else f"[{value}]"))
            except (ValueError, json.JSONDecodeError):
                continue
        raise ConfigError(f"{cls_name}.{f.name}={value!r}: expected {_type_name(typ)}")
    # a value already typed (a suite file's YAML): it must be of an allowed type
    bad = ConfigError(f"{cls_name}.{f.name}={value!r} ({type(value).__name__}): expected {_type_name(typ)}")
    if value is None:
        if type(None) in allowed:
            return None
        raise bad
    if isinstance(value, bool):
        if bool in allowed:
            return value
        raise bad
    if isinstance(value, list | tuple):
        if any(t is tuple or typing.get_origin(t) is tuple for t in allowed):
            return tuple(value)
        raise bad
    if isinstance(value, int):
        if int in allowed:
            return value
        if float in allowed:
            return float(value)
        raise bad
    if isinstance(value, float):
        if float in allowed:
            return value
        raise bad
    if not any(isinstance(t, type) and isinstance(value, t) for t in allowed):
        raise bad
    return value


def _check_finite(cls_name: str, name: str, value: Any) -> None:
    """No config field takes an infinite or NaN number (a learning rate of inf diverges)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{cls_name}.{name}={value!r}: expected a finite number")


def check_defaults(cls: type, owner: str) -> None:
    """Each field default of the config dataclass ``cls`` is of its annotated type, exactly (a
    ``"0.001"`` for a float, a ``1`` for a bool or for a float would be recorded as written, and
    would not compare equal to the same setting given in a suite): ``TypeError`` naming ``owner``
    and the field otherwise. Called when a method registers, so a method author sees it at once."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING:
            continue
        typ = hints.get(f.name, f.type)
        allowed = typing.get_args(typ) if typing.get_origin(typ) in (typing.Union, types.UnionType) else (typ,)

        def fits(t: Any, value: Any = f.default) -> bool:
            if value is None:
                return t is type(None)
            if t is tuple or typing.get_origin(t) is tuple:
                return type(value) is tuple
            return type(value) is t  # exactly: a bool is no int here, an int no float

        if not any(fits(t) for t in allowed):
            hint = f" (write {f.default!r}.0)" if type(f.default) is int and float in allowed else ""
            raise TypeError(f"{owner}: config field {f.name} = {f.default!r} ({type(f.default).__name__}) as default; "
                            f"expected {_type_name(typ)}, as its annotation says{hint}")


def build_config(cls: type, overrides: Mapping[str, Any] | None = None, owner: str | None = None) -> Any:
    """``cls(**defaults | overrides)``; strings are parsed to the field's type. Unknown fields
    raise :class:`ConfigError` listing the fields of ``cls``; the dataclass validates values.
    Errors name ``owner`` (e.g. the method, ``qdrop.iters=...``), by default the class."""
    overrides = dict(overrides or {})
    who = owner or cls.__name__
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in overrides if k not in fields)  # a YAML key may be a number
    if unknown:
        raise ConfigError(f"{who}: unknown field(s) {', '.join(k + did_you_mean(k, fields) for k in unknown)}; "
                          f"expected one of {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(who, fields[k], v, hints) for k, v in overrides.items()}
    for k, v in kwargs.items():
        _check_finite(who, k, v)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{who}: {e}") from None


def config_dict(cfg: Any) -> dict[str, Any]:
    """JSON-friendly dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


ASSIGNMENT_FORMS = {"--bits-override": "REGEX=BITS", "--checkpoint": "MODEL=PATH"}  # else KEY=VALUE


def parse_assignments(items: list[str] | None, what: str = "--set") -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a key given twice is an error."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = (x.strip() for x in item.partition("="))
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}: expected {ASSIGNMENT_FORMS.get(what, 'KEY=VALUE')}")
        if key in out:
            raise ConfigError(f"{what} {item!r}: {key} given twice (also {what} {key}={out[key]}); "
                              "expected each once")
        out[key] = value
    return out
