"""The chat page in a real browser: Debian's Chromium driven by Playwright, against the local host.

`make test` installs chromium first (`make browser`). Without it these tests skip, except under
CI=true, where a missing browser is a failure rather than a silently smaller test run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aoai_simulator.config import SimulatorConfig
from aoai_simulator.server import start_in_thread
from tests.conftest import REPO_ROOT, SLOW_ANSWER_TOKENS
from tests.support.cutproxy import cut_proxy
from tests.support.inprocess import serve, settings_for

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements-dev.txt)"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} not found (run `make browser` as root, or set CHROMIUM_PATH)"
    return None


# Module scope: Playwright's sync API keeps an event loop running on this thread while it is open,
# which would break `asyncio.run` in tests of other modules.
@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    reason = _missing_browser()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 900, "height": 800},
        )
        context.set_default_timeout(15_000)
        yield context
        context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    page.close()
    # A CSP violation or a script error shows up here, so a broken page cannot pass by accident.
    assert not [e for e in errors if "Failed to load resource" not in e], errors


def open_chat(page: Any, url: str) -> None:
    page.goto(f"{url}/api/ui")
    page.wait_for_selector("#prompt:focus")  # the module script ran and focused the input


def record_growth(page: Any) -> None:
    """Record the last answer's length at every DOM change, with the turn's state."""
    page.evaluate(
        """() => {
        window.__growth = [];
        new MutationObserver(() => {
            const turns = document.querySelectorAll('.msg.assistant');
            const turn = turns[turns.length - 1];
            if (!turn) return;
            const text = [...turn.querySelectorAll('.text')].map((t) => t.textContent).join('');
            window.__growth.push([turn.dataset.state, text.length]);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true,
                                                     attributes: true});
    }"""
    )


def last_turn(page: Any) -> Any:
    return page.locator(".msg.assistant").last


def wait_state(page: Any, *states: str) -> str:
    turn = last_turn(page)
    selector = ", ".join(f'.msg.assistant[data-state="{s}"]' for s in states)
    page.wait_for_selector(selector)
    return turn.get_attribute("data-state")


def answer_text(page: Any) -> str:
    return last_turn(page).locator(".text").first.text_content()


def reference_answer(url: str, messages: list[dict]) -> dict:
    return httpx.post(f"{url}/api/chat", json={"messages": messages, "stream": False}, timeout=30).json()


def test_answer_streams_in_visible_steps_with_live_metrics(page, app):
    open_chat(page, app.url)
    record_growth(page)
    page.keyboard.type("What is Azure Functions?")
    page.keyboard.press("Enter")  # the keyboard alone is enough
    # While streaming, the live metrics already show a time to first token.
    page.wait_for_selector('.msg.assistant[data-state="streaming"]')
    assert wait_state(page, "done", "error", "stopped") == "done"

    growth = page.evaluate("() => window.__growth")
    streaming_lengths = sorted({n for state, n in growth if state == "streaming" and n > 0})
    assert len(streaming_lengths) >= 5, f"the answer appeared in too few steps: {streaming_lengths}"
    lengths = [n for _, n in growth]
    assert lengths == sorted(lengths), "text only ever grows"
    expected = reference_answer(app.url, [{"role": "user", "content": "What is Azure Functions?"}])
    assert answer_text(page) == expected["content"]
    usage = expected["usage"]
    assert page.text_content("#m-ttft").endswith("ms")
    assert page.text_content("#m-rate").endswith("tok/s")
    assert page.text_content("#m-usage") == (
        f"{usage['prompt_tokens']} in + {usage['completion_tokens']} out = {usage['total_tokens']}"
    )


def test_stop_keeps_the_partial_answer_with_its_estimated_usage_and_the_model_call_is_closed(
    page, slow_app, slow_simulator
):
    open_chat(page, slow_app.url)
    page.fill("#prompt", "Tell me a long story")
    page.click("#send")
    page.wait_for_function(
        "() => (document.querySelector('.msg.assistant .text')?.textContent ?? '').length > 40"
    )
    with page.expect_response("**/api/chat/*/stop") as stopped:
        page.click("#stop")
    assert stopped.value.request.method == "POST" and stopped.value.status == 200
    assert wait_state(page, "stopped", "done", "error") == "stopped"
    shown = answer_text(page)
    time.sleep(0.6)  # 15 more tokens' worth of time: nothing may be added after Stop
    assert answer_text(page) == shown
    assert page.is_disabled("#stop") and page.is_enabled("#send")
    assert slow_simulator.wait_until(lambda s: s["streams_closed_early"] == 1, timeout=10)
    record = slow_simulator.last_request()
    assert record["outcome"] == "client_closed"
    assert record["chunks_sent"] < SLOW_ANSWER_TOKENS / 2
    assert "Stopped." in last_turn(page).text_content()
    # The stream's own end arrived (not an aborted fetch): the partial answer keeps what it cost.
    expected = reference_answer(slow_app.url, [{"role": "user", "content": "Tell me a long story"}])
    assert len(shown) > 40 and expected["content"].startswith(shown)
    meta = last_turn(page).locator(".meta")
    assert meta.is_visible() and re.fullmatch(
        r"\d+ in \+ \d+ out = \d+ \(estimated\) · cancelled", meta.text_content()
    )
    assert re.fullmatch(r"\d+ in \+ \d+ out = \d+ \(estimated\)", page.text_content("#m-usage"))
    # The next question carries the partial answer in its history.
    with page.expect_request("**/api/chat") as request:
        page.fill("#prompt", "go on")
        page.press("#prompt", "Enter")
    assert request.value.post_data_json["messages"][1] == {"role": "assistant", "content": shown}
    page.click("#stop")
    assert wait_state(page, "stopped", "done", "error") in ("stopped", "done")


def test_upstream_failure_mid_answer_is_shown_and_partial_text_kept(page, faulty_app):
    open_chat(page, faulty_app.url)
    page.fill("#prompt", "hello")
    page.press("#prompt", "Enter")
    assert wait_state(page, "error", "done", "stopped") == "error"
    alert = last_turn(page).locator("[role=alert]").text_content()
    assert alert.startswith("Error (upstream_") and "You can try again." in alert
    assert answer_text(page).startswith("You asked:")  # the 5 chunks before the failure


def test_non_streaming_toggle_shows_the_answer_at_once(page, app):
    open_chat(page, app.url)
    page.click("#settings summary")
    page.uncheck("#stream")
    record_growth(page)
    with page.expect_request("**/api/chat") as request:
        page.fill("#prompt", "Not streamed, please")
        page.press("#prompt", "Enter")
    assert request.value.post_data_json["stream"] is False
    assert wait_state(page, "done", "error", "stopped") == "done"
    expected = reference_answer(app.url, [{"role": "user", "content": "Not streamed, please"}])
    assert answer_text(page) == expected["content"]
    nonzero = {n for _, n in page.evaluate("() => window.__growth") if n > 0}
    assert nonzero == {len(expected["content"])}, "the whole answer appeared in one step"
    assert page.text_content("#m-usage").endswith(f"= {expected['usage']['total_tokens']}")


def test_http_error_is_shown_and_the_function_key_is_sent(page, app):
    open_chat(page, app.url)
    page.click("#settings summary")
    page.fill("#key", "my-function-key")
    page.fill("#max-tokens", "0")
    with page.expect_request("**/api/chat") as request:
        page.fill("#prompt", "hi")
        page.press("#prompt", "Enter")
    assert request.value.headers["x-functions-key"] == "my-function-key"
    assert wait_state(page, "error") == "error"
    alert = last_turn(page).locator("[role=alert]").text_content()
    assert alert.startswith("HTTP 400 (option_out_of_range): max_tokens")


def test_model_output_is_text_never_html(page, app):
    open_chat(page, app.url)
    payload = "<img src=x id=injected onerror=alert(1)> <b>bold</b>"
    page.fill("#prompt", payload)
    page.press("#prompt", "Enter")
    assert wait_state(page, "done") == "done"
    assert "<img src=x id=injected" in answer_text(page)  # the simulator quotes the question
    assert page.locator("#injected").count() == 0 and page.locator("#log b").count() == 0


def test_sse_parser_handles_any_chunk_boundary(page, app):
    """Feed a real SSE body to the page's own parser split at every possible position."""
    body = httpx.post(f"{app.url}/api/chat", json={"user": "héllo ✓ wörld"}, timeout=30).text
    body = body.replace("\n\n", "\r\n\r\n", 2) + ": ping\n\n"  # mixed line endings, a heartbeat
    open_chat(page, app.url)
    result = page.evaluate(
        """async (body) => {
        const { SSEParser } = await import('./ui/stream.js');
        const whole = new SSEParser().push(body);
        const bytes = new TextEncoder().encode(body);
        for (let cut = 1; cut < bytes.length; cut++) {
            // Split the *bytes* (a cut may fall inside a UTF-8 character), decode as a stream.
            const decoder = new TextDecoder(), parser = new SSEParser();
            const got = [...parser.push(decoder.decode(bytes.slice(0, cut), {stream: true})),
                         ...parser.push(decoder.decode(bytes.slice(cut)))];
            if (JSON.stringify(got) !== JSON.stringify(whole)) return {cut, got, whole};
        }
        return {whole};
    }""",
        body,
    )
    assert "cut" not in result, result
    assert result["whole"][-1] == "[DONE]"
    assert '"type":"start"' in result["whole"][0]


def test_multi_turn_history_phone_width_and_screenshot(page, app, paced_simulator):
    open_chat(page, app.url)
    for question in ("What is Azure Functions?", "How does the answer reach my browser?"):
        page.fill("#prompt", question)
        page.press("#prompt", "Enter")
        page.wait_for_selector(
            f'.msg.assistant[data-state="done"] >> nth={0 if question.startswith("What") else 1}'
        )
    sent = paced_simulator.last_request()["messages"]
    assert [m["role"] for m in sent[1:]] == ["user", "assistant", "user"]
    assert sent[2]["content"] == page.locator(".msg.assistant .text").first.text_content()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"))

    page.set_viewport_size({"width": 375, "height": 720})
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    assert page.locator("#send").is_visible() and page.locator("#prompt").is_visible()
    page.screenshot(path=str(ARTIFACTS / "chat-page-phone.png"))
    assert (ARTIFACTS / "chat-page.png").stat().st_size > 10_000


# --- Chains and several deployments ---------------------------------------------------------------


def choose_chain(page: Any, chain: str) -> None:
    page.wait_for_selector(f'#chain option[value="{chain}"]', state="attached")  # the catalog loaded
    page.select_option("#chain", chain)


def test_tools_chain_shows_the_tool_call_line_and_the_answer(page, app):
    open_chat(page, app.url)
    choose_chain(page, "tools")
    with page.expect_request("**/api/chat") as request:
        page.fill("#prompt", "What is 12 * (3 + 4)?")
        page.press("#prompt", "Enter")
    assert request.value.post_data_json["chain"] == "tools"
    assert "deployments" not in request.value.post_data_json  # only the default one is ticked
    assert wait_state(page, "done", "error", "stopped") == "done"
    calls = last_turn(page).locator(".tools li")
    assert calls.all_text_contents() == ["calculator(expression='12 * (3 + 4)') → 84"]
    assert calls.first.get_attribute("data-state") == "done"
    body = {"user": "What is 12 * (3 + 4)?", "chain": "tools", "stream": False}
    expected = httpx.post(f"{app.url}/api/chat", json=body, timeout=30).json()
    assert answer_text(page) == expected["content"] and expected["content"].startswith("Tool results")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page-tools.png"))


def test_rag_chain_shows_progress_then_citations_then_the_answer(page, app):
    open_chat(page, app.url)
    choose_chain(page, "rag")
    page.evaluate(
        """() => {
        window.__seen = [];
        new MutationObserver(() => {
            const turn = document.querySelector('.msg.assistant');
            if (!turn) return;
            const progress = turn.querySelector('.progress')?.textContent ?? '';
            const sources = turn.querySelectorAll('.citations li').length;
            const text = turn.querySelector('.text')?.textContent.length ?? 0;
            window.__seen.push([progress, sources, text]);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
    }"""
    )
    question = "How do heartbeats keep streams open?"
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")
    assert wait_state(page, "done", "error", "stopped") == "done"
    seen = page.evaluate("() => window.__seen")
    progress = [p for p, _, _ in seen if p]
    assert progress[0].startswith("Searching") and any(p.startswith("Found") for p in progress)
    first_progress = next(i for i, (p, _, _) in enumerate(seen) if p)
    first_source = next(i for i, (_, n, _) in enumerate(seen) if n)
    first_text = next(i for i, (_, _, n) in enumerate(seen) if n)
    assert first_progress < first_source < first_text, "progress, then citations, then the answer"
    assert not last_turn(page).locator(".progress").is_visible(), "the status line goes once it ended"

    body = {"user": question, "chain": "rag", "stream": False}
    expected = httpx.post(f"{app.url}/api/chat", json=body, timeout=30).json()
    citations = next(e for e in expected["events"] if e["type"] == "citations")["citations"]
    items = last_turn(page).locator(".citations li")
    assert items.all_text_contents() == [f"{c['title']} — {c['source']}" for c in citations]
    assert [int(items.nth(i).get_attribute("value")) for i in range(items.count())] == [
        c["number"] for c in citations
    ]
    assert answer_text(page) == expected["content"]


def test_several_deployments_answer_side_by_side_each_with_its_own_end(page, app):
    open_chat(page, app.url)
    page.wait_for_selector("#deployments:not([hidden])")
    page.click("#deployments summary")
    page.check('#deployment-list input[value="gpt-4o"]')
    page.check('#deployment-list input[value="fault-drop-after=3"]')
    assert page.text_content("#deployments-summary") == "gpt-4o-mini + gpt-4o + fault-drop-after=3"
    with page.expect_request("**/api/chat") as request:
        page.fill("#prompt", "compare yourselves")
        page.press("#prompt", "Enter")
    wanted = ["gpt-4o-mini", "gpt-4o", "fault-drop-after=3"]
    assert request.value.post_data_json["deployments"] == wanted
    assert wait_state(page, "done", "error", "stopped") == "done"
    turn = last_turn(page)
    outputs = turn.locator(".output")
    assert [outputs.nth(i).get_attribute("data-deployment") for i in range(3)] == wanted
    assert turn.locator(".output .deployment").all_text_contents() == wanted

    expected = reference_answer(app.url, [{"role": "user", "content": "compare yourselves"}])
    usage = expected["usage"]
    for i in (0, 1):  # both healthy deployments: the whole answer and their own usage
        assert outputs.nth(i).locator(".text").text_content() == expected["content"]
        assert outputs.nth(i).locator(".meta").text_content() == (
            f"{usage['prompt_tokens']} in + {usage['completion_tokens']} out = {usage['total_tokens']} · stop"
        )
        assert outputs.nth(i).locator("[role=alert]").count() == 0
    failed = outputs.nth(2)
    assert failed.locator("[role=alert]").text_content().startswith("Error (upstream_")
    assert failed.locator(".meta").text_content().endswith("error")
    assert expected["content"].startswith(failed.locator(".text").text_content())
    assert "1 of 3 deployments failed." in turn.locator(".status").text_content()

    # Columns on a wide screen, stacked on a phone.
    first, second = (outputs.nth(i).bounding_box() for i in (0, 1))
    assert abs(first["y"] - second["y"]) < 2 and second["x"] >= first["x"] + first["width"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page-deployments.png"))
    page.set_viewport_size({"width": 375, "height": 720})
    first, second = (outputs.nth(i).bounding_box() for i in (0, 1))
    assert second["y"] >= first["y"] + first["height"] and abs(first["x"] - second["x"]) < 2
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"


# --- Resume after a dropped connection, fallback ----------------------------------------------------


@pytest.mark.parametrize("wire", ["sse", "ndjson"])
def test_a_dropped_connection_resumes_and_the_answer_is_whole(page, app, paced_simulator, wire):
    """The page is loaded through a TCP proxy that cuts the answer's connection after 900 bytes."""
    question = f"Resume me over {wire}"
    expected = reference_answer(app.url, [{"role": "user", "content": question}])
    paced_simulator.reset()
    with cut_proxy(app.url, after_bytes=900) as proxy:
        open_chat(page, proxy.url)
        if wire == "ndjson":
            page.click("#settings summary")
            page.select_option("#wire", "ndjson")
        page.evaluate(
            """() => {
            window.__states = [];
            new MutationObserver(() => {
                const turn = document.querySelector('.msg.assistant');
                if (turn) window.__states.push([turn.dataset.connection ?? '', turn.dataset.state,
                                                turn.querySelector('.status')?.textContent ?? '']);
            }).observe(document.getElementById('log'), {subtree: true, childList: true, attributes: true,
                                                         characterData: true});
        }"""
        )
        resumes: list[Any] = []
        page.on("request", lambda r: resumes.append(r) if r.url.endswith("/stream") else None)
        with page.expect_request("**/api/chat") as request:
            page.fill("#prompt", question)
            page.press("#prompt", "Enter")
        assert request.value.post_data_json["resumable"] is True
        assert wait_state(page, "done", "error", "stopped") == "done"
        assert proxy.cut_log == ["POST /api/chat HTTP/1.1"], "the answer's connection was cut"
    assert answer_text(page) == expected["content"], "nothing lost, nothing shown twice"
    # Resumed once, after the last event the page had (where the proxy cut depends on the machine's pace).
    assert len(resumes) == 1 and int(resumes[0].headers["last-event-id"]) >= 0
    states = page.evaluate("() => window.__states")
    assert ["reconnecting", "streaming", "Reconnecting…"] in states, "the page said it was reconnecting"
    assert last_turn(page).get_attribute("data-connection") is None
    assert last_turn(page).locator("[role=alert]").count() == 0
    usage = expected["usage"]
    assert page.text_content("#m-usage") == (
        f"{usage['prompt_tokens']} in + {usage['completion_tokens']} out = {usage['total_tokens']}"
    )
    assert paced_simulator.stats()["requests_total"] == 1, "the model was asked once"


def test_a_fallback_shows_which_deployment_answered_and_why(page):
    sim = start_in_thread(
        SimulatorConfig(ttft_ms=10, token_delay_ms=5, deployment_faults={"gpt-4o-mini": "429:retry-after=30"})
    )
    settings = settings_for(
        AZURE_OPENAI_ENDPOINT=sim.url,
        AZURE_OPENAI_API_KEY="k",
        AZURE_OPENAI_DEPLOYMENT="gpt-4o-mini",
        CHAT_DEPLOYMENTS="gpt-4o",
        CHAT_FALLBACK_DEPLOYMENTS="gpt-4o",
        CHAT_UPSTREAM_MAX_RETRIES=0,
    )
    try:
        with serve(settings) as server:
            open_chat(page, server.url)
            page.fill("#prompt", "Who answers?")
            page.press("#prompt", "Enter")
            assert wait_state(page, "done", "error", "stopped") == "done"
            note = last_turn(page).locator(".fallback")
            assert note.text_content() == "answered by gpt-4o after gpt-4o-mini was rate limited"
            assert note.get_attribute("role") == "note" and note.is_visible()
            assert answer_text(page).startswith("You asked:")
    finally:
        sim.stop()
