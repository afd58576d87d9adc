"""Fallback across deployments: a failure before the first token moves to the next deployment, never
after text was sent. Real sockets end to end: the caller -> the app (in-process, real uvicorn) -> the
hostile upstream, whose scripts behave per deployment (the name is in the request path)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from funchost.testing import ThreadServer
from tests.support.hostile import Conn, HostileUpstream, Script, chunk, usage
from tests.support.inprocess import serve, settings_for
from tests.test_hostile_upstream import _post as post
from tests.test_resilience import assert_no_leak, deltas, read_sse

A, B, C = "alpha", "beta", "gamma"


def _settings(hostile: HostileUpstream, **extra: object) -> dict[str, object]:
    return {
        "AZURE_OPENAI_ENDPOINT": hostile.url,
        "AZURE_OPENAI_API_KEY": "test-key-not-secret",
        "AZURE_OPENAI_DEPLOYMENT": A,
        "CHAT_DEPLOYMENTS": f"{B},{C}",
        "CHAT_FALLBACK_DEPLOYMENTS": B,
        "CHAT_UPSTREAM_READ_TIMEOUT_SECONDS": 2,
        "CHAT_FIRST_EVENT_WAIT_SECONDS": 3,
        "CHAT_UPSTREAM_MAX_RETRIES": 0,
        **extra,
    }


@pytest.fixture(scope="module")
def _app(_hostile_server: HostileUpstream) -> Iterator[ThreadServer]:
    with serve(settings_for(**_settings(_hostile_server))) as server:
        yield server


@pytest.fixture
def app(_app: ThreadServer, hostile: HostileUpstream) -> ThreadServer:
    return _app


# --- what the upstream does, per deployment --------------------------------------------------------


def _deployment_in(path: str) -> str:
    return path.split("/openai/deployments/", 1)[1].split("/", 1)[0]


def _deployment(conn: Conn) -> str:
    return _deployment_in(conn.request.path)


def by_deployment(hostile: HostileUpstream, name: str, **scripts: Script) -> str:
    """Registers a script that behaves as `scripts[deployment]`; returns the prompt that picks it."""

    async def script(conn: Conn) -> bool | None:
        return await scripts[_deployment(conn)](conn)

    hostile.script(name, script)
    return f"[hostile:{name}]"


async def answers(conn: Conn) -> bool:
    await conn.head()
    await conn.event(chunk("", role="assistant"))
    for word in ("Hello", " from ", _deployment(conn)):
        await conn.event(chunk(word))
    await conn.event(chunk(finish_reason="stop"))
    await conn.event(chunk(usage=usage(5, 3)))
    await conn.send(b"data: [DONE]\n\n")
    return False


async def rate_limited(conn: Conn) -> bool:
    await conn.json_response(
        429,
        {"error": {"code": "429", "message": "Rate limit at https://secret.example"}},
        {"Retry-After": "120"},
    )
    return False


async def overloaded(conn: Conn) -> bool:
    await conn.json_response(503, {"error": {"code": "ServiceUnavailable", "message": "busy"}})
    return False


async def stalls(conn: Conn) -> bool:
    await conn.hold(15)  # past the app's 2 s read timeout: it gives up and closes the connection
    return False


async def filtered(conn: Conn) -> bool:
    body = {"error": {"code": "content_filter", "message": "blocked", "param": "prompt", "status": 400}}
    await conn.json_response(400, body)
    return False


async def not_found(conn: Conn) -> bool:
    await conn.json_response(404, {"error": {"code": "DeploymentNotFound", "message": "no such deployment"}})
    return False


async def text_then_reset(conn: Conn) -> bool:
    await conn.head()
    await conn.event(chunk("", role="assistant"))
    await conn.event(chunk("Partial"))
    await conn.hold(0.2)
    conn.reset()
    return False


def asked(hostile: HostileUpstream) -> list[str]:
    """The deployments the upstream was asked, in order."""
    return [_deployment_in(r.path) for r in hostile.seen]


def assert_answered_by(events: list[dict[str, Any]], deployment: str) -> None:
    assert events[0]["type"] == "start" and events[-1]["type"] == "end", events
    assert events[0]["deployment"] == deployment
    assert all(e["deployment"] == deployment for e in events if e["type"] in ("delta", "end")), events
    assert events[-1]["finish_reason"] == "stop"
    assert deltas(events) == f"Hello from {deployment}"
    assert not [e for e in events if e["type"] == "error"]


# --- falls back before the first token -------------------------------------------------------------


def test_rate_limited_with_a_long_retry_after_falls_back(app, hostile, caplog):
    prompt = by_deployment(hostile, "fb-429", alpha=rate_limited, beta=answers)

    # The answering run's outcome line is written as its response ends, which may be just after the
    # client has read the last byte: wait for it (bounded), with the INFO level still in force (a line
    # written after `at_level` is left is dropped).
    def logged(prefix: str, deployment: str) -> bool:
        give_up = time.monotonic() + 5
        while time.monotonic() < give_up:
            lines = [r.getMessage() for r in caplog.records]
            if any(m.startswith(prefix) and f"deployment={deployment} " in m for m in lines):
                return True
            time.sleep(0.02)
        return False

    with caplog.at_level(logging.INFO, logger="chatstream"):
        response, events = post(app.url, prompt)
        assert response.status_code == 200
        assert_answered_by(events, B)
        assert events[0]["fallback_from"] == [{"deployment": A, "code": "rate_limited", "status": 429}]
        assert asked(hostile) == [A, B]
        assert_no_leak(json.dumps(events))
        # Each deployment's own outcome line.
        assert logged("chat error:rate_limited ", A)
        assert logged("chat completed ", B)


def test_overloaded_falls_back(app, hostile):
    prompt = by_deployment(hostile, "fb-503", alpha=overloaded, beta=answers)
    response, events = post(app.url, prompt)
    assert response.status_code == 200
    assert_answered_by(events, B)
    assert events[0]["fallback_from"] == [{"deployment": A, "code": "upstream_overloaded", "status": 503}]


def test_a_stall_past_the_read_timeout_falls_back(app, hostile):
    prompt = by_deployment(hostile, "fb-stall", alpha=stalls, beta=answers)
    response, events = post(app.url, prompt)
    assert response.status_code == 200
    assert_answered_by(events, B)
    assert events[0]["fallback_from"] == [{"deployment": A, "code": "upstream_timeout", "status": 504}]
    assert hostile.wait_closed(), "the stalled request to alpha was closed"


def test_the_next_fallback_answers_when_the_first_fails_too(app, hostile):
    prompt = by_deployment(hostile, "fb-chain", alpha=rate_limited, beta=overloaded, gamma=answers)
    response, events = post(app.url, prompt, fallback_deployments=[B, C])
    assert response.status_code == 200
    assert_answered_by(events, C)
    assert [f["deployment"] for f in events[0]["fallback_from"]] == [A, B]
    assert asked(hostile) == [A, B, C]


def test_without_a_failure_no_fallback_is_asked(app, hostile):
    prompt = by_deployment(hostile, "fb-fine", alpha=answers, beta=answers)
    response, events = post(app.url, prompt)
    assert response.status_code == 200
    assert_answered_by(events, A)
    assert "fallback_from" not in events[0]
    assert asked(hostile) == [A]


def test_the_request_field_overrides_the_setting(app, hostile):
    prompt = by_deployment(hostile, "fb-field", alpha=rate_limited, beta=answers, gamma=answers)
    response, events = post(app.url, prompt, fallback_deployments=[C])
    assert response.status_code == 200
    assert_answered_by(events, C)
    assert asked(hostile) == [A, C]


def test_an_empty_list_turns_the_setting_off(app, hostile):
    prompt = by_deployment(hostile, "fb-off", alpha=rate_limited, beta=answers)
    response, _ = post(app.url, prompt, fallback_deployments=[])
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert response.headers["retry-after"] == "120"
    assert asked(hostile) == [A]


def test_a_named_deployment_falls_back_to_the_setting(app, hostile):
    """The setting applies to a request that names its one deployment, and skips that deployment."""
    prompt = by_deployment(hostile, "fb-named", gamma=rate_limited, beta=answers)
    response, events = post(app.url, prompt, deployments=[C])
    assert response.status_code == 200
    assert_answered_by(events, B)
    assert asked(hostile) == [C, B]


def test_not_streamed_falls_back(app, hostile):
    prompt = by_deployment(hostile, "fb-json", alpha=rate_limited, beta=answers)
    response, _ = post(app.url, prompt, stream=False)
    assert response.status_code == 200
    answer = response.json()
    assert answer["deployment"] == B
    assert answer["content"] == f"Hello from {B}"
    assert answer["fallback_from"] == [{"deployment": A, "code": "rate_limited", "status": 429}]


# --- never falls back ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alpha", "beta", "status", "code", "deployments_asked"),
    [
        (filtered, answers, 400, "content_filter", [A]),
        # A deployment that does not exist is a configuration error: answered as such, not papered over.
        (not_found, answers, 502, "deployment_not_found", [A]),
        # Every deployment failed: the last failure is the status.
        (rate_limited, overloaded, 503, "upstream_overloaded", [A, B]),
    ],
    ids=["content-filter", "missing-deployment", "every-deployment-fails"],
)
def test_failures_that_do_not_fall_back_or_have_nothing_left(
    app, hostile, alpha, beta, status, code, deployments_asked
):
    prompt = by_deployment(hostile, f"fb-{code}", alpha=alpha, beta=beta)
    response, _ = post(app.url, prompt)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert asked(hostile) == deployments_asked


def test_no_fallback_after_text_was_sent(app, hostile):
    prompt = by_deployment(hostile, "fb-late", alpha=text_then_reset, beta=answers)
    response, events = post(app.url, prompt)
    assert response.status_code == 200
    assert deltas(events) == "Partial"
    assert [e["type"] for e in events][-2:] == ["error", "end"]
    assert all(e["deployment"] == A for e in events if e["type"] != "start")
    assert events[0]["deployment"] == A and "fallback_from" not in events[0]
    assert events[-2]["code"] == "upstream_interrupted"
    assert asked(hostile) == [A]


def test_no_fallback_when_too_little_of_the_deadline_is_left(hostile):
    """Alpha times out at 2 s; 2 s of the 4 s deadline are left, less than the 3 s first-event wait."""
    prompt = by_deployment(hostile, "fb-late-deadline", alpha=stalls, beta=answers)
    with serve(settings_for(**_settings(hostile, CHAT_DEADLINE_SECONDS=4))) as app:
        response, _ = post(app.url, prompt)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert asked(hostile) == [A]


# --- after the first-event wait: the headers went out, the fallback still answers ------------------


def test_a_fallback_after_the_first_event_wait_answers_in_band(hostile):
    prompt = by_deployment(hostile, "fb-inband", alpha=stalls, beta=answers)
    settings = _settings(hostile, CHAT_FIRST_EVENT_WAIT_SECONDS=0.5, CHAT_UPSTREAM_READ_TIMEOUT_SECONDS=4)
    with serve(settings_for(**settings)) as app:
        with httpx.stream("POST", f"{app.url}/api/chat", json={"user": prompt}, timeout=60) as response:
            asked_at_headers = asked(hostile)
            events, _pings, done = read_sse(response)
    assert done and response.status_code == 200
    assert asked_at_headers == [A], "the headers went out while alpha was still silent"
    assert_answered_by(events, B)
    assert events[0]["fallback_from"] == [{"deployment": A, "code": "upstream_timeout", "status": 504}]


def test_every_deployment_failing_after_the_first_event_wait_is_an_error_event(hostile):
    prompt = by_deployment(hostile, "fb-inband-all", alpha=stalls, beta=stalls)
    with serve(settings_for(**_settings(hostile, CHAT_FIRST_EVENT_WAIT_SECONDS=0.5))) as app:
        response, events = post(app.url, prompt)
    assert response.status_code == 200
    assert [e["type"] for e in events] == ["start", "error", "end"]
    assert events[0]["deployment"] == B
    assert events[0]["fallback_from"] == [{"deployment": A, "code": "upstream_timeout", "status": 504}]
    assert events[1]["code"] == "upstream_timeout" and events[1]["deployment"] == B
    assert events[2]["finish_reason"] == "error"
    assert asked(hostile) == [A, B]


# --- requests and settings that cannot fall back ---------------------------------------------------


def test_an_unknown_fallback_deployment_is_a_400(app, hostile):
    response, _ = post(app.url, "[hostile:fb-none]", fallback_deployments=["gpt-unknown"])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_deployment"
    assert error["param"] == "fallback_deployments"
    assert hostile.seen == []


def test_fallbacks_with_several_deployments_are_a_400(app, hostile):
    response, _ = post(app.url, "[hostile:fb-none]", deployments=[A, B], fallback_deployments=[C])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "fallback_with_deployments"
    assert error["param"] == "fallback_deployments"
    assert hostile.seen == []


@pytest.mark.parametrize(
    "value, problem",
    [([B, B], "once"), ([""], "empty"), ([A, B, C, "d", "e"], "limit")],
)
def test_malformed_fallback_lists_are_a_400(app, hostile, value, problem):
    response, _ = post(app.url, "[hostile:fb-none]", fallback_deployments=value)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"].startswith("fallback_deployments") and problem in error["message"]
    assert hostile.seen == []


def test_a_fallback_setting_outside_the_allow_list_is_a_503(hostile):
    with serve(settings_for(**_settings(hostile, CHAT_FALLBACK_DEPLOYMENTS=f"{B},gpt-unknown"))) as app:
        response, _ = post(app.url, "[hostile:fb-none]")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "not_configured"
    assert "CHAT_FALLBACK_DEPLOYMENTS" in error["message"] and "gpt-unknown" not in error["message"]
    assert hostile.seen == []


# --- the other protocols ---------------------------------------------------------------------------


def test_ai_sdk_requests_take_fallback_deployments(app, hostile):
    prompt = by_deployment(hostile, "fb-ai-sdk", alpha=rate_limited, gamma=answers)
    body = {
        "id": "chat-1",
        "trigger": "submit-message",
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": prompt}]}],
        "fallback_deployments": [C],
    }
    response = httpx.post(f"{app.url}/api/chat", json=body, timeout=60)
    assert response.status_code == 200
    chunks = [
        json.loads(line[len("data: ") :])
        for line in response.text.split("\n\n")
        if line.startswith("data: {")
    ]
    start = next(c for c in chunks if c["type"] == "start")
    assert start["messageMetadata"]["deployment"] == C
    assert start["messageMetadata"]["fallback_from"] == [
        {"deployment": A, "code": "rate_limited", "status": 429}
    ]
    text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    assert text == f"Hello from {C}"
    assert asked(hostile) == [A, C]


def test_the_openai_route_falls_back_by_the_setting(app, hostile):
    prompt = by_deployment(hostile, "fb-openai", alpha=rate_limited, beta=answers)
    body = {"model": A, "messages": [{"role": "user", "content": prompt}]}
    response = httpx.post(f"{app.url}/api/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    answer = response.json()
    assert answer["model"] == B
    assert answer["choices"][0]["message"]["content"] == f"Hello from {B}"
    assert asked(hostile) == [A, B]


# --- retries, options and a caller who leaves --------------------------------------------------------


def test_retries_come_first_then_the_fallback(hostile):
    async def overloaded_briefly(conn: Conn) -> bool:
        await conn.json_response(503, {"error": {"code": "ServiceUnavailable"}}, {"retry-after-ms": "10"})
        return False

    prompt = by_deployment(hostile, "fb-retry", alpha=overloaded_briefly, beta=answers)
    with serve(settings_for(**_settings(hostile, CHAT_UPSTREAM_MAX_RETRIES=1))) as app:
        response, events = post(app.url, prompt)
    assert response.status_code == 200
    assert_answered_by(events, B)
    assert asked(hostile) == [A, A, B]


def test_a_setting_fallback_that_refuses_the_request_options_is_skipped(hostile):
    """A reasoning deployment in CHAT_FALLBACK_DEPLOYMENTS would turn every `temperature` into a 400."""
    settings = _settings(hostile, CHAT_REASONING_DEPLOYMENTS=B, CHAT_FALLBACK_DEPLOYMENTS=f"{B},{C}")
    prompt = by_deployment(hostile, "fb-options", alpha=rate_limited, beta=answers, gamma=answers)
    with serve(settings_for(**settings)) as app:
        response, events = post(app.url, prompt, temperature=0.5)
        assert response.status_code == 200
        assert_answered_by(events, C)
        assert asked(hostile) == [A, C]
        hostile.reset()
        # Named by the caller, the same fallback is the caller's mistake: a 400 before any model call.
        response, _ = post(app.url, prompt, temperature=0.5, fallback_deployments=[B])
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "unsupported_parameter"
        assert hostile.seen == []


def test_a_caller_who_leaves_during_the_first_deployment_gets_no_fallback(app, hostile):
    prompt = by_deployment(hostile, "fb-leave", alpha=stalls, beta=answers)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{app.url}/api/chat", json={"user": prompt}, timeout=httpx.Timeout(60, read=0.5))
    assert hostile.wait_closed(10), "alpha's request was closed when the caller left"
    # Past alpha's 2 s read timeout: had the run gone on, beta would have been asked by then.
    end = time.monotonic() + 3.0
    while time.monotonic() < end and asked(hostile) == [A]:
        time.sleep(0.1)
    assert asked(hostile) == [A]
