"""Hostile numbers, sizes and callers: absurd Retry-After hints, tool arguments in thousands of
fragments, `Accept` q-values, and what a 503 `not_configured` may tell a caller. Real sockets from the
caller to the app to a misbehaving model server (tests/support/hostile.py)."""

from __future__ import annotations

import math

import httpx
import pytest

from chatstream.upstream import MAX_RETRY_AFTER_SECONDS, _retry_after, retry_after_header
from tests.support.hostile import Conn, HostileUpstream
from tests.test_resilience import assert_no_leak


def _post(url: str, prompt: str, headers: dict[str, str] | None = None, **body: object) -> httpx.Response:
    response = httpx.post(f"{url}/api/chat", json={"user": prompt, **body}, headers=headers, timeout=30)
    return response


# --- Retry-After: whatever the upstream says, the caller gets a finite, bounded, whole-second hint. ---

HOSTILE_HINTS = {
    "inf": {"Retry-After": "inf"},
    "1e999": {"Retry-After": "1e999"},
    "ms-1e400": {"retry-after-ms": "1e400"},
    "huge": {"Retry-After": "99999999999"},
    "nan": {"Retry-After": "NaN"},
    "negative": {"Retry-After": "-5"},
    "garbage": {"Retry-After": "soon-ish, maybe"},
    "ms-nan-then-huge": {"retry-after-ms": "nan", "Retry-After": "1e308"},
    "far-date": {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"},
}


def _assert_bounded_hint(response: httpx.Response) -> None:
    header = response.headers.get("retry-after")
    body = response.json()["error"]
    if header is None:  # no usable hint: neither header nor body carries one
        assert "retry_after" not in body
        return
    assert header.isdigit() and 1 <= int(header) <= MAX_RETRY_AFTER_SECONDS
    value = body["retry_after"]
    assert isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= MAX_RETRY_AFTER_SECONDS


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("hint", sorted(HOSTILE_HINTS))
def test_absurd_retry_after_is_clamped_never_a_500(
    hostile_app, hostile: HostileUpstream, status: int, hint: str
) -> None:
    async def refuse(conn: Conn) -> bool:
        body = {"error": {"code": "429" if status == 429 else "ServiceUnavailable", "message": "busy"}}
        await conn.json_response(status, body, HOSTILE_HINTS[hint])
        return False

    name = f"hint-{status}-{hint}"
    hostile.script(name, refuse)
    response = _post(hostile_app.url, f"[hostile:{name}]")
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == ("rate_limited" if status == 429 else "upstream_overloaded")
    _assert_bounded_hint(response)
    if hint in ("inf", "1e999", "ms-1e400", "huge", "ms-nan-then-huge", "far-date"):
        assert response.headers["retry-after"] == str(int(MAX_RETRY_AFTER_SECONDS))
    if hint in ("nan", "negative", "garbage"):
        assert "retry-after" not in response.headers
    assert_no_leak(response.text)


def test_a_sane_hint_passes_through_unchanged(hostile_app, hostile: HostileUpstream) -> None:
    async def refuse(conn: Conn) -> bool:
        body = {"error": {"code": "429", "message": "slow down"}}
        await conn.json_response(429, body, {"Retry-After": "7"})
        return False

    hostile.script("hint-sane", refuse)
    response = _post(hostile_app.url, "[hostile:hint-sane]")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["retry_after"] == 7


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "1e400"}, MAX_RETRY_AFTER_SECONDS),
        ({"retry-after": "-inf"}, None),
        ({"retry-after-ms": "x", "retry-after": "3"}, 3.0),
        ({"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}, 0.0),  # a date in the past: retry now
        ({"retry-after": "Mon, 99 Foo 99999 99:99:99 GMT"}, None),
        ({"retry-after": "9" * 5000}, MAX_RETRY_AFTER_SECONDS),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert _retry_after(headers) == expected


def test_the_retry_after_header_is_whole_seconds_between_1_and_the_cap() -> None:
    assert retry_after_header(None) == {}
    assert retry_after_header(0.0) == {"Retry-After": "1"}
    assert retry_after_header(2.1) == {"Retry-After": "3"}
    assert retry_after_header(math.inf) == {}
    assert retry_after_header(1e300) == {"Retry-After": str(int(MAX_RETRY_AFTER_SECONDS))}
