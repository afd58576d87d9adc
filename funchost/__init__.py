"""A local stand-in for the Azure Functions host + Python worker (HTTP streaming apps).

Public API: `build_asgi_app` (serve a FunctionApp's HTTP functions as an ASGI app) and
`funchost.testing` (run it on a loopback port for tests).  See funchost/README.md.
"""

from funchost.asgi import FunctionHost, build_asgi_app
from funchost.registry import FunctionLoadError, HttpFunction
from funchost.routing import RouteTemplate, RouteTemplateError
from funchost.settings import load_local_settings, resolve_port, route_prefix

__all__ = [
    "FunctionHost",
    "FunctionLoadError",
    "HttpFunction",
    "RouteTemplate",
    "RouteTemplateError",
    "build_asgi_app",
    "load_local_settings",
    "resolve_port",
    "route_prefix",
]
