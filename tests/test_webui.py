"""The chat page's files as the app serves them: routes, content types, caching and a strict CSP."""

from __future__ import annotations

import re

import httpx
import pytest

from webui.assets import STATIC_DIR, StaticAssets


def test_page_and_assets_are_served_with_types_and_security_headers(app):
    page = httpx.get(f"{app.url}/api/ui")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-cache"
    # Every file the page references is served, relative to /api/ui, with its own type.
    referenced = re.findall(r'(?:src|href)="(ui/[^"]+)"', page.text)
    assert sorted(referenced) == ["ui/app.css", "ui/app.js"]
    types = {"ui/app.js": "text/javascript", "ui/app.css": "text/css", "ui/stream.js": "text/javascript"}
    for path, kind in types.items():
        asset = httpx.get(f"{app.url}/api/{path}")
        assert asset.status_code == 200, path
        assert asset.headers["content-type"].startswith(kind)


def test_page_has_no_inline_script_style_or_handlers():
    """The CSP forbids them, so any that crept in would silently not work."""
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html, re.IGNORECASE)
    js = (STATIC_DIR / "app.js").read_text() + (STATIC_DIR / "stream.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js


def test_etag_revalidation_and_redirects(app):
    first = httpx.get(f"{app.url}/api/ui/app.js")
    again = httpx.get(f"{app.url}/api/ui/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    for path in ("/api/ui/", "/api/ui/index.html"):
        moved = httpx.get(f"{app.url}{path}")
        assert moved.status_code == 308
        assert httpx.URL(f"{app.url}{path}").join(moved.headers["location"]).path == "/api/ui"


@pytest.mark.parametrize("path", ["/api/ui/nope.js", "/api/ui/..%2Ffunction_app.py", "/api/ui/assets.py"])
def test_only_the_pages_own_files_are_served(app, path):
    response = httpx.get(f"{app.url}{path}")
    assert response.status_code == 404
    assert b"import" not in response.content


def test_assets_are_read_once_and_exclude_non_web_files(tmp_path):
    (tmp_path / "index.html").write_text("<p>hi</p>")
    (tmp_path / "notes.txt").write_text("secret")
    assets = StaticAssets(tmp_path)
    assert set(assets.assets) == {"index.html"}
    (tmp_path / "index.html").unlink()
    with pytest.raises(FileNotFoundError):
        StaticAssets(tmp_path)


def test_make_run_banner_points_to_the_page(app):
    lines = app.output.splitlines()
    start = lines.index("Open in a browser:")
    assert lines[start + 1].strip() == f"{app.url}/api/ui"
