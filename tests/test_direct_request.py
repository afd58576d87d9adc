"""The direct request path (chatstream/direct.py) against the openai SDK's own, on real sockets.

The same model sends the same request once through the SDK and once directly, to the hostile upstream:
the bytes on the wire (headers and body) and every failure the caller can get must be the same.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from chatstream import direct
from chatstream.models import _token_provider, build_model
from chatstream.settings import Settings
from tests.support.hostile import Conn, HostileUpstream, Seen, chunk

DEPLOYMENT = "gpt-4o-mini"


async def _answer(conn: Conn) -> bool:
    await conn.head(200, close=False, length=None)
    for payload in (chunk("", role="assistant"), chunk("Hi"), chunk(finish_reason="stop"), "[DONE]"):
        await conn.event(payload)
    return False


_ERRORS: dict[str, tuple[int, Any, dict[str, str]]] = {
    "filtered": (400, {"error": {"code": "content_filter", "message": "filtered"}}, {}),
    "unauthorized": (401, {"error": {"code": "401", "message": "Access denied"}}, {}),
    "missing": (404, {"error": {"code": "DeploymentNotFound", "message": "no such deployment"}}, {}),
    "limited": (429, {"error": {"code": "429", "message": "slow down"}}, {"Retry-After": "7"}),
    "broken": (500, {"error": {"message": "boom"}}, {}),
    "busy": (503, "not json at all", {"retry-after-ms": "1500"}),
    "moved": (302, {"moved": True}, {"Location": "http://elsewhere.invalid/steal"}),
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[HostileUpstream]:
    server = HostileUpstream()
    server.script("ok", _answer)
    for name, (status, body, headers) in _ERRORS.items():

        async def fail(conn: Conn, status: int = status, body: Any = body, headers: dict = headers) -> bool:
            await conn.json_response(status, body, headers)
            return False

        server.script(name, fail)

    async def silent(conn: Conn) -> bool:
        await conn.hold(10)
        return False

    server.script("silent", silent)
    yield server
    server.stop()


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per streamed `create()`: whether it went direct."""
    calls: list[bool] = []
    opened = direct.DirectChat.open

    async def spy(self: direct.DirectChat, params: Any) -> Any:
        try:
            response = await opened(self, params)
        except BaseException:
            calls.append(True)
            raise
        calls.append(response is not None)
        return response

    monkeypatch.setattr(direct.DirectChat, "open", spy)
    return calls


def _settings(url: str, **env: Any) -> Settings:
    values: dict[str, Any] = {
        "azure_openai_endpoint": url,
        "azure_openai_api_key": "secret-key",
        "azure_openai_deployment": DEPLOYMENT,
        "upstream_read_timeout_seconds": 1.0,
        **env,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def _stream(model: Any, prompt: str, **options: Any) -> list[str]:
    bound = model.bind(**options) if options else model
    return [chunk.content async for chunk in bound.astream(prompt)]


def _sdk_only(model: Any) -> None:
    """This model's client sends everything through the SDK (as before the direct path)."""
    model.async_client._direct = direct.DirectChat(model.async_client._completions)
    model.async_client._direct.transport = None


async def _both(
    make: Callable[[], Any], prompt: str, upstream: HostileUpstream, **options: Any
) -> tuple[list[Any], list[Any]]:
    """(SDK, direct) outcomes of the same request: text, or the exception raised."""
    outcomes: list[list[Any]] = []
    for sdk in (True, False):
        model = make()
        if sdk:
            _sdk_only(model)
        else:
            await _stream(model, "[hostile:ok] warm-up")  # the client's first request is the SDK's
        results: list[Any] = []
        for _ in range(2):
            try:
                results.append(await _stream(model, prompt, **options))
            except Exception as exc:
                results.append(exc)
        outcomes.append(results)
        await _close(model)
    return outcomes[0], outcomes[1]


async def _close(model: Any) -> None:
    await model.async_client._completions._client._client._transport.aclose()


def _requests(upstream: HostileUpstream, marker: str) -> list[Seen]:
    return [seen for seen in upstream.seen if marker in seen.body.decode()]


def _wire(seen: Seen) -> tuple[str, str, dict[str, str], bytes]:
    """What the upstream reads, byte for byte (a retry must be the same request whoever sends it)."""
    return seen.method, seen.path, seen.headers, seen.body


def test_direct_request_is_the_sdk_request_byte_for_byte(
    upstream: HostileUpstream, taken: list[bool]
) -> None:
    """Key auth, Azure: URL, query, every header and the body bytes (its keys in the SDK's order) are
    what the SDK sends."""
    upstream.reset()
    model = lambda: build_model(_settings(upstream.url)).model  # noqa: E731
    prompt = '[hostile:ok] héllo "quoted" \u2603'
    sdk, fast = asyncio.run(_both(model, prompt, upstream, max_tokens=7, temperature=0.25, stop=["x"]))
    assert sdk == fast and all("Hi" in texts for texts in fast)
    assert taken.count(True) == 2, "the second client's requests after its first went direct"
    wire = [_wire(seen) for seen in _requests(upstream, "quoted")]
    assert len(wire) == 4
    assert wire[0] == wire[1] == wire[2] == wire[3]
    method, path, headers, raw = wire[2]
    body = json.loads(raw)
    assert method == "POST" and path == f"/openai/deployments/{DEPLOYMENT}/chat/completions?api-version=" + (
        Settings(_env_file=None).azure_openai_api_version  # type: ignore[call-arg]
    )
    assert headers["api-key"] == "secret-key" and "authorization" not in headers
    assert body["messages"] == [{"content": prompt, "role": "user"}]
    assert (body["max_tokens"], body["temperature"], body["stop"], body["stream"]) == (7, 0.25, ["x"], True)


def test_direct_request_keyless_awaits_the_token_provider_each_time(
    upstream: HostileUpstream, taken: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entra ID: the provider is awaited per request (it caches and refreshes the token), as the SDK does."""
    from chatstream import models

    tokens = iter(f"token-{n}" for n in range(100))

    async def provider() -> str:
        return next(tokens)

    monkeypatch.setattr(models, "_token_provider", lambda client_id: provider)
    _token_provider.cache_clear()
    upstream.reset()
    make = lambda: build_model(_settings(upstream.url, azure_openai_api_key=None)).model  # noqa: E731
    sdk, fast = asyncio.run(_both(make, "[hostile:ok] keyless", upstream))
    assert sdk == fast
    assert taken.count(True) == 2
    seen = _requests(upstream, "keyless")
    tokens_sent = [s.headers["authorization"] for s in seen]
    assert tokens_sent == ["Bearer token-0", "Bearer token-1", "Bearer token-3", "Bearer token-4"]
    assert all("api-key" not in s.headers for s in seen)
    first = {k: v for k, v in seen[0].headers.items() if k != "authorization"}
    assert all({k: v for k, v in s.headers.items() if k != "authorization"} == first for s in seen)


@pytest.mark.parametrize("provider", [False, True])
def test_direct_request_on_the_v1_api_sends_a_bearer(
    upstream: HostileUpstream, taken: list[bool], monkeypatch: pytest.MonkeyPatch, provider: bool
) -> None:
    """The OpenAI client (Azure's v1 API, or any OpenAI-compatible server): key or key provider as Bearer."""
    from chatstream import models

    async def token() -> str:
        return "v1-token"

    monkeypatch.setattr(models, "_token_provider", lambda client_id: token)
    upstream.reset()
    settings = _settings(
        upstream.url, azure_openai_api_version="v1", azure_openai_api_key=None if provider else "v1-key"
    )
    sdk, fast = asyncio.run(_both(lambda: build_model(settings).model, "[hostile:ok] v1", upstream))
    assert sdk == fast
    assert taken.count(True) == 2
    wire = [_wire(seen) for seen in _requests(upstream, "v1")]
    assert len(wire) == 4 and wire[0] == wire[1] == wire[2] == wire[3]
    _method, path, headers, _body = wire[0]
    assert path == "/openai/v1/chat/completions"
    assert headers["authorization"] == ("Bearer v1-token" if provider else "Bearer v1-key")


def _same_error(a: Exception, b: Exception) -> None:
    assert type(a) is type(b)
    assert str(a) == str(b)
    if isinstance(a, openai.APIStatusError):
        assert isinstance(b, openai.APIStatusError)
        assert a.status_code == b.status_code and a.body == b.body
        assert dict(a.response.headers) == dict(b.response.headers)
        assert a.response.content == b.response.content


@pytest.mark.parametrize("script", sorted(_ERRORS))
def test_direct_status_errors_are_the_sdks(upstream: HostileUpstream, taken: list[bool], script: str) -> None:
    """Each non-2xx answer raises the SDK's exception, with the same status, body and headers."""
    make = lambda: build_model(_settings(upstream.url)).model  # noqa: E731
    sdk, fast = asyncio.run(_both(make, f"[hostile:{script}] fail", upstream))
    assert taken.count(True) == 2
    for a, b in zip(sdk, fast, strict=True):
        assert isinstance(a, Exception) and isinstance(b, Exception)
        _same_error(a, b)
    status = _ERRORS[script][0]
    assert isinstance(fast[0], openai.APIStatusError) and fast[0].status_code == status
    assert "Location" not in fast[0].response.headers and "elsewhere" not in str(fast[0].response.headers)


def test_direct_transport_failures_are_the_sdks(upstream: HostileUpstream, taken: list[bool]) -> None:
    """A silent upstream is the SDK's timeout; a refused connection its connection error."""
    make = lambda: build_model(_settings(upstream.url)).model  # noqa: E731
    sdk, fast = asyncio.run(_both(make, "[hostile:silent] wait", upstream))
    assert taken.count(True) == 2
    for a, b in zip(sdk, fast, strict=True):
        assert isinstance(a, openai.APITimeoutError)
        _same_error(a, b)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def refused() -> tuple[Exception, Exception]:
        model = build_model(_settings(closed)).model
        client = model.async_client
        client._completions._client._platform = "linux"  # as after a first request
        fast = await _capture(_stream(model, "refused"))
        other = build_model(_settings(closed)).model
        _sdk_only(other)
        sdk = await _capture(_stream(other, "refused"))
        await _close(model)
        await _close(other)
        return sdk, fast

    taken.clear()
    a, b = asyncio.run(refused())
    assert taken == [True]
    assert isinstance(a, openai.APIConnectionError) and not isinstance(a, openai.APITimeoutError)
    _same_error(a, b)


async def _capture(work: Any) -> Exception:
    try:
        await work
    except Exception as exc:
        return exc
    raise AssertionError("no failure")
