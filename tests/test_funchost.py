"""funchost: the local Functions host. Real sockets only (ASGITransport would buffer streams)."""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
import threading
import time
import types
import uuid

import azure.functions as func
import httpx
import pytest
from azurefunctions.extensions.http.fastapi import JSONResponse, PlainTextResponse, Request, StreamingResponse
from fastapi import HTTPException

import funchost
from funchost.banner import banner
from funchost.registry import FunctionLoadError, find_function_app
from funchost.routing import RouteTemplate, RouteTemplateError
from funchost.settings import load_local_settings, resolve_port, route_prefix
from funchost.testing import free_port, serve_in_thread, start_subprocess

TIMEOUT = httpx.Timeout(10.0)

# Shared between the streaming function (server thread) and the test (client side).
release_stream = threading.Event()
stream_log: dict[str, float] = {}


def make_app() -> func.FunctionApp:
    """A fresh throwaway app each time: get_functions() may only run once per app object."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="items/{id:int}", methods=["GET"])
    async def item(req: Request) -> JSONResponse:
        return JSONResponse({"params": dict(req.path_params), "which": "int"})

    @app.route(route="items/{name}", methods=["GET"])
    async def item_by_name(req: Request) -> JSONResponse:
        return JSONResponse({"params": dict(req.path_params), "which": "name"})

    @app.route(route="items/special", methods=["GET"])
    async def special(req: Request) -> JSONResponse:
        return JSONResponse({"which": "literal"})

    @app.route(route="greet/{who?}", methods=["GET", "POST"])
    async def greet(req: Request) -> JSONResponse:
        return JSONResponse({"params": dict(req.path_params)})

    @app.route(route="files/{*rest}")
    async def files(req: Request) -> JSONResponse:
        return JSONResponse({"params": dict(req.path_params), "method": req.method})

    @app.route(route="headers", methods=["GET"])
    async def headers(req: Request, context: func.Context) -> JSONResponse:
        return JSONResponse(
            {
                "invocation_id": req.headers.get("x-ms-invocation-id"),
                "all_ids": req.headers.getlist("x-ms-invocation-id"),
                "context_id": context.invocation_id,
                "function_name": context.function_name,
                "query": req.query_params.get("q"),
            }
        )

    @app.route(route="threads", methods=["GET"])
    async def async_thread(req: Request) -> JSONResponse:
        return JSONResponse({"thread": threading.get_ident()})

    @app.route(route="threads/sync", methods=["GET"])
    def sync_thread(req: Request) -> JSONResponse:
        return JSONResponse({"thread": threading.get_ident()})

    @app.route(route="boom", methods=["GET"])
    async def boom(req: Request) -> JSONResponse:
        raise RuntimeError("secret-detail-do-not-leak")

    @app.route(route="boom/sync", methods=["GET"])
    def boom_sync(req: Request) -> JSONResponse:
        raise ValueError("secret-detail-do-not-leak")

    @app.route(route="none", methods=["GET"])
    async def returns_none(req: Request) -> JSONResponse:
        return None  # type: ignore[return-value]

    @app.route(route="teapot", methods=["GET"])
    async def teapot(req: Request) -> JSONResponse:
        raise HTTPException(status_code=418, detail="short and stout")

    @app.route(route="plain", methods=["GET"])
    async def plain_dict(req: Request) -> dict:
        return {"ok": True}

    @app.route(route="echo", methods=["POST"])
    async def echo(req: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await req.body())})

    @app.route(route="keyed", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
    async def keyed(req: Request) -> PlainTextResponse:
        return PlainTextResponse("no key needed locally")

    @app.route(route="stream", methods=["POST"], trigger_arg_name="request")
    async def stream(request: Request) -> StreamingResponse:
        body = await request.json()

        async def events():
            yield f"data: first {body['user']}\n\n"
            stream_log["first_yielded"] = time.monotonic()
            # Hold the stream open until the client has seen the first chunk (bounded).
            await asyncio.to_thread(release_stream.wait, 5)
            for i in range(3):
                await asyncio.sleep(0.3)
                yield f"data: tick {i}\n\n"
            stream_log["finished"] = time.monotonic()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def server():
    host = funchost.build_asgi_app(make_app())
    with serve_in_thread(host) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


# --- route templates (host side) -------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("api/items/{id}", "/api/items/42", {"id": "42"}),
        ("api/items/{id:int}", "/api/items/42", {"id": "42"}),
        ("api/items/{id:int}", "/api/items/-3", {"id": "-3"}),
        ("api/items/{id:int}", "/api/items/x", None),
        ("api/items/{id:int}", "/api/items/99999999999", None),
        ("api/items/{id:int:min(10)}", "/api/items/9", None),
        ("api/items/{id:int:min(10)}", "/api/items/10", {"id": "10"}),
        ("api/items/{id:guid}", f"/api/items/{uuid.UUID(int=1)}", {"id": str(uuid.UUID(int=1))}),
        ("api/items/{id:alpha}", "/api/items/abc1", None),
        ("api/items/{id?}", "/api/items", {}),
        ("api/items/{id?}", "/api/items/7", {"id": "7"}),
        ("api/items/{id=5}", "/api/items", {"id": "5"}),
        ("api/files/{*rest}", "/api/files/a/b/c.txt", {"rest": "a/b/c.txt"}),
        ("api/files/{*rest}", "/api/files", {}),
        ("api/files/{**rest}", "/api/files/x", {"rest": "x"}),
        ("api/Hello", "/API/hello", {}),
        ("api/hello", "/api/hello/", {}),
        ("api/hello", "/api/hello/more", None),
        ("api/dl/{name}.{ext}", "/api/dl/report.v2.pdf", {"name": "report", "ext": "v2.pdf"}),
        ("hello", "/hello", {}),
        ("", "/", {}),
    ],
)
def test_route_template_matching(template, path, expected):
    assert RouteTemplate(template).match(path) == expected


@pytest.mark.parametrize(
    "template", ["a/{*rest}/b", "a/{id?}/b", "a/{id:nosuch}", "a/{id}/{ID}", "a/{bad name}", "a//b"]
)
def test_invalid_route_templates_are_rejected(template):
    with pytest.raises(RouteTemplateError):
        RouteTemplate(template)


def test_specific_routes_sort_first():
    ranks = sorted(
        ["api/{*rest}", "api/{a}", "api/{a:int}", "api/x"], key=lambda t: RouteTemplate(t).precedence
    )
    assert ranks == ["api/x", "api/{a:int}", "api/{a}", "api/{*rest}"]


# --- routing over a real server ---------------------------------------------------------


def test_route_params_reach_request_as_strings(client):
    r = client.get("/api/items/42")
    assert r.status_code == 200
    assert r.json() == {"params": {"id": "42"}, "which": "int"}


def test_constraint_falls_through_to_next_route_and_literals_win(client):
    assert client.get("/api/items/abc").json() == {"params": {"name": "abc"}, "which": "name"}
    assert client.get("/api/items/special").json() == {"which": "literal"}


def test_matching_is_case_insensitive(client):
    r = client.get("/API/Items/7")
    assert r.status_code == 200
    assert r.json()["params"] == {"id": "7"}


def test_optional_and_catch_all_params(client):
    assert client.get("/api/greet").json() == {"params": {}}
    assert client.get("/api/greet/ann").json() == {"params": {"who": "ann"}}
    r = client.delete("/api/files/a/b.txt")  # no methods= means every method
    assert r.json() == {"params": {"rest": "a/b.txt"}, "method": "DELETE"}


def test_wrong_method_and_unknown_route_are_404(client):
    assert client.post("/api/items/42").status_code == 404
    assert client.put("/api/greet").status_code == 404
    assert client.get("/api/nothing-here").status_code == 404
    assert client.get("/items/42").status_code == 404  # prefix is required


def test_invocation_id_header_and_context(client):
    r = client.get("/api/headers?q=1", headers={"x-ms-invocation-id": "client-supplied"})
    data = r.json()
    assert uuid.UUID(data["invocation_id"]).version == 4
    assert data["all_ids"] == [data["invocation_id"]]  # the host's id replaces the client's
    assert data["context_id"] == data["invocation_id"]
    assert data["function_name"] == "headers"
    assert data["query"] == "1"
    assert client.get("/api/headers").json()["invocation_id"] != data["invocation_id"]


def test_sync_functions_run_off_the_event_loop_thread(client):
    loop_thread = client.get("/api/threads").json()["thread"]
    assert client.get("/api/threads/sync").json()["thread"] != loop_thread


def test_auth_level_is_not_enforced_locally(client):
    r = client.get("/api/keyed")
    assert r.status_code == 200
    assert r.text == "no key needed locally"


# --- results and errors (worker side) ----------------------------------------------------


@pytest.mark.parametrize("path", ["/api/boom", "/api/boom/sync"])
def test_exception_is_500_without_details(client, path, caplog):
    with caplog.at_level("ERROR", logger="funchost"):
        r = client.get(path)
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("text/plain")
    assert "secret-detail" not in r.text
    assert "Traceback" not in r.text
    assert any("secret-detail-do-not-leak" in (rec.exc_text or str(rec.exc_info)) for rec in caplog.records)


def test_none_result_is_500(client):
    r = client.get("/api/none")
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("text/plain")


def test_http_exception_keeps_its_status(client):
    r = client.get("/api/teapot")
    assert r.status_code == 418
    assert r.json() == {"detail": "short and stout"}


def test_plain_values_are_serialised_as_json(client):
    r = client.get("/api/plain")
    assert r.status_code == 200
    assert r.json() == {"ok": True}


# --- streaming over a real socket ---------------------------------------------------------


def test_streaming_chunks_arrive_before_the_generator_finishes(server):
    release_stream.clear()
    stream_log.clear()
    arrivals: list[tuple[float, str]] = []
    with httpx.Client(timeout=TIMEOUT) as c:
        with c.stream("POST", f"{server.url}/api/stream", json={"user": "hello"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert "content-length" not in r.headers
            for chunk in r.iter_text():
                arrivals.append((time.monotonic(), chunk))
                release_stream.set()  # only now may the generator go on
    text = "".join(c for _, c in arrivals)
    assert text.startswith("data: first hello\n\n")
    assert text.endswith("data: tick 2\n\n")
    first_at = arrivals[0][0]
    # Deterministic: the generator waits for our first read, so a buffering server would
    # have made us wait for the whole body (5 s hold + ticks) before seeing anything.
    assert first_at < stream_log["finished"]
    assert "first hello" in arrivals[0][1]
    # And the rest really was spread over time (3 x 0.3 s sleeps after the first chunk).
    assert arrivals[-1][0] - first_at >= 0.6


# --- settings ----------------------------------------------------------------------------


def test_route_prefix_from_host_json(tmp_path):
    assert route_prefix(tmp_path) == "api"  # no host.json
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))
    assert route_prefix(tmp_path) == "api"
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {"http": {"routePrefix": "/v1/"}}}))
    assert route_prefix(tmp_path) == "v1"
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {"http": {"routePrefix": ""}}}))
    assert route_prefix(tmp_path) == ""


@pytest.mark.parametrize(
    ("prefix", "good", "bad"), [("", "/items/3", "/api/items/3"), ("v1", "/V1/items/3", "/api/items/3")]
)
def test_served_with_prefix_from_host_json(tmp_path, prefix, good, bad):
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {"http": {"routePrefix": prefix}}}))
    host = funchost.build_asgi_app(make_app(), route_prefix(tmp_path))
    with serve_in_thread(host) as running, httpx.Client(base_url=running.url, timeout=TIMEOUT) as c:
        assert c.get(good).json()["params"] == {"id": "3"}
        assert c.get(bad).status_code == 404


def test_local_settings_values_fill_but_do_not_override_environment(tmp_path):
    (tmp_path / "local.settings.json").write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                "Values": {
                    "NEW": "from-file",
                    "SET": "from-file",
                    "EMPTY": "from-file",
                    "FLAG": True,
                    "N": 3,
                },
                "Host": {"LocalHttpPort": 7080},
            }
        )
    )
    env = {"SET": "from-env", "EMPTY": ""}
    result = load_local_settings(tmp_path, env)
    assert env == {"NEW": "from-file", "SET": "from-env", "EMPTY": "from-file", "FLAG": "true", "N": "3"}
    assert result.skipped == ["SET"]
    assert result.local_http_port == 7080


def test_missing_local_settings_is_a_no_op(tmp_path):
    env = {"A": "1"}
    result = load_local_settings(tmp_path, env)
    assert env == {"A": "1"}
    assert result.path is None


def test_port_precedence():
    assert resolve_port(None, {}) == 7071
    assert resolve_port(None, {}, local_http_port=7080) == 7080
    assert resolve_port(None, {"PORT": "8001"}, local_http_port=7080) == 8001
    assert resolve_port(9000, {"PORT": "8001"}, local_http_port=7080) == 9000
    with pytest.raises(ValueError):
        resolve_port(None, {"PORT": "nope"})


# --- app discovery and banner -------------------------------------------------------------


def test_exactly_one_module_level_app_required():
    module = types.ModuleType("function_app")
    with pytest.raises(FunctionLoadError):
        find_function_app(module)
    module.a, module.b = func.FunctionApp(), func.FunctionApp()
    with pytest.raises(FunctionLoadError):
        find_function_app(module)


def test_classic_http_request_annotation_is_refused_like_the_worker():
    app = func.FunctionApp()

    @app.route(route="old")
    def old(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("x")

    with pytest.raises(FunctionLoadError, match="Request"):
        funchost.build_asgi_app(app)


def test_banner_lists_urls_keys_and_curl():
    host = funchost.build_asgi_app(make_app())
    text = banner(host.functions, "http://127.0.0.1:7071")
    assert "http://127.0.0.1:7071/api/items/special" in text
    assert "keyed (auth_level=function)" in text
    assert "curl -N http://127.0.0.1:7071/api/stream -H 'Content-Type: application/json'" in text


# --- the real command: python -m funchost -------------------------------------------------

SUBPROCESS_APP = textwrap.dedent(
    """
    import asyncio
    import os

    import azure.functions as func
    from azurefunctions.extensions.http.fastapi import JSONResponse, Request, StreamingResponse

    IMPORT_TIME_SETTING = os.environ.get("FROM_FILE", "unset")
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


    @app.route(route="env", methods=["GET"])
    def env(req: Request) -> JSONResponse:
        return JSONResponse({
            "import_time": IMPORT_TIME_SETTING,
            "overridden": os.environ.get("OVERRIDDEN"),
            "cwd": os.getcwd(),
        })


    @app.route(route="chat", methods=["POST"])
    async def chat(req: Request) -> StreamingResponse:
        user = (await req.json())["user"]

        async def gen():
            for word in ("you", "said", user):
                yield f"data: {word}\\n\\n"
                await asyncio.sleep(0.3)

        return StreamingResponse(gen(), media_type="text/event-stream")
    """
)


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "function_app.py").write_text(SUBPROCESS_APP)
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))
    (tmp_path / "local.settings.json").write_text(
        json.dumps({"Values": {"FROM_FILE": "file-value", "OVERRIDDEN": "file-value"}})
    )
    return tmp_path


def _child_env(monkeypatch, **extra):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("FROM_FILE", "OVERRIDDEN", "PORT")}
    env.update(extra)
    return env


def test_python_m_funchost_serves_streams_and_prints_banner(app_dir, monkeypatch):
    env = _child_env(monkeypatch, OVERRIDDEN="env-value")
    with start_subprocess(app_dir, env) as proc, httpx.Client(base_url=proc.url, timeout=TIMEOUT) as c:
        data = c.get("/api/env").json()
        assert data == {"import_time": "file-value", "overridden": "env-value", "cwd": str(app_dir.resolve())}
        arrivals = []
        with c.stream("POST", "/api/chat", json={"user": "hi"}) as r:
            assert r.status_code == 200
            for chunk in r.iter_text():
                arrivals.append((time.monotonic(), chunk))
        assert "".join(ch for _, ch in arrivals) == "data: you\n\ndata: said\n\ndata: hi\n\n"
        assert arrivals[-1][0] - arrivals[0][0] >= 0.3
    output = proc.output
    assert f"[GET] {proc.url}/api/env" in output
    assert f"curl -N {proc.url}/api/chat -H 'Content-Type: application/json'" in output
    assert "OVERRIDDEN" in output  # reported as kept from the environment


def test_port_env_var_is_used_without_flag(app_dir, monkeypatch):
    port = free_port()
    env = _child_env(monkeypatch, PORT=str(port))
    with start_subprocess(app_dir, env, port=port, port_flag=False) as proc:
        with httpx.Client(timeout=TIMEOUT) as c:
            assert c.get(f"http://127.0.0.1:{port}/api/env").status_code == 200
    assert f"http://127.0.0.1:{port}/api/env" in proc.output


def test_broken_app_exits_with_message(tmp_path, monkeypatch):
    (tmp_path / "function_app.py").write_text("x = 1\n")
    with pytest.raises(RuntimeError, match="exactly one module-level FunctionApp"):
        start_subprocess(tmp_path, _child_env(monkeypatch), startup_timeout=20)


# --- request-read timeouts: a caller that trickles its request in is cut off --------------------

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
#: Far above either timeout: the connection must be closed well within it, on any busy machine.
CUT_OFF_WITHIN = 10.0


@pytest.fixture(scope="module")
def strict_server():
    host = funchost.build_asgi_app(make_app())
    with serve_in_thread(host, header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT) as running:
        yield running


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def trickle(port: int, head: bytes, slow: bytes, interval: float = 0.2) -> tuple[bytes, float]:
    """Send `head` at once, then `slow` one byte per `interval` until the server closes (bounded);
    returns everything the server sent and how long until it closed."""
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=CUT_OFF_WITHIN) as sock:
        if head:
            sock.sendall(head)
        sock.settimeout(interval)
        for byte in slow:
            if time.monotonic() - started > CUT_OFF_WITHIN:
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            received += data
            if not data:
                break
        sock.settimeout(CUT_OFF_WITHIN)
        try:
            while data := sock.recv(65536):
                received += data
        except OSError:
            pass
    return received, time.monotonic() - started


def _timeout_answer(received: bytes) -> dict:
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"connection: close" in head.lower()
    return json.loads(body)["error"]


def test_headers_that_trickle_in_are_cut_off_with_408(strict_server):
    slow = b"POST /api/echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 500
    received, elapsed = trickle(_port(strict_server.url), b"", slow)
    assert _timeout_answer(received) == {
        "code": "request_timeout",
        "message": "the request headers did not arrive in time",
    }
    assert elapsed < CUT_OFF_WITHIN


def test_a_body_that_trickles_in_is_cut_off_with_408_while_others_are_served(strict_server):
    head = b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 500\r\n\r\n"
    result: list[tuple[bytes, float]] = []
    slow = threading.Thread(target=lambda: result.append(trickle(_port(strict_server.url), head, b"b" * 500)))
    slow.start()
    try:
        # Meanwhile the host keeps answering everyone else at once.
        with httpx.Client(base_url=strict_server.url, timeout=TIMEOUT) as client:
            for _ in range(3):
                assert client.post("/api/echo", content=b"x" * 100).json() == {"bytes": 100}
    finally:
        slow.join(CUT_OFF_WITHIN + 5)
    received, elapsed = result[0]
    assert _timeout_answer(received)["message"] == "the request body did not arrive in time"
    assert elapsed < CUT_OFF_WITHIN


def test_a_connection_that_never_sends_a_byte_is_closed_silently(strict_server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", _port(strict_server.url)), timeout=CUT_OFF_WITHIN) as sock:
        assert sock.recv(1024) == b""
    assert time.monotonic() - started < CUT_OFF_WITHIN


def test_a_slow_request_within_the_limits_is_served(strict_server):
    with socket.create_connection(("127.0.0.1", _port(strict_server.url)), timeout=CUT_OFF_WITHIN) as sock:
        sock.sendall(b"POST /api/echo HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        sock.sendall(b"Content-Length: 9\r\n\r\nabc")
        for part in (b"def", b"ghi"):
            time.sleep(0.3)
            sock.sendall(part)
        answer = b""
        while not answer.endswith(b"}") and (part := sock.recv(65536)):  # head and body may come apart
            answer += part
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"bytes":9}')


def test_a_later_request_on_a_kept_alive_connection_is_timed_from_its_first_byte(strict_server):
    with socket.create_connection(("127.0.0.1", _port(strict_server.url)), timeout=CUT_OFF_WITHIN) as sock:
        sock.sendall(b"GET /api/plain HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.endswith(b"}"):  # head and body may come apart
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        time.sleep(HEADER_TIMEOUT + 0.3)  # idle between requests is keep-alive's business, not ours
        sock.sendall(b"GET /api/plain HTTP/1.1\r\nHost: x\r\n")  # ... and the rest never comes
        received = b""
        while data := sock.recv(65536):
            received += data
    assert _timeout_answer(received)["code"] == "request_timeout"


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [(None, None, 10.0), (None, "2.5", 2.5), (4.0, "2.5", 4.0), (None, "0", 0.0), (None, " ", 10.0)],
)
def test_read_timeouts_come_from_flag_then_environment_then_default(flag, env, expected):
    from funchost.settings import HEADER_TIMEOUT_ENV, read_timeout

    environ = {} if env is None else {HEADER_TIMEOUT_ENV: env}
    assert read_timeout(flag, HEADER_TIMEOUT_ENV, 10.0, environ) == expected


# --- the worker's behaviour around streams (facts observed with azure_functions_worker 4.34) -------

WORKER_APP = textwrap.dedent(
    """
    import asyncio
    import contextvars
    import logging

    import azure.functions as func
    from azurefunctions.extensions.http.fastapi import JSONResponse, Request, StreamingResponse

    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    log = logging.getLogger("app")
    set_in_body = contextvars.ContextVar("set_in_body", default="unset")
    other_started = asyncio.Event()


    def sse(gen, req):
        headers = {"x-invocation": req.headers["x-ms-invocation-id"]}
        return StreamingResponse(gen, media_type="text/event-stream", headers=headers)


    @app.route(route="stream", methods=["GET"])
    async def stream(req: Request) -> StreamingResponse:
        set_in_body.set("set in the body")
        me = req.headers["x-ms-invocation-id"]

        async def gen():
            yield f"data: {set_in_body.get()}\\n\\n"
            await asyncio.sleep(0.2)
            log.info("last chunk of %s", me)
            yield "data: end\\n\\n"

        return sse(gen(), req)


    @app.route(route="broken", methods=["GET"])
    async def broken(req: Request) -> StreamingResponse:
        async def gen():
            yield "data: one\\n\\n"
            await asyncio.sleep(0.1)
            raise RuntimeError("generator failed mid-stream")

        return sse(gen(), req)


    @app.route(route="waits", methods=["GET"])
    async def waits(req: Request) -> StreamingResponse:
        me = req.headers["x-ms-invocation-id"]

        async def gen():
            yield "data: waiting\\n\\n"
            await asyncio.wait_for(other_started.wait(), 10)
            log.info("streaming %s after another invocation started", me)
            yield "data: end\\n\\n"

        return sse(gen(), req)


    @app.route(route="other", methods=["GET"])
    async def other(req: Request) -> JSONResponse:
        other_started.set()
        return JSONResponse({"id": req.headers["x-ms-invocation-id"]})


    @app.route(route="forwarded", methods=["GET"])
    async def forwarded(req: Request) -> JSONResponse:
        names = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")
        return JSONResponse({name: req.headers.getlist(name) for name in names})
    """
)


@pytest.fixture(scope="module")
def worker_app(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("worker_app")
    (app_dir / "function_app.py").write_text(WORKER_APP)
    (app_dir / "host.json").write_text(json.dumps({"version": "2.0"}))
    with start_subprocess(app_dir, extra_args=["--no-local-settings"]) as proc:
        yield proc


def _line_index(proc, text: str, timeout: float = 10.0) -> int:
    """Index of the first output line containing `text`, waiting for it (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = proc.output.splitlines()
        found = next((i for i, line in enumerate(lines) if text in line), None)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no line with {text!r} in:\n{proc.output[-3000:]}")
        time.sleep(0.05)


def test_executed_is_logged_only_after_the_whole_response_was_sent(worker_app):
    with httpx.Client(base_url=worker_app.url, timeout=TIMEOUT) as c:
        r = c.get("/api/stream")
    assert r.status_code == 200
    invocation_id = r.headers["x-invocation"]
    executed = _line_index(
        worker_app, f"Executed 'Functions.stream' (Succeeded, Id={invocation_id}, Duration="
    )
    assert _line_index(worker_app, f"last chunk of {invocation_id}") < executed
    assert f"[{invocation_id}] INFO funchost: Executed" in worker_app.output.splitlines()[executed]


def test_contextvars_set_in_the_function_body_are_not_seen_while_streaming(worker_app):
    with httpx.Client(base_url=worker_app.url, timeout=TIMEOUT) as c:
        r = c.get("/api/stream")
    assert r.text.startswith("data: unset\n\n")  # the body ran in the invocation's task, not this one


def test_a_generator_that_raises_mid_stream_cuts_the_body_and_fails_the_invocation(worker_app):
    with httpx.Client(base_url=worker_app.url, timeout=TIMEOUT) as c:
        with c.stream("GET", "/api/broken") as r:
            assert r.status_code == 200
            invocation_id = r.headers["x-invocation"]
            with pytest.raises(httpx.RemoteProtocolError):  # incomplete chunked read
                for _ in r.iter_bytes():
                    pass
    _line_index(worker_app, f"Executed 'Functions.broken' (Failed, Id={invocation_id}, Duration=")


def test_records_written_while_streaming_get_the_last_started_invocation_id(worker_app):
    """The worker's own attribution, reproduced: without an id of its own on the sending task, a line
    written while streaming goes to the host with the id of whichever invocation started last."""
    with httpx.Client(base_url=worker_app.url, timeout=TIMEOUT) as c:
        with c.stream("GET", "/api/waits") as r:
            waiting_id = r.headers["x-invocation"]
            chunks = r.iter_text()
            assert next(chunks) == "data: waiting\n\n"
            other_id = c.get("/api/other").json()["id"]
            assert "".join(chunks) == "data: end\n\n"
    index = _line_index(worker_app, f"streaming {waiting_id} after")  # waits for the line to be drained
    line = worker_app.output.splitlines()[index]
    assert f"[{other_id}] INFO app: streaming {waiting_id}" in line


def test_x_forwarded_headers_are_set_by_the_proxy_not_passed_through(worker_app):
    with httpx.Client(base_url=worker_app.url, timeout=TIMEOUT) as c:
        r = c.get(
            "/api/forwarded",
            headers={
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil",
            },
        )
    host = worker_app.url.removeprefix("http://")
    assert r.json() == {
        "x-forwarded-for": ["127.0.0.1"],
        "x-forwarded-proto": ["http"],
        "x-forwarded-host": [host],
    }
