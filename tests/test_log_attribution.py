"""Every log line of a request carries that request's own invocation id, under the worker's rules.

Microsoft's Python worker attributes a log record to the invocation id it finds on the current asyncio
task, else to a thread-local holding the invocation that started last; the HTTP stream is sent by the
server's request task, which carries no id. funchost reproduces that (funchost/worker.py) and prints
the id each line would be sent with, `[ts] [invocation id] LEVEL logger: message`, so these tests read
the attribution from the process output exactly as the host would receive it.
"""

from __future__ import annotations

import contextlib
import re
import time

import httpx

from funchost.testing import SubprocessServer

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
