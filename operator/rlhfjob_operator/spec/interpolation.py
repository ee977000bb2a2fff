"""OmegaConf's ``${...}`` interpolation, the subset ChatLearn HEAD's YAML uses, resolved
on a plain document (what ``yaml.safe_load`` gives) before it is read as a config.

ChatLearn HEAD loads its YAML with ``OmegaConf.load`` and merges it into its dataclass
configs (``chatlearn/entrypoint.py``), so a value may name another value:

- ``${runtime_args.output_dir}``: a path from the document root, dot-separated; a list
  item is ``a.0`` or ``a[0]``. ``${.x}`` is a sibling of the value, each further leading
  dot one container up (OmegaConf's relative interpolation).
- A value that is one interpolation takes the target's value and type (a number stays a
  number, a mapping a mapping); one with text around it is a string, each target
  written with ``str`` (``${a.b}/ckpt``). The target may itself interpolate; a loop is
  refused. ``\\${`` is a literal ``${``.
- ``${oc.env:NAME}`` and ``${oc.env:NAME,default}``: the environment's NAME, read as a
  YAML scalar (``8`` is 8, as HEAD's typed fields make it); unset and no default is
  refused.
- A path that the document does not hold takes ``defaults`` (HEAD's dataclass defaults,
  which the merge supplies); one that has none is refused.

Refused by name, since OmegaConf would fail or compute what this does not: other
resolvers (``${oc.create:...}``, ``${oc.select:...}``, custom ones), nested
interpolation (``${a.${b}}``), and a mapping or list inside a longer string.

Not OmegaConf itself: OmegaConf reads ``${NAME:default}`` as a call of a resolver NAME,
which would break ChatLearn v1's environment placeholders that ``config=`` also takes
(``spec.chatlearn`` resolves those first), and it would add antlr4's runtime to every
image for a few dozen lines of grammar.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import yaml

from rlhfjob_operator.spec.base import SpecError

__all__ = ["resolve"]

# A default for a path the document lacks: the value, or None when there is none.
Defaults = Callable[[tuple[str, ...]], tuple[bool, Any]]

_OPEN = re.compile(r"(\\*)\$\{")
_PATH_PART = re.compile(r"[^.\[\]]+|\[\d+\]")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
_NO_DEFAULT: Defaults = lambda path: (False, None)  # noqa: E731


def resolve(document: dict[str, Any], *, defaults: Defaults = _NO_DEFAULT) -> dict[str, Any]:
    """``document`` with every interpolation replaced by its value (the module doc says
    how); ``document`` itself is left as it was. Raises SpecError naming the key whose
    value is bad, the interpolation, and what to fix."""
    resolved: dict[str, Any] = _Resolver(document, defaults).value((), document)
    return resolved


class _Resolver:
    def __init__(self, root: dict[str, Any], defaults: Defaults) -> None:
        self.root = root
        self.defaults = defaults
        self.active: list[tuple[str, ...]] = []  # the keys being resolved, for loops

    def value(self, path: tuple[str, ...], value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.value((*path, str(k)), v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value((*path, str(i)), v) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        if path in self.active:
            loop = " -> ".join(_dotted(p) for p in (*self.active[self.active.index(path) :], path))
            raise SpecError(f"{_dotted(path)}: interpolation loop ({loop}); break the loop")
        self.active.append(path)
        try:
            return self.string(path, value)
        finally:
            self.active.pop()

    def string(self, path: tuple[str, ...], text: str) -> Any:
        parts: list[Any] = []  # literal strings and resolved values, in order
        pos = 0
        for match in _OPEN.finditer(text):
            if match.start() < pos:
                continue
            slashes = match.group(1)
            parts.append(text[pos : match.start()] + "\\" * (len(slashes) // 2))
            if len(slashes) % 2:  # \${ is a literal ${
                parts.append("${")
                pos = match.end()
                continue
            end = text.find("}", match.end())
            if end < 0:
                raise SpecError(
                    f"{_dotted(path)}: {text!r} opens ${{ without a closing }}; close it, "
                    "or write \\${ for a literal ${"
                )
            body = text[match.end() : end]
            if "${" in body:
                raise SpecError(
                    f"{_dotted(path)}: {text!r} nests an interpolation inside another, which "
                    "rlhfjob does not resolve; write the key's path out"
                )
            parts.append(_Resolved(self.one(path, body)))
            pos = end + 1
        parts.append(text[pos:])
        pieces = [p for p in parts if not (isinstance(p, str) and p == "")]
        if len(pieces) == 1 and isinstance(pieces[0], _Resolved):
            return pieces[0].value
        out = []
        for piece in pieces:
            if isinstance(piece, _Resolved):
                if isinstance(piece.value, (dict, list)):
                    raise SpecError(
                        f"{_dotted(path)}: {text!r} puts a "
                        f"{'mapping' if isinstance(piece.value, dict) else 'list'} inside a "
                        "string; interpolate it as the whole value, or name a scalar"
                    )
                out.append(str(piece.value))
            else:
                out.append(piece)
        return "".join(out)

    def one(self, path: tuple[str, ...], body: str) -> Any:
        """The value of ``${body}`` written at ``path``."""
        key = body.strip()
        if ":" in key:
            return self.resolver(path, key)
        target = self.target(path, key)
        found, value = self.lookup(target)
        if not found:
            found, value = self.defaults(target)
            if not found:
                raise SpecError(
                    f"{_dotted(path)}: ${{{key}}} names {_dotted(target)!r}, which this "
                    f"document does not set{self.near(target)}; fix the path or set the key"
                )
        return self.value(target, value)

    def resolver(self, path: tuple[str, ...], key: str) -> Any:
        name, _, args = key.partition(":")
        if name.strip() != "oc.env":
            raise SpecError(
                f"{_dotted(path)}: ${{{key}}} calls the resolver {name.strip()!r}; rlhfjob "
                "resolves oc.env and key paths only; write the value out"
            )
        var, comma, default = args.partition(",")
        var = var.strip()
        if var in os.environ:
            return _scalar(os.environ[var])
        if not comma:
            raise SpecError(
                f"{_dotted(path)}: ${{{key}}} reads the environment variable {var!r}, which "
                f"is not set; set it, or give a default: ${{oc.env:{var},<default>}}"
            )
        return _scalar(default.strip())

    def target(self, path: tuple[str, ...], key: str) -> tuple[str, ...]:
        dots = len(key) - len(key.lstrip("."))
        rest = key[dots:]
        parts = _PATH_PART.findall(rest)
        if not rest or "".join(parts) != rest.replace(".", ""):
            raise SpecError(
                f"{_dotted(path)}: ${{{key}}} is not a key path; write ${{section.key}} "
                "(from the document root) or ${.key} (beside this one)"
            )
        names = tuple(p[1:-1] if p.startswith("[") else p for p in parts)
        if not dots:
            return names
        base = path[:-1]  # the container holding this value
        up = dots - 1
        if up > len(base):
            raise SpecError(
                f"{_dotted(path)}: ${{{key}}} climbs {up} container(s) above {_dotted(base)!r}, "
                "past the document root; use fewer dots"
            )
        return (*base[: len(base) - up], *names)

    def lookup(self, target: tuple[str, ...]) -> tuple[bool, Any]:
        node: Any = self.root
        for name in target:
            if isinstance(node, dict) and name in node:
                node = node[name]
            elif isinstance(node, list) and name.isdigit() and int(name) < len(node):
                node = node[int(name)]
            else:
                return False, None
        return True, node

    def near(self, target: tuple[str, ...]) -> str:
        """`` (section has keys a, b)``: the keys beside a missing one, for the message."""
        found, parent = self.lookup(target[:-1])
        if found and isinstance(parent, dict) and target[:-1]:
            keys = ", ".join(sorted(map(str, parent))[:12])
            return f" ({_dotted(target[:-1])} has {keys})"
        return ""


class _Resolved:
    """A resolved interpolation among the literal pieces of a string."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or "<root>"


def _scalar(text: str) -> Any:
    """An environment string as YAML reads a scalar (``8`` is 8, ``null`` None); text
    that is not a scalar stays as it is."""
    if _FLOAT.match(text.strip()):  # YAML 1.1 wants a dot in 5e-6; OmegaConf does not
        return float(text)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, (bool, int, float, str)) else text
