"""The SDK's aiohttp transport honours HTTP_PROXY / NO_PROXY (looked up once per origin)."""

from __future__ import annotations

import asyncio

import httpx2
import pytest

from chatstream.aiohttp_transport import AiohttpTransport


async def _fake_proxy(seen: list[bytes]) -> asyncio.Server:
    """Records each request's head and answers it with a tiny body."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nproxy")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_requests_go_through_the_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        seen: list[bytes] = []
        server = await _fake_proxy(seen)
        port = server.sockets[0].getsockname()[1]
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with httpx2.AsyncClient(transport=AiohttpTransport()) as client:
            for _ in range(2):  # the second request uses the proxy looked up for the first
                response = await client.post("http://upstream.invalid:8080/v1/chat", content=b"{}")
                assert response.text == "proxy"
        server.close()
        assert len(seen) == 2
        assert all(head.startswith(b"POST http://upstream.invalid:8080/v1/chat HTTP/1.1") for head in seen)

    asyncio.run(scenario())


def test_no_proxy_hosts_are_reached_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        proxied: list[bytes] = []
        proxy = await _fake_proxy(proxied)
        direct: list[bytes] = []
        upstream = await _fake_proxy(direct)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}/v1/chat"
        async with httpx2.AsyncClient(transport=AiohttpTransport()) as client:
            response = await client.post(url, content=b"{}")
            assert response.status_code == 200
        proxy.close()
        upstream.close()
        assert proxied == []
        assert len(direct) == 1 and direct[0].startswith(b"POST /v1/chat HTTP/1.1")

    asyncio.run(scenario())


def test_redirects_are_not_followed_even_by_a_client_that_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """The openai SDK's httpx2 client follows redirects by default: the transport hides the Location."""
    monkeypatch.delenv("HTTP_PROXY", raising=False)

    async def scenario() -> None:
        elsewhere: list[bytes] = []
        other = await _fake_proxy(elsewhere)
        target = f"http://127.0.0.1:{other.sockets[0].getsockname()[1]}/v1/chat"

        async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(redirect, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat"
        async with httpx2.AsyncClient(transport=AiohttpTransport(), follow_redirects=True) as client:
            response = await client.post(url, content=b"{}")
        server.close()
        other.close()
        assert response.status_code == 307
        assert "location" not in response.headers
        assert elsewhere == []

    asyncio.run(scenario())


def test_idle_connections_expire_before_a_five_second_server_idle_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHAT_UPSTREAM_POOL_KEEPALIVE_SECONDS", raising=False)
    assert AiohttpTransport().keepalive_timeout <= 4.0
    monkeypatch.setenv("CHAT_UPSTREAM_POOL_KEEPALIVE_SECONDS", "0.8")
    assert AiohttpTransport().keepalive_timeout == 0.8
