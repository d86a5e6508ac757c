"""One strict way to build a settings dataclass from JSON-like data.

Every config (``FeatureConfig``, ``AnalyzeConfig``, ``VAEConfig``, ``TransferConfig``, ...) is a
frozen dataclass whose ``from_dict`` calls :func:`from_dict`: unknown keys are an error (a typo
in a settings file must not be silently ignored), values of the wrong type are an error, lists
become tuples where the field is a tuple (JSON has no tuples), and the message always has the
same shape, naming the setting and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from drlcore.errors import DrlError

__all__ = ["from_dict"]

T = TypeVar("T")
_SCALARS = (bool, int, float, str, type(None))


def _label(cls: type, what: str | None) -> str:
    return what or cls.__name__


def _scalar_ok(value: Any, kind: type) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # JSON writes 1.0 as 1
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _options(hint: Any) -> tuple | None:
    """The scalar types a hint allows (``int | None`` -> (int, NoneType)); None when the hint is
    not made of scalars only (then the dataclass's own ``__post_init__`` checks it)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    return args if all(a in _SCALARS for a in args) else None


def _tuple_element(hint: Any) -> tuple | None:
    """For ``tuple[X, ...]`` (or ``tuple[X, ...] | None``): the scalar options of X."""
    origin = typing.get_origin(hint)
    parts = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for part in parts:
        if typing.get_origin(part) is tuple:
            args = typing.get_args(part)
            if len(args) == 2 and args[1] is Ellipsis:
                return _options(args[0])
    return None


def _describe(options: tuple) -> str:
    return " or ".join("null" if o is type(None) else o.__name__ for o in options)


def from_dict(cls: type[T], d: Any, what: str | None = None) -> T:
    """``cls(**d)`` for a dataclass ``cls``, refusing what it does not know.

    Raises :class:`DrlError` ("unknown <what> setting(s) [...]; known: [...]") for keys that are
    not fields, and ("<what> setting 'x' must be int, not str") for scalar fields (and tuples of
    scalars) given a value of another type. Anything the dataclass itself refuses (its
    ``__post_init__``) surfaces as DrlError too. ``what`` names the settings in messages
    (default: the class name).
    """
    label = _label(cls, what)
    if not isinstance(d, Mapping):
        raise DrlError(f"{label} settings must be a mapping (a JSON object), not "
                       f"{type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise DrlError(f"unknown {label} setting(s) {unknown}; known: {sorted(fields)}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation only skips the type check
        hints = {}
    values = dict(d)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is None:
            continue
        options = _options(hint)
        if options is not None:
            if not any(_scalar_ok(value, o) for o in options):
                raise DrlError(f"{label} setting {name!r} must be {_describe(options)}, not "
                               f"{type(value).__name__} ({value!r})")
            continue
        element = _tuple_element(hint)
        if element is not None and isinstance(value, (list, tuple)):
            bad = [v for v in value if not any(_scalar_ok(v, o) for o in element)]
            if bad:
                raise DrlError(f"{label} setting {name!r} must be a list of "
                               f"{_describe(element)}, not {value!r}")
            values[name] = tuple(value)
    try:
        return cls(**values)
    except DrlError:
        raise
    except (TypeError, ValueError) as exc:
        raise DrlError(f"invalid {label} settings: {exc}") from None
