"""host.json and local.settings.json, read the way `func start` reads them.

Precedence for `Values` follows Core Tools (StartHostAction.UpdateEnvironmentVariables):
a variable that is already set to a non-empty value in the process environment wins and
the local setting is skipped with a notice; unset or empty variables take the value from
local.settings.json.  So `FOO=x python -m funchost` behaves like `FOO=x func start`.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PORT = 7071
DEFAULT_ROUTE_PREFIX = "api"


class SettingsError(ValueError):
    """A settings file the real tooling would also reject."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must contain a JSON object")
    return data


def route_prefix(app_dir: Path) -> str:
    """`extensions.http.routePrefix` from host.json; "api" if absent, "" allowed."""
    path = app_dir / "host.json"
    if not path.is_file():
        return DEFAULT_ROUTE_PREFIX
    http = _read_json(path).get("extensions", {}).get("http", {})
    prefix = http.get("routePrefix", DEFAULT_ROUTE_PREFIX) if isinstance(http, dict) else None
    if not isinstance(prefix, str):
        raise SettingsError(f"{path}: extensions.http.routePrefix must be a string")
    return prefix.strip("/")


@dataclass
class LocalSettings:
    """What local.settings.json contributed (for the startup banner)."""

    path: Path | None = None
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    local_http_port: int | None = None


def _as_env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def load_local_settings(app_dir: Path, environ: MutableMapping[str, str] | None = None) -> LocalSettings:
    """Copy `Values` into environ (existing non-empty variables win); absent file: no-op."""
    env = os.environ if environ is None else environ
    path = app_dir / "local.settings.json"
    result = LocalSettings()
    if not path.is_file():
        return result
    data = _read_json(path)
    result.path = path
    if data.get("IsEncrypted") is True:
        raise SettingsError(f"{path} is encrypted; run `func settings decrypt` or recreate it")
    values = data.get("Values") or {}
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: Values must be an object")
    for key, value in values.items():
        if value is None:
            continue
        if env.get(key):
            result.skipped.append(key)
            continue
        env[key] = _as_env_value(value)
        result.applied.append(key)
    port = (data.get("Host") or {}).get("LocalHttpPort")
    if port is not None:
        result.local_http_port = _port(port, f"{path}: Host.LocalHttpPort")
    return result


def _port(value: Any, source: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{source} is not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise SettingsError(f"{source} is out of range: {port}")
    return port


def resolve_port(
    flag: int | None, environ: MutableMapping[str, str] | None = None, local_http_port: int | None = None
) -> int:
    """--port, then PORT (incl. one set by local.settings.json), then Host.LocalHttpPort, then 7071."""
    env = os.environ if environ is None else environ
    if flag is not None:
        return _port(flag, "--port")
    if env.get("PORT"):
        return _port(env["PORT"], "PORT")
    if local_http_port is not None:
        return local_http_port
    return DEFAULT_PORT


#: Request-read timeouts of the local host (funchost/read_timeouts.py), in seconds.
HEADER_TIMEOUT_ENV = "FUNCHOST_HEADER_TIMEOUT_SECONDS"
BODY_TIMEOUT_ENV = "FUNCHOST_BODY_TIMEOUT_SECONDS"


def read_timeout(
    flag: float | None, name: str, default: float, environ: MutableMapping[str, str] | None = None
) -> float:
    """The flag, else the environment variable `name`, else `default`; 0 (or less) means no limit."""
    env = os.environ if environ is None else environ
    if flag is not None:
        value: Any = flag
    elif env.get(name, "").strip():
        value = env[name]
    else:
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} is not a number of seconds: {value!r}") from None
    if seconds != seconds or seconds == float("inf"):
        raise SettingsError(f"{name} must be a finite number of seconds: {value!r}")
    return max(0.0, seconds)
