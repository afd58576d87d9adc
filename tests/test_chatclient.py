"""The Python client and `python -m chatclient`, against the app served by the local host."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import httpx
import pytest

from aoai_simulator.config import SimulatorConfig
from aoai_simulator.server import SimulatorHandle, start_in_thread
from chatclient import (
    ChatHttpError,
    ChatResult,
    ChatStream,
    StreamCut,
    StreamMetrics,
    ask,
    chat_url,
    stream_chat,
)
from tests.conftest import REPO_ROOT, SLOW_ANSWER_TOKENS
from tests.support.cutproxy import cut_proxy
from tests.support.inprocess import serve, settings_for


def cli(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONIOENCODING": "utf-8"}
    env.pop("CHAT_URL", None)
    env.pop("CHAT_FUNCTION_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "chatclient", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO_ROOT,
    )


def start_cli(*args: str) -> subprocess.Popen[bytes]:
    """`python -m chatclient ...` left running, for tests that read its output while it streams."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "chatclient", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run in a thread of its own: Playwright's sync API (browser tests) keeps a loop running here."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if "error" in result:
        raise result["error"]
    return result["value"]


def reference_answer(url: str, messages: list[dict]) -> dict:
    response = httpx.post(f"{url}/api/chat", json={"messages": messages, "stream": False}, timeout=30)
    assert response.status_code == 200
    return response.json()


def test_chat_url_accepts_base_or_endpoint_url():
    assert chat_url("http://127.0.0.1:7071") == "http://127.0.0.1:7071/api/chat"
    assert chat_url("http://127.0.0.1:7071/") == "http://127.0.0.1:7071/api/chat"
    assert chat_url("https://x.azurewebsites.net/api/chat") == "https://x.azurewebsites.net/api/chat"


@pytest.mark.parametrize("fmt", ["sse", "ndjson"])
def test_async_api_yields_events_as_they_arrive(app, fmt):
    # Tokens 20 ms apart: a stall of a busy machine cannot make the whole answer arrive at once.
    messages = [{"role": "user", "content": "[sim:token-delay=20] What is a Function App?"}]

    async def collect() -> tuple[list[dict], list[float], StreamMetrics]:
        events, times, metrics = [], [], StreamMetrics()
        async for event in stream_chat(app.url, messages, format=fmt):
            metrics.observe(event)
            events.append(event)
            times.append(time.monotonic())
        return events, times, metrics

    events, times, metrics = run_async(collect())
    assert events[0]["type"] == "start" and events[-1]["type"] == "end"
    assert all(e["type"] == "delta" for e in events[1:-1]), "no heartbeat or [DONE] leaks through"
    text = "".join(e["delta_content"] for e in events[1:-1])
    assert text == reference_answer(app.url, messages)["content"]
    assert times[-2] - times[1] > 0.1, "deltas were yielded as they arrived, not all at the end"
    assert metrics.usage == events[-1]["usage"] and metrics.completion_tokens == len(events) - 2
    assert metrics.ttft_seconds is not None and metrics.tokens_per_second is not None


def test_async_api_raises_the_apps_http_error(app):
    async def go() -> None:
        async for _ in stream_chat(app.url, [{"role": "user", "content": "hi"}], max_tokens=0):
            pass

    with pytest.raises(ChatHttpError) as caught:
        run_async(go())
    assert caught.value.status == 400 and caught.value.code == "option_out_of_range"
    with pytest.raises(ChatHttpError):
        run_async(ask(app.url, [{"role": "user", "content": "hi"}], chain="nope"))


def test_cli_streams_the_answer_and_prints_metrics(app):
    result = cli("What is Azure Functions?", "--url", app.url)
    assert result.returncode == 0, result.stderr
    expected = reference_answer(app.url, [{"role": "user", "content": "What is Azure Functions?"}])
    assert result.stdout == expected["content"] + "\n"
    usage = expected["usage"]
    assert "first token" in result.stderr and "tok/s" in result.stderr
    assert f"usage {usage['prompt_tokens']} in + {usage['completion_tokens']} out" in result.stderr


def test_cli_prints_deltas_before_the_answer_is_complete(slow_app):
    """Read stdout while the 6 s answer is still being written: text must already be there."""
    with start_cli("tell me a story", "--url", slow_app.url, "--no-metrics") as proc:
        assert proc.stdout is not None
        first = proc.stdout.read(20)  # returns once 20 bytes arrived, long before the end
        assert proc.poll() is None, "the answer arrived only when the command finished"
        assert first.startswith(b"You asked:")
        proc.kill()


@pytest.mark.parametrize("fmt", ["sse", "ndjson", "json"])
def test_cli_formats_give_the_same_answer(app, fmt):
    result = cli("same answer?", "--url", app.url, "--format", fmt, "--events")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = reference_answer(app.url, [{"role": "user", "content": "same answer?"}])
    if fmt == "json":
        assert len(lines) == 1 and lines[0]["content"] == expected["content"]
    else:
        assert [e["type"] for e in (lines[0], lines[-1])] == ["start", "end"]
        assert "".join(e.get("delta_content", "") for e in lines) == expected["content"]


def test_cli_continues_a_conversation_from_stdin_and_saves_it(app, paced_simulator, tmp_path):
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    saved = tmp_path / "chat.json"
    result = cli("--messages", "-", "--url", app.url, "--save", str(saved), stdin=json.dumps(history))
    assert result.returncode == 0, result.stderr
    sent = paced_simulator.last_request()["messages"]
    assert [m["content"] for m in sent[1:]] == [m["content"] for m in history]
    conversation = json.loads(saved.read_text())
    assert conversation[:3] == history
    assert conversation[3] == {"role": "assistant", "content": result.stdout.rstrip("\n")}

    # The saved file continues the conversation with the next question.
    again = cli("And my surname?", "--messages", str(saved), "--url", app.url)
    assert again.returncode == 0, again.stderr
    assert len(paced_simulator.last_request()["messages"]) == 1 + 5


def test_cli_reports_http_errors_and_bad_input_plainly(app):
    result = cli("hi", "--url", app.url, "--max-tokens", "0")
    assert result.returncode == 1
    assert "HTTP 400 option_out_of_range" in result.stderr and "Traceback" not in result.stderr
    empty = cli("--url", app.url, stdin="")
    assert empty.returncode == 2 and "nothing to ask" in empty.stderr
    bad_file = cli("--messages", "-", "--url", app.url, stdin='[{"role": "robot", "content": "x"}]')
    assert bad_file.returncode == 2 and "roles" in bad_file.stderr


def test_cli_shows_a_mid_stream_error_and_fails(faulty_app):
    result = cli("hello", "--url", faulty_app.url)
    assert result.returncode == 1
    assert result.stdout.startswith("You asked:"), "the text before the failure is kept"
    assert "error (upstream_" in result.stderr and "finish_reason error" in result.stderr


def test_ctrl_c_stops_the_answer_keeps_it_and_prints_its_estimated_usage(slow_app, slow_simulator):
    with start_cli("a long story", "--url", slow_app.url) as proc:
        assert proc.stdout is not None
        first = proc.stdout.read(30)  # some of the answer has been printed
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130
    assert b"Traceback" not in err
    text = (first + out).decode().rstrip("\n")
    assert text.startswith("You asked:") and len(text) >= 30, "the partial answer stays on stdout"
    summary = err.decode().splitlines()[-1]
    assert "(estimated)" in summary and "finish_reason cancelled" in summary, err
    assert "stopped: the partial answer is kept" in err.decode()
    assert slow_simulator.wait_until(lambda s: s["streams_closed_early"] == 1, timeout=10)
    record = slow_simulator.last_request()
    assert record["outcome"] == "client_closed"
    assert record["chunks_sent"] < SLOW_ANSWER_TOKENS


# --- Chains and several deployments ---------------------------------------------------------------


def test_cli_tools_chain_prints_the_tool_call_and_the_answer(app):
    question = "What is 12 * (3 + 4)?"
    result = cli(question, "--url", app.url, "--chain", "tools", "--no-metrics")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["tool: calculator(expression='12 * (3 + 4)') -> 84"]
    body = {"user": question, "chain": "tools", "stream": False}
    expected = httpx.post(f"{app.url}/api/chat", json=body, timeout=30).json()
    assert result.stdout == expected["content"] + "\n", "stdout holds the answer and nothing else"


def test_cli_rag_chain_prints_progress_and_sources_on_stderr(app):
    result = cli("How do heartbeats keep streams open?", "--url", app.url, "--chain", "rag", "--no-metrics")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("progress: Searching") and lines[1].startswith("progress: Found")
    assert lines[2] == "sources:" and lines[3].startswith("  [1] ") and lines[-1].startswith("progress: Gen")
    assert result.stdout.strip() and "progress" not in result.stdout


def test_cli_several_deployments_print_each_answer_as_a_block(app):
    result = cli("compare yourselves", "--url", app.url, "--deployments", "gpt-4o-mini,gpt-4o,fault-400")
    assert result.returncode == 1, "one deployment failed"
    expected = reference_answer(app.url, [{"role": "user", "content": "compare yourselves"}])
    blocks = {}
    for block in result.stdout.split("=== ")[1:]:
        name, _, text = block.partition(" ===\n")
        blocks[name] = text.removesuffix("\n\n")
    assert blocks == {"gpt-4o-mini": expected["content"], "gpt-4o": expected["content"], "fault-400": ""}
    usage = expected["usage"]
    for name in ("gpt-4o-mini", "gpt-4o"):
        assert f"[{name}] first token" in result.stderr
        assert f"usage {usage['prompt_tokens']} in + {usage['completion_tokens']} out" in result.stderr
    assert "[fault-400] error (upstream_rejected)" in result.stderr
    assert result.stderr.endswith("3 deployments answered, 1 failed\n")
    bad = cli("hi", "--url", app.url, "--deployments", "gpt-4o-mini,nope")
    assert bad.returncode == 1 and "unknown_deployment" in bad.stderr


# --- Resume, stop and fallback: the app in-process, dropped connections cut by a real TCP proxy -------

RESUME_TOKENS = 40


@pytest.fixture(scope="module")
def resume_sim() -> Iterator[SimulatorHandle]:
    """Paced answers (20 ms a token); deployment `busy` is rate limited for longer than anyone waits."""
    config = SimulatorConfig(
        ttft_ms=10, token_delay_ms=20, answer_tokens=400, deployment_faults={"busy": "429:retry-after=30"}
    )
    handle = start_in_thread(config)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def resume_app(resume_sim: SimulatorHandle) -> Iterator[str]:
    """Default grace (30 s), so an early stop can only come from the client."""
    settings = settings_for(
        AZURE_OPENAI_ENDPOINT=resume_sim.url,
        AZURE_OPENAI_API_KEY="k",
        AZURE_OPENAI_DEPLOYMENT="gpt-4o-mini",
        CHAT_UPSTREAM_MAX_RETRIES=0,
    )
    with serve(settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def fallback_app(resume_sim: SimulatorHandle) -> Iterator[str]:
    settings = settings_for(
        AZURE_OPENAI_ENDPOINT=resume_sim.url,
        AZURE_OPENAI_API_KEY="k",
        AZURE_OPENAI_DEPLOYMENT="busy",
        CHAT_DEPLOYMENTS="gpt-4o",
        CHAT_FALLBACK_DEPLOYMENTS="gpt-4o",
        CHAT_UPSTREAM_MAX_RETRIES=0,
    )
    with serve(settings) as server:
        yield server.url


def _idle(sim: SimulatorHandle) -> dict:
    assert sim.wait_until(lambda s: s["open_streams"] == 0, timeout=15), "a model call was left running"
    return sim.stats()


def uncut_text(url: str, question: str, max_tokens: int) -> str:
    body = {"user": question, "max_tokens": max_tokens}
    events = [
        json.loads(line[6:])
        for line in httpx.post(f"{url}/api/chat", json=body, timeout=30).text.split("\n")
        if line.startswith("data: {")
    ]
    return "".join(e.get("delta_content", "") for e in events if e["type"] == "delta")


@pytest.mark.parametrize(("fmt", "reset"), [("sse", False), ("sse", True), ("ndjson", False)])
def test_a_connection_cut_mid_stream_is_resumed_with_the_exact_text(resume_app, resume_sim, fmt, reset):
    question = f"resume me ({fmt})"
    expected = uncut_text(resume_app, question, RESUME_TOKENS)
    before = _idle(resume_sim)["requests_total"]
    resumed: list[tuple[int, str]] = []

    async def go() -> tuple[list[dict], ChatResult]:
        async with ChatStream(
            proxy.url,
            [{"role": "user", "content": question}],
            format=fmt,
            max_tokens=RESUME_TOKENS,
            on_resume=lambda n, exc: resumed.append((n, type(exc).__name__)),
        ) as stream:
            return [event async for event in stream], stream.result

    with cut_proxy(resume_app, after_bytes=900, reset=reset) as proxy:
        events, result = run_async(go())
        assert proxy.cut_log == ["POST /api/chat HTTP/1.1"], "the first connection was cut"
    assert resumed == [(1, resumed[0][1])] and result.resumes == 1
    types = [e["type"] for e in events]
    assert types.count("start") == 1 and types[-1] == "end" and types.count("end") == 1
    assert result.text == expected, "nothing lost, nothing repeated"
    assert "".join(e.get("delta_content", "") for e in events) == expected
    assert len([t for t in types if t == "delta"]) == RESUME_TOKENS
    assert result.ended and result.finish_reason == "length" and not result.usage_estimated
    assert result.usage["completion_tokens"] == RESUME_TOKENS
    assert _idle(resume_sim)["requests_total"] == before + 1, "the model was asked once"


def test_the_cli_resumes_a_cut_stream_and_prints_the_whole_answer(resume_app):
    expected = uncut_text(resume_app, "resume the cli", RESUME_TOKENS)
    with cut_proxy(resume_app, after_bytes=700) as proxy:
        result = cli("resume the cli", "--url", proxy.url, "--max-tokens", str(RESUME_TOKENS))
        assert len(proxy.cut_log) == 1
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert "(connection lost: reconnecting, 1)" in result.stderr


def test_without_resume_a_cut_stream_fails_plainly(resume_app):
    with cut_proxy(resume_app, after_bytes=700) as proxy:
        result = cli("no resume", "--url", proxy.url, "--max-tokens", "20", "--no-resume")
    assert result.returncode == 1
    assert "error" in result.stderr and "Traceback" not in result.stderr


def test_resuming_gives_up_after_a_bounded_number_of_attempts(resume_app, resume_sim):
    before = _idle(resume_sim)["streams_closed_early"]

    async def go() -> None:
        async for _ in stream_chat(
            proxy.url, [{"role": "user", "content": "never back"}], max_tokens=200, max_resumes=3
        ):
            pass

    # The POST is cut mid-stream, then every resume is cut before its first byte.
    cuts = {b"POST /api/chat ": 700, b"GET /api/chat/": 0}
    with cut_proxy(resume_app, cut=cuts, cuts=None) as proxy:
        started = time.monotonic()
        with pytest.raises(StreamCut, match="after 3 attempts"):
            run_async(go())
        assert len(proxy.cut_log) == 4 and all(line.startswith("GET ") for line in proxy.cut_log[1:])
    assert time.monotonic() - started < 30
    # Giving up stops the answer: nobody will read it, so it must not run on for the grace period.
    assert resume_sim.wait_until(lambda s: s["streams_closed_early"] == before + 1, timeout=5)


@pytest.mark.parametrize("concurrent", [False, True])
def test_stop_returns_the_partial_answer_with_its_estimated_usage(resume_app, resume_sim, concurrent):
    before = _idle(resume_sim)["streams_closed_early"]

    async def go() -> tuple[ChatResult, list[dict]]:
        stream = ChatStream(resume_app, [{"role": "user", "content": "a long answer"}], max_tokens=400)
        seen: list[dict] = []
        if concurrent:  # one task reads (a UI), another presses Stop
            eight = asyncio.Event()

            async def read() -> None:
                async for event in stream:
                    seen.append(event)
                    if len([e for e in seen if e["type"] == "delta"]) == 8:
                        eight.set()

            reader = asyncio.create_task(read())
            await asyncio.wait_for(eight.wait(), 15)
            result = await stream.stop()
            await asyncio.wait_for(reader, 10)
        else:  # the reading task itself stops, after leaving its loop
            async for event in stream:
                seen.append(event)
                if len(seen) == 9:
                    break
            result = await stream.stop()
        await stream.aclose()
        return result, seen

    result, seen = run_async(go())
    assert result.ended and result.stopped and result.finish_reason == "cancelled"
    assert len([e for e in seen if e["type"] == "delta"]) >= 8
    deltas = len([e for e in seen if e["type"] == "delta"])
    assert deltas < 60, "stopped early (400 tokens were asked for)"
    assert uncut_text(resume_app, "a long answer", 60).startswith(result.text), "the partial answer is kept"
    usage = result.usage
    assert usage["estimated"] is True and result.usage_estimated
    assert usage["completion_tokens"] >= 8 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if concurrent:
        assert seen[-1]["type"] == "end", "the reading task saw the end itself"
    assert _idle(resume_sim)["streams_closed_early"] == before + 1, "the model call was cancelled"


def test_closing_a_stream_early_stops_the_answer_on_the_app(resume_app, resume_sim):
    """A resumable answer outlives its connection; a client that walks away must say so."""
    before = _idle(resume_sim)["streams_closed_early"]

    async def go() -> None:
        async with ChatStream(resume_app, [{"role": "user", "content": "walk away"}], max_tokens=400) as s:
            async for event in s:
                if event["type"] == "delta":
                    break

    run_async(go())
    # Well under the app's 30 s grace: the client's stop, not the grace, ended the model call.
    assert resume_sim.wait_until(lambda s: s["streams_closed_early"] == before + 1, timeout=5)


def test_the_fallback_is_in_the_result_and_the_cli_says_who_answered(fallback_app):
    async def go() -> ChatResult:
        async with ChatStream(fallback_app, [{"role": "user", "content": "who answers?"}], max_tokens=5) as s:
            async for _ in s:
                pass
            return s.result

    result = run_async(go())
    assert result.deployment == "gpt-4o" and result.ended and result.text
    assert result.fallback_from == [{"deployment": "busy", "code": "rate_limited", "status": 429}]
    for fmt in ("sse", "json"):
        shown = cli("who answers?", "--url", fallback_app, "--max-tokens", "5", "--format", fmt)
        assert shown.returncode == 0, shown.stderr
        assert "answered by gpt-4o after busy failed (rate_limited)" in shown.stderr
        assert "answered by" not in shown.stdout
