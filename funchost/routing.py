"""Route templates the way the Functions host (ASP.NET Core routing) matches them.

Only the host decides which function a URL belongs to; the worker just receives the
route values as strings.  We reproduce the subset of ASP.NET route templates that
function apps actually use: literals, `{name}`, `{name:constraint}`, `{name?}`,
`{name=default}` and catch-alls `{*rest}` / `{**rest}`.  Matching is case-insensitive,
a single trailing slash is ignored, and more specific templates win (literal segments
before parameters, constrained before unconstrained, catch-alls last).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

_PARAM = re.compile(r"\{([^{}]*)\}")
_CONSTRAINT = re.compile(r"^(?P<name>\w+)(?:\((?P<arg>.*)\))?$")

Check = Callable[[str], bool]


class RouteTemplateError(ValueError):
    """A template the host would refuse to index."""


def _is_int(value: str, bits: int) -> bool:
    if not re.fullmatch(r"-?\d+", value):
        return False
    return -(2 ** (bits - 1)) <= int(value) < 2 ** (bits - 1)


def _is_float(value: str) -> bool:
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value):
        return False
    return True


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value.strip("{}()"))
    except ValueError:
        return False
    return True


def _ints(arg: str | None, count: int, constraint: str) -> list[int]:
    parts = [p.strip() for p in (arg or "").split(",")] if arg else []
    if len(parts) != count or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise RouteTemplateError(f"constraint {constraint!r} needs {count} integer argument(s)")
    return [int(p) for p in parts]


def _constraint_check(spec: str) -> Check:
    """Translate one ASP.NET inline constraint into a predicate on the raw string."""
    m = _CONSTRAINT.match(spec)
    if not m:
        raise RouteTemplateError(f"unsupported route constraint {spec!r}")
    name, arg = m.group("name").lower(), m.group("arg")
    simple: dict[str, Check] = {
        "int": lambda v: _is_int(v, 32),
        "long": lambda v: _is_int(v, 64),
        "bool": lambda v: v.lower() in ("true", "false"),
        "alpha": lambda v: bool(re.fullmatch(r"[A-Za-z]+", v)),
        "guid": _is_guid,
        "float": _is_float,
        "double": _is_float,
        "decimal": _is_float,
        "datetime": _is_datetime,
    }
    if name in simple:
        if arg is not None:
            raise RouteTemplateError(f"constraint {name!r} takes no argument")
        return simple[name]
    if name == "regex":
        if arg is None:
            raise RouteTemplateError("regex constraint needs a pattern")
        pattern = re.compile(arg, re.IGNORECASE)
        return lambda v: pattern.search(v) is not None
    if name in ("minlength", "maxlength", "min", "max"):
        (n,) = _ints(arg, 1, name)
        return {
            "minlength": lambda v: len(v) >= n,
            "maxlength": lambda v: len(v) <= n,
            "min": lambda v: _is_int(v, 64) and int(v) >= n,
            "max": lambda v: _is_int(v, 64) and int(v) <= n,
        }[name]
    if name == "length":
        bounds = _ints(arg, 2, name) if arg and "," in arg else _ints(arg, 1, name) * 2
        return lambda v: bounds[0] <= len(v) <= bounds[1]
    if name == "range":
        lo, hi = _ints(arg, 2, name)
        return lambda v: _is_int(v, 64) and lo <= int(v) <= hi
    raise RouteTemplateError(f"unsupported route constraint {spec!r}")


@dataclass(frozen=True)
class _Param:
    name: str
    checks: tuple[Check, ...]
    optional: bool
    default: str | None
    catch_all: bool


def _parse_param(body: str, template: str) -> _Param:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    default: str | None = None
    # Constraints come after the name (`id:int`); a default (`id=1`) or `?` closes it.
    head, _, rest = body.partition(":")
    pieces = [head, *_split_constraints(rest)] if rest else [head]
    last = pieces[-1]
    if "=" in last:
        last, default = last.split("=", 1)
    optional = last.endswith("?") or default is not None or catch_all
    pieces[-1] = last.rstrip("?")
    name = pieces[0]
    if not re.fullmatch(r"\w+", name):
        raise RouteTemplateError(f"bad parameter {body!r} in route {template!r}")
    checks = tuple(_constraint_check(c) for c in pieces[1:])
    return _Param(name, checks, optional, default, catch_all)


def _split_constraints(rest: str) -> list[str]:
    """Split `int:min(1)` on colons that are not inside a constraint's parentheses."""
    out, depth, cur = [], 0, ""
    for ch in rest:
        if ch == ":" and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    out.append(cur)
    return out


@dataclass
class RouteTemplate:
    """A compiled route template; `match` returns route values or None."""

    template: str
    _regex: re.Pattern[str] = field(init=False, repr=False)
    _params: dict[str, _Param] = field(init=False, repr=False)
    precedence: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        text = self.template.strip().strip("/")
        segments = text.split("/") if text else []
        self._params = {}
        regex, ranks = "", []
        for index, segment in enumerate(segments):
            if not segment:
                raise RouteTemplateError(f"empty segment in route {self.template!r}")
            part, rank = self._compile_segment(segment, index == len(segments) - 1)
            regex += part
            ranks.append(rank)
        self._regex = re.compile(f"^{regex}/?$" if regex else "^/?$", re.IGNORECASE | re.DOTALL)
        self.precedence = (*ranks, 5)

    def _compile_segment(self, segment: str, is_last: bool) -> tuple[str, int]:
        pieces = _PARAM.split(segment)  # literal, param, literal, param, ..., literal
        literals, params = pieces[0::2], [_parse_param(p, self.template) for p in pieces[1::2]]
        if any("{" in lit or "}" in lit for lit in literals):
            raise RouteTemplateError(f"unbalanced braces in route {self.template!r}")
        for p in params:
            if p.name.lower() in (n.lower() for n in self._params):
                raise RouteTemplateError(f"duplicate parameter {p.name!r} in route {self.template!r}")
            self._params[p.name] = p
        if not params:
            return "/" + re.escape(segment), 0
        if len(params) == 1 and literals == ["", ""]:
            p = params[0]
            if p.catch_all:
                if not is_last:
                    raise RouteTemplateError(f"catch-all must be last in route {self.template!r}")
                return f"(?:/(?P<{p.name}>.*))?", 4
            if p.optional:
                if not is_last:
                    raise RouteTemplateError(f"optional parameter must be last in route {self.template!r}")
                return f"(?:/(?P<{p.name}>[^/]+))?", 3
            return f"/(?P<{p.name}>[^/]+)", 1 if p.checks else 2
        # Complex segment such as `{name}.{ext}`: every part required, lazy captures.
        if any(p.catch_all or p.optional for p in params):
            raise RouteTemplateError(f"optional/catch-all inside a complex segment in {self.template!r}")
        regex = "/" + re.escape(literals[0])
        for p, lit in zip(params, literals[1:], strict=True):
            regex += f"(?P<{p.name}>[^/]+?)" + re.escape(lit)
        return regex, 1

    @property
    def parameter_names(self) -> list[str]:
        return list(self._params)

    def match(self, path: str) -> dict[str, str] | None:
        """Route values (strings, like the host sends them) if `path` fits, else None."""
        m = self._regex.match(path)
        if m is None:
            return None
        values: dict[str, str] = {}
        for name, param in self._params.items():
            raw = m.group(name)
            if raw is None or raw == "":
                if param.default is not None:
                    values[name] = param.default
                continue
            if not all(check(raw) for check in param.checks):
                return None
            values[name] = raw
        return values


def join_prefix(prefix: str, route: str) -> str:
    """The full template the host registers: `routePrefix/route` (prefix may be empty)."""
    parts = [p.strip("/") for p in (prefix, route) if p and p.strip("/")]
    return "/".join(parts)
