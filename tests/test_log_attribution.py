"""Every log line of a request carries that request's own invocation id, under the worker's rules.

Microsoft's Python worker attributes a log record to the invocation id it finds on the current asyncio
task, else to a thread-local holding the invocation that started last; the HTTP stream is sent by the
server's request task, which carries no id. funchost reproduces that (funchost/worker.py) and prints
the id each line would be sent with, `[ts] [invocation id] LEVEL logger: message`, so these tests read
the attribution from the process output exactly as the host would receive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from chatstream import logcontext
from funchost import worker
from funchost.testing import SubprocessServer, serve_in_thread
from tests.conftest import FAULT_APP_ENV, start_app
from tests.test_telemetry import Ingestion, loopback_exporter_env

TIMEOUT = httpx.Timeout(30.0)
LINE = re.compile(
    r"^\[[^\]]*\] \[(?P<attributed>[^\]]+)\] (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$"
)
#: Long enough that the first stream is still going when the last one starts (60 x 25 ms = 1.5 s).
PACED = "tokens=60;token-delay=25"


def log_lines(server: SubprocessServer) -> list[re.Match[str]]:
    return [m for m in map(LINE.match, server.output.splitlines()) if m]


def wait_for(server: SubprocessServer, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.output:
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line with {text!r} in:\n{server.output[-4000:]}")
        time.sleep(0.05)


def first_index(lines: list[re.Match[str]], text: str) -> int:
    return next(i for i, m in enumerate(lines) if text in m["message"])


def test_concurrent_streams_each_log_with_their_own_invocation_id(fault_app):
    prompts = {
        "A": f"first [sim:{PACED}]",
        # A failure in the middle of the answer: its warning is written while streaming.
        "B": f"second [sim:error-after=20;{PACED}]",
        "C": f"third [sim:{PACED}]",
    }
    ids: dict[str, str] = {}
    bodies: dict[str, str] = {}
    with httpx.Client(base_url=fault_app.url, timeout=TIMEOUT) as client, contextlib.ExitStack() as stack:
        streams = {}
        for name, prompt in prompts.items():  # started in order: C is the last invocation started
            response = stack.enter_context(client.stream("POST", "/api/chat", json={"user": prompt}))
            assert response.status_code == 200
            ids[name] = response.headers["x-request-id"]
            lines = response.iter_lines()
            assert '"type":"start"' in next(lines)  # the stream is under way before the next starts
            streams[name] = lines
        for name, lines in streams.items():
            bodies[name] = "\n".join(lines)
    assert '"type":"error"' in bodies["B"] and '"type":"error"' not in bodies["A"] + bodies["C"]
    for request_id in ids.values():
        wait_for(fault_app, f"request_id={request_id} chain=")  # the outcome line, written last

    lines = log_lines(fault_app)
    # The streams overlapped: A's outcome was written after C's invocation had started, when the
    # worker's thread-local names C.
    assert first_index(lines, f"Executing 'Functions.chat' (Reason='HTTP request', Id={ids['C']})") < (
        first_index(lines, f"chat completed request_id={ids['A']}")
    )
    for name, request_id in ids.items():
        mine = [m for m in lines if m["logger"].startswith("chatstream") and request_id in m["message"]]
        assert any(" chain=" in m["message"] for m in mine), f"no outcome line for {name}"
        if name == "B":
            assert any(m["level"] == "WARNING" for m in mine), "the mid-stream failure was not logged"
        wrong = [m.group(0) for m in mine if m["attributed"] != request_id]
        assert not wrong, f"{name}'s lines attributed to another invocation:\n" + "\n".join(wrong)


# --- the binding itself, in-process -----------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(logcontext.RequestFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _request(name: str, log: logging.Logger) -> None:
    with logcontext.bind(name):
        for step in range(3):
            # A task created inside the binding inherits it; the other request runs in between.
            await asyncio.create_task(asyncio.sleep(0))
            log.info("%s step %d (worker sees %s)", name, step, worker.current_invocation_id())


def test_each_task_logs_with_its_own_binding_and_the_worker_task_id_follows_it():
    log = logging.getLogger("chatstream.test_binding")
    handler = Records()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    worker.invocation_id_local.invocation_id = "last-started"

    async def main() -> None:
        worker.install(asyncio.get_running_loop())
        await asyncio.gather(
            asyncio.create_task(_request("one", log)), asyncio.create_task(_request("two", log))
        )
        log.info("after both")

    try:
        asyncio.run(main())
    finally:
        log.removeHandler(handler)
        worker.invocation_id_local.invocation_id = None
    mine = [(r.getMessage().split()[0], getattr(r, "request_id", None)) for r in handler.records]
    assert mine == [(name, name) for name in ("one", "two") * 3] + [("after", None)]
    assert all(f"worker sees {r.getMessage().split()[0]}" in r.getMessage() for r in handler.records[:-1])


def test_binding_is_harmless_on_plain_asyncio_tasks():
    async def main() -> str | None:
        with logcontext.bind("plain"):  # a plain Task takes no attributes: nothing is set, nothing raised
            return logcontext.current_request_id()

    assert asyncio.run(main()) == "plain"


# --- Application Insights: the request's records carry its id and its operation ---------------------


def test_exported_records_carry_the_request_id_and_the_runs_operation(fault_simulator):
    ingestion = Ingestion()
    server = serve_in_thread(Starlette(routes=[Route("/{path:path}", ingestion.track, methods=["POST"])]))
    app = start_app(
        AZURE_OPENAI_ENDPOINT=fault_simulator.url,
        **FAULT_APP_ENV,
        **loopback_exporter_env(server.url),
    )
    try:
        # A 503 first: the retry's warning is written in the function body, the outcome while streaming.
        body = {"user": "trace me [sim:503;times=1;tokens=20]"}
        response = httpx.post(f"{app.url}/api/chat", json=body, timeout=30)
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            ingestion.spans("chat chat") and len(ingestion.logs(request_id)) >= 3
        ):
            time.sleep(0.2)
        spans = [e for e in ingestion.envelopes if e["data"]["baseData"].get("name") == "chat chat"]
        assert len(spans) == 1, json.dumps(ingestion.envelopes)[:3000]
        operation = spans[0]["tags"]["ai.operation.id"]
        logs = ingestion.logs(request_id)
        messages = [e["data"]["baseData"]["message"] for e in logs]
        assert any("retry" in m for m in messages) and any("chat completed" in m for m in messages), messages
        for envelope in logs:
            data = envelope["data"]["baseData"]
            assert data["properties"].get("request_id") == request_id, data
            assert envelope["tags"].get("ai.operation.id") == operation, (data["message"], envelope["tags"])
    finally:
        app.stop()
        server.stop()
