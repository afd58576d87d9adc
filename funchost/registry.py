"""Read HTTP functions from the app's own registrations, like worker indexing does.

There is deliberately no second route table: everything comes from
`FunctionApp.get_functions()`, which may only be called once per app object
(a second call raises "does not have a unique function name").
"""

from __future__ import annotations

import importlib
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func
from azure.functions.decorators.function_app import FunctionRegister
from azurefunctions.extensions.base import RequestTrackerMeta

from funchost.routing import RouteTemplate, join_prefix


class FunctionLoadError(RuntimeError):
    """The app would also fail to load in the real worker."""


@dataclass(frozen=True)
class HttpFunction:
    """One HTTP-triggered function as the host and worker see it."""

    name: str
    route: str
    template: RouteTemplate
    methods: frozenset[str] | None  # None: every method
    auth_level: str
    trigger_arg: str
    user_function: Callable[..., Any]
    wants_context: bool

    def allows(self, method: str) -> bool:
        return self.methods is None or method.upper() in self.methods

    @property
    def requires_key(self) -> bool:
        return self.auth_level != "anonymous"


def _enum_value(value: Any) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def _check_trigger_annotation(name: str, fn: Callable[..., Any], trigger_arg: str) -> None:
    """With the streaming extension the worker refuses non-FastAPI request annotations."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable string annotations: the worker would find out, not us
        return
    hint = hints.get(trigger_arg)
    if inspect.isclass(hint) and not RequestTrackerMeta.check_type(hint):
        raise FunctionLoadError(
            f"function {name!r}: trigger argument {trigger_arg!r} is annotated {hint.__name__}; "
            "with azurefunctions-extensions-http-fastapi it must be its Request type"
        )


def http_functions(app: FunctionRegister, route_prefix: str) -> list[HttpFunction]:
    """Index the app once; most specific routes first, like ASP.NET endpoint ordering."""
    found: list[HttpFunction] = []
    for function in app.get_functions():
        if not function.is_http_function():
            continue
        trigger = function.get_trigger()
        name = function.get_function_name() or ""
        if trigger is None:
            continue
        route = getattr(trigger, "route", None) or name
        raw_methods = getattr(trigger, "methods", None)
        methods = frozenset(_enum_value(m).upper() for m in raw_methods) if raw_methods else None
        auth = getattr(trigger, "auth_level", None) or app.auth_level
        user_function = function.get_user_function()
        params = inspect.signature(user_function).parameters
        if trigger.name not in params:
            raise FunctionLoadError(f"function {name!r} has no parameter named {trigger.name!r}")
        _check_trigger_annotation(name, user_function, trigger.name)
        found.append(
            HttpFunction(
                name=name,
                route=route,
                template=RouteTemplate(join_prefix(route_prefix, route)),
                methods=methods,
                auth_level=_enum_value(auth).lower(),
                trigger_arg=trigger.name,
                user_function=user_function,
                wants_context="context" in params and trigger.name != "context",
            )
        )
    found.sort(key=lambda f: f.template.precedence)
    return found


def find_function_app(module: ModuleType) -> FunctionRegister:
    """Exactly one module-level app, as the worker requires."""
    apps = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
    if len(apps) != 1:
        raise FunctionLoadError(
            f"{module.__name__} must define exactly one module-level FunctionApp, found {len(apps)}"
        )
    return apps[0]


def import_function_app(app_dir: Path, module_name: str = "function_app") -> func.FunctionApp:
    """Import `function_app.py` from app_dir the way the worker does (app dir on sys.path)."""
    if not (app_dir / f"{module_name}.py").is_file():
        raise FunctionLoadError(f"no {module_name}.py in {app_dir}")
    sys.path.insert(0, str(app_dir))
    module = importlib.import_module(module_name)
    return find_function_app(module)  # type: ignore[return-value]
