"""Serve the chat page's files: a fixed, in-memory set, strict headers, ETag revalidation.

Knows nothing of Azure Functions: handlers take a Starlette request and return a response.
Only files that exist in `static/` at import time can be served, so no request path ever
reaches the file system (no traversal to worry about).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

#: No inline script or style anywhere; the page may only talk to its own origin.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


class StaticAssets:
    """The page's files, read once. `no-cache` + ETag: a redeploy shows at once, a reload costs a 304."""

    def __init__(self, directory: Path = STATIC_DIR, index: str = "index.html") -> None:
        self.index = index
        self.assets: dict[str, Asset] = {}
        for path in sorted(directory.iterdir()):
            content_type = CONTENT_TYPES.get(path.suffix)
            if path.is_file() and content_type:
                body = path.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                self.assets[path.name] = Asset(body, content_type, etag)
        if index not in self.assets:
            raise FileNotFoundError(f"{index} missing from {directory}")

    def response(self, request: Request, name: str) -> Response:
        asset = self.assets.get(name)
        if asset is None:
            return Response(
                "not found", status_code=404, media_type="text/plain", headers={"Cache-Control": "no-store"}
            )
        headers = {"Cache-Control": "no-cache", "ETag": asset.etag, **SECURITY_HEADERS}
        if asset.etag in _etags(request.headers.get("if-none-match")):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, headers={**headers, "Content-Type": asset.content_type})

    def page(self, request: Request) -> Response:
        """The page lives at `.../ui` (no slash) so that relative URLs (`ui/app.js`, `chat`) resolve
        whatever the host's route prefix is; `.../ui/` is sent there."""
        if request.url.path.endswith("/"):
            return Response(status_code=308, headers={"Location": "../ui", "Cache-Control": "no-store"})
        return self.response(request, self.index)

    def asset(self, request: Request, name: str) -> Response:
        if name == self.index:  # one URL for the page, so relative links always work
            return Response(status_code=308, headers={"Location": "../ui", "Cache-Control": "no-store"})
        return self.response(request, name)


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


@cache
def ui_assets() -> StaticAssets:
    return StaticAssets()
