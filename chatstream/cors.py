"""CORS as an explicit allow-list, answered by the app itself (the platform's CORS stays empty).

A per-function handler rather than Starlette's CORSMiddleware: the Functions worker owns the ASGI
app, so a function can only shape its own responses, preflight included.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

#: Request headers a browser client may send; anything else in a preflight is refused. Beyond our own:
#: what the openai SDKs send (`authorization`, `openai-organization`/`-project` when configured, and a
#: growing family of `x-stainless-*` telemetry headers, allowed by prefix) and Azure SDKs' `x-ms-useragent`.
ALLOWED_HEADERS = frozenset(
    {
        "content-type",
        "accept",
        "authorization",
        "x-functions-key",
        "last-event-id",
        "x-ms-useragent",
        "openai-organization",
        "openai-project",
    }
)
ALLOWED_HEADER_PREFIXES = ("x-stainless-",)
#: Response headers a browser script may read.
EXPOSED_HEADERS = "X-Request-Id, Retry-After"
PREFLIGHT_MAX_AGE = "600"


class CorsPolicy:
    def __init__(self, origins: frozenset[str]) -> None:
        self.origins = origins
        self.any_origin = "*" in origins

    def allows(self, origin: str | None) -> bool:
        return origin is not None and (self.any_origin or origin.rstrip("/") in self.origins)

    def headers(self, request: Request) -> dict[str, str]:
        """Headers for an actual (non-preflight) response; none when the origin is not allowed."""
        origin = request.headers.get("origin")
        if not self.allows(origin):
            return {"Vary": "Origin"} if self.origins else {}
        assert origin is not None
        return {
            "Access-Control-Allow-Origin": "*" if self.any_origin else origin,
            "Access-Control-Expose-Headers": EXPOSED_HEADERS,
            "Vary": "Origin",
        }

    def preflight(self, request: Request, request_id: str, methods: tuple[str, ...] = ("POST",)) -> Response:
        """204 with the grant, or 403 (no CORS headers) for an origin, method or header not allowed.
        `methods`: what the route answers besides OPTIONS."""
        allowed_methods = ", ".join((*methods, "OPTIONS"))
        base = {"X-Request-Id": request_id, "Allow": allowed_methods, "Vary": "Origin"}
        origin = request.headers.get("origin")
        method = request.headers.get("access-control-request-method")
        if origin is None or method is None:  # a plain OPTIONS, not a browser preflight
            return Response(status_code=204, headers=base)
        wanted = [
            h.strip().lower() for h in request.headers.get("access-control-request-headers", "").split(",")
        ]
        wanted = [h for h in wanted if h]
        if not self.allows(origin) or method.upper() not in (*methods, "OPTIONS"):
            return Response(status_code=403, headers=base)
        if any(h not in ALLOWED_HEADERS and not h.startswith(ALLOWED_HEADER_PREFIXES) for h in wanted):
            return Response(status_code=403, headers=base)
        headers = {
            **base,
            "Access-Control-Allow-Origin": "*" if self.any_origin else origin,
            "Access-Control-Allow-Methods": allowed_methods,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        }
        if wanted:
            headers["Access-Control-Allow-Headers"] = ", ".join(wanted)
        return Response(status_code=204, headers=headers)
