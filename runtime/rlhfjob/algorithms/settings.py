"""Typed settings: a module's ``models.<name>.args`` parsed into a frozen dataclass.

The ready-made modules declare their hyperparameters as frozen, keyword-only
dataclasses (torchtitan's typed configs), one line a key::

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class PolicyTrainerConfig(TrainerConfig):
        clip_eps: float = field(default=0.2, metadata=about("PPO's clip range", check=POSITIVE))

The annotation is the key's type: ``bool``, ``int``, ``float`` (an int or a
numeric string is taken: PyYAML reads ``1e-3`` as a string), ``str``, a
``Literal``, a fixed ``tuple`` of those (a YAML list is taken), ``dict[str,
Any]`` (a mapping), a nested ``Settings`` class (a mapping of its keys), or any
of them ``| None``. ``check`` bounds a number (every element of a tuple);
``parse`` turns a raw value into the field's (a task mapping into a
``SortTask``); ``validate()`` checks across keys.

Construction validates: a wrong type or range is a ``SettingError`` (a
ValueError) naming ``<Class>.<key>``; ``from_args(name, args)`` names
``models.<name>.args.<key>`` instead and refuses unknown keys, listing the
known ones with a close match ("did you mean clip_eps?").
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

__all__ = [
    "AT_LEAST_1",
    "NON_NEGATIVE",
    "POSITIVE",
    "UNIT",
    "Range",
    "SettingError",
    "Settings",
    "about",
    "as_yaml",
    "hints",
    "type_name",
]

S = TypeVar("S", bound="Settings")


class SettingError(ValueError):
    """A bad setting: ``<where>.<key> <problem>``, e.g. ``models.ppo_policy.args.lr must be
    > 0, got -1``. An empty ``key`` is about the whole section."""

    def __init__(self, key: str, problem: str, *, where: str = "") -> None:
        super().__init__(key, problem)
        self.key, self.problem, self.where = key, problem, where

    def __str__(self) -> str:
        return f"{'.'.join(p for p in (self.where, self.key) if p)} {self.problem}"


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a number; ``*_open`` excludes the bound itself. NaN is outside any range."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
AT_LEAST_1 = Range(low=1)
UNIT = Range(low=0, high=1)


def about(
    doc: str,
    *,
    check: Range | None = None,
    parse: Callable[[Any], Any] | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """A settings field's metadata: its one-line doc (the README's "what"), an optional
    bound, an optional parser of raw values (ValueError: refused), and the type name the
    README shows when the annotation's own would not do (``kind``)."""
    return {"doc": doc, "check": check, "parse": parse, "kind": kind}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Base of every settings class; see the module docstring."""

    def __post_init__(self) -> None:
        try:
            for field in dataclasses.fields(self):
                value = _settle(field, hints(type(self))[field.name], getattr(self, field.name))
                object.__setattr__(self, field.name, value)  # frozen: normalised once, here
            self.validate()
        except SettingError as exc:
            raise SettingError(exc.key, exc.problem, where=type(self).__name__) from None

    def validate(self) -> None:
        """Checks across keys; raise ``SettingError(key, problem)``. Default: none."""

    @classmethod
    def from_args(cls: type[S], name: str, args: Mapping[str, Any]) -> S:
        """``models.<name>.args`` parsed and validated; SettingError names the key."""
        try:
            return cls.from_mapping(args)
        except SettingError as exc:
            raise SettingError(exc.key, exc.problem, where=f"models.{name}.args") from None

    @classmethod
    def from_mapping(cls: type[S], args: Mapping[str, Any]) -> S:
        """An instance from raw keys (a YAML mapping); unknown keys are refused, naming
        the known ones and the closest match."""
        if not isinstance(args, Mapping):
            raise SettingError("", f"must be a mapping of {cls.__name__} keys, got {args!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in args if key not in known]
        if unknown:
            key = str(unknown[0])
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            others = f"; also unknown: {', '.join(map(str, unknown[1:]))}" if unknown[1:] else ""
            raise SettingError(
                key,
                f"is not a {cls.__name__} setting{hint}{others}; "
                f"the known ones: {', '.join(sorted(known))}",
            )
        return cls(**args)


_HINTS: dict[type, dict[str, Any]] = {}


def hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a settings class (``from __future__`` makes them strings)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _settle(field: dataclasses.Field[Any], hint: Any, value: Any) -> Any:
    """``value`` converted to the field's type and checked against its bound."""
    raw, parse = value, field.metadata.get("parse")
    if parse is not None and value is not None:
        try:
            value = parse(value)
        except SettingError as exc:
            raise SettingError(_join(field.name, exc.key), exc.problem) from None
        except ValueError as exc:
            raise SettingError(field.name, f"is refused: {exc}") from None
    else:
        value = _convert(hint, value, field.name)
    bound: Range | None = field.metadata.get("check")
    if bound is not None and value is not None:
        for item in value if isinstance(value, tuple) else (value,):
            if not bound.holds(item):
                raise SettingError(field.name, f"must be {bound}, got {raw!r}")
    return value


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"setting {key!r}: a union must be one type or None, got {hint!r}")
        return _convert(rest[0], value, key)

    def wrong() -> SettingError:
        return SettingError(key, f"must be of type {type_name(hint)}, got {value!r}")

    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise SettingError(key, f"{value!r} is not one of {list(args)}")
    if hint is bool or hint is str:
        if not isinstance(value, hint):
            raise wrong()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise wrong() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong()
        return float(value)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != len(args):
            raise wrong()
        return tuple(
            _convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, Mapping):
            raise wrong()
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, Settings):
        if isinstance(value, hint):
            return value
        try:
            return hint.from_mapping(value)
        except SettingError as exc:
            raise SettingError(_join(key, exc.key), exc.problem) from None
    raise TypeError(f"setting {key!r}: type {hint!r} is not supported by rlhfjob settings")


def type_name(hint: Any) -> str:
    """How the README and the errors name a type: ``float``, ``[float, float]``, ``int or
    null``, ``one of "k1", "k2"``, ``mapping``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return f"{' or '.join(type_name(a) for a in rest)} or null"
    if origin is Literal:
        return f"one of {', '.join(map(as_yaml, args))}"
    if origin is tuple:
        return f"[{', '.join(type_name(a) for a in args)}]"
    if origin is dict:
        return "mapping"
    if isinstance(hint, type) and issubclass(hint, Settings):
        return f"mapping ({hint.__name__})"
    if hint is float:
        return "float"
    return getattr(hint, "__name__", str(hint))


def _join(key: str, inner: str) -> str:
    if not inner:
        return key
    return f"{key}{inner}" if inner.startswith("[") else f"{key}.{inner}"


def as_yaml(value: Any) -> str:
    """A value as YAML would spell it: ``null``, ``true``, ``"k3"``, ``[0.9, 0.95]``."""
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)
