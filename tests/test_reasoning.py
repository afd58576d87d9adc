"""Reasoning deployments (gpt-5 family, o-series) next to ordinary ones, end to end through the simulator.

Which deployments are reasoning models is configuration (CHAT_REASONING_DEPLOYMENTS). The simulator's
reasoning deployment behaves as Azure's does: it rejects `max_tokens`, `temperature` and the other
sampling parameters with Azure's 400 bodies, takes `max_completion_tokens` and `reasoning_effort`,
thinks before its first token and reports `completion_tokens_details.reasoning_tokens`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aoai_simulator import SimulatorConfig, SimulatorHandle, start_in_thread
from funchost.testing import ThreadServer
from tests.support.inprocess import serve, settings_for

REASONING = "gpt-5-mini"
PLAIN = "gpt-4o-mini"
#: The simulator's hidden tokens per effort (SimulatorConfig.reasoning_effort_tokens defaults).
EFFORT_TOKENS = {"minimal": 0, "low": 16, "medium": 48, "high": 128}


@pytest.fixture(scope="module")
def _sim() -> Iterator[SimulatorHandle]:
    handle = start_in_thread(
        SimulatorConfig(
            ttft_ms=0,
            token_delay_ms=0,
            hold_seconds=10,
            reasoning_deployments=frozenset({REASONING}),
            reasoning_token_ms=0.5,
        )
    )
    yield handle
    handle.stop()


@pytest.fixture
def sim(_sim: SimulatorHandle) -> SimulatorHandle:
    _sim.reset()
    return _sim


def _app_settings(sim: SimulatorHandle, **extra: object) -> dict[str, object]:
    return {
        "AZURE_OPENAI_ENDPOINT": sim.url,
        "AZURE_OPENAI_API_KEY": "test-key",
        "AZURE_OPENAI_DEPLOYMENT": REASONING,
        "CHAT_DEPLOYMENTS": PLAIN,
        "CHAT_REASONING_DEPLOYMENTS": REASONING,
        "CHAT_REASONING_EFFORTS": "minimal,low,medium,high",
        "CHAT_UPSTREAM_MAX_RETRIES": 0,
        **extra,
    }


@pytest.fixture(scope="module")
def _app(_sim: SimulatorHandle) -> Iterator[ThreadServer]:
    with serve(settings_for(**_app_settings(_sim))) as server:
        yield server


@pytest.fixture
def app(_app: ThreadServer, sim: SimulatorHandle) -> ThreadServer:
    return _app


def stream(url: str, **body: Any) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
    """Status, SSE events (parsed from the raw bytes) and, for a non-200, the JSON error body."""
    with httpx.stream("POST", f"{url}/api/chat", json={"user": "Explain SSE.", **body}, timeout=30) as r:
        raw = r.read().decode()
        if r.status_code != 200:
            return r.status_code, [], json.loads(raw)
    assert raw.endswith("data: [DONE]\n\n"), raw[-200:]
    events = [json.loads(block[6:]) for block in raw.split("\n\n")[:-2] if block.startswith("data: ")]
    return 200, events, None


def text_of(events: list[dict[str, Any]], deployment: str | None = None) -> str:
    return "".join(
        e["delta_content"]
        for e in events
        if e["type"] == "delta" and (deployment is None or e["deployment"] == deployment)
    )


def end_of(events: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    (end,) = [e for e in events if e["type"] == "end" and e["deployment"] == deployment]
    return end


def sent(sim: SimulatorHandle) -> dict[str, Any]:
    """The request fields the app sent upstream (all but messages and tools)."""
    (record,) = sim.requests()
    return record["params"]


# --- A reasoning deployment ----------------------------------------------------------------------


def test_reasoning_deployment_streams_and_reports_reasoning_tokens(app, sim):
    status, events, _ = stream(app.url, max_tokens=300, reasoning_effort="low")
    assert status == 200
    assert [events[0]["type"], events[-1]["type"]] == ["start", "end"]
    answer = text_of(events)
    assert answer
    end = end_of(events, REASONING)
    assert end["finish_reason"] == "stop"
    assert end["model"] == "gpt-5-mini-2025-08-07"
    usage = end["usage"]
    assert usage["reasoning_tokens"] == EFFORT_TOKENS["low"]
    # Hidden tokens are billed as completion tokens, on top of the visible ones.
    assert usage["completion_tokens"] == sim.requests()[0]["chunks_sent"] + EFFORT_TOKENS["low"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    params = sent(sim)
    assert params["max_completion_tokens"] == 300
    assert "max_tokens" not in params
    assert params["reasoning_effort"] == "low"
    assert "temperature" not in params and "top_p" not in params


def test_reasoning_effort_is_optional_and_the_model_default_applies(app, sim):
    status, events, _ = stream(app.url)
    assert status == 200
    assert end_of(events, REASONING)["usage"]["reasoning_tokens"] == EFFORT_TOKENS["medium"]
    params = sent(sim)
    assert "reasoning_effort" not in params and "max_tokens" not in params


def test_a_budget_spent_on_reasoning_ends_with_length_and_no_text(app, sim):
    """`max_tokens` is `max_completion_tokens` upstream, which hidden reasoning tokens use up first."""
    status, events, _ = stream(app.url, max_tokens=10, reasoning_effort="medium")
    assert status == 200
    assert text_of(events) == ""
    end = end_of(events, REASONING)
    assert end["finish_reason"] == "length"
    assert end["usage"]["reasoning_tokens"] == 10
    assert end["usage"]["completion_tokens"] == 10


def test_non_streaming_answer_carries_reasoning_tokens(app, sim):
    response = httpx.post(
        f"{app.url}/api/chat",
        json={"user": "hi", "stream": False, "reasoning_effort": "high", "max_tokens": 1000},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["content"]
    assert answer["usage"]["reasoning_tokens"] == EFFORT_TOKENS["high"]
    assert sent(sim)["max_completion_tokens"] == 1000


# --- The documented rule: options a deployment does not take are a 400, before any model call ------


def test_temperature_for_a_reasoning_deployment_is_a_400_naming_the_field(app, sim):
    status, _, body = stream(app.url, temperature=0.2)
    assert status == 400
    assert body is not None
    error = body["error"]
    assert error["code"] == "unsupported_parameter"
    assert error["param"] == "temperature"
    assert repr(REASONING) in error["message"]
    assert sim.requests() == [], "refused before any model call"


def test_temperature_with_a_reasoning_deployment_among_several_is_a_400(app, sim):
    status, _, body = stream(app.url, temperature=0.2, deployments=[PLAIN, REASONING])
    assert status == 400
    assert body is not None and body["error"]["param"] == "temperature"
    assert repr(REASONING) in body["error"]["message"] and repr(PLAIN) not in body["error"]["message"]
    assert sim.requests() == []


@pytest.mark.parametrize("effort", ["xhigh", "none", "LOW", ""])
def test_reasoning_effort_outside_the_allow_list_is_a_400(app, sim, effort):
    status, _, body = stream(app.url, reasoning_effort=effort)
    assert status == 400
    assert body is not None
    assert body["error"]["code"] == "unsupported_value"
    assert body["error"]["param"] == "reasoning_effort"
    assert body["error"]["message"].endswith("must be one of: high, low, medium, minimal")
    assert sim.requests() == []


def test_reasoning_effort_for_a_non_reasoning_deployment_is_a_400(app, sim):
    status, _, body = stream(app.url, reasoning_effort="low", deployments=[PLAIN])
    assert status == 400
    assert body is not None
    assert body["error"] == {
        "code": "unsupported_parameter",
        "message": body["error"]["message"],
        "param": "reasoning_effort",
    }
    assert repr(PLAIN) in body["error"]["message"]
    assert sim.requests() == []


# --- A non-reasoning deployment is unchanged -----------------------------------------------------


def test_non_reasoning_deployment_still_gets_max_tokens_and_temperature(app, sim):
    status, events, _ = stream(app.url, deployments=[PLAIN], max_tokens=5, temperature=0.3)
    assert status == 200
    end = end_of(events, PLAIN)
    assert end["finish_reason"] == "length"
    assert end["usage"]["completion_tokens"] == 5
    assert end["usage"]["reasoning_tokens"] == 0  # reported by the upstream, as Azure does for gpt-4o
    params = sent(sim)
    assert params["max_tokens"] == 5 and params["temperature"] == 0.3
    assert "max_completion_tokens" not in params and "reasoning_effort" not in params


def test_both_kinds_in_one_stream_each_get_what_they_accept(app, sim):
    status, events, _ = stream(app.url, deployments=[REASONING, PLAIN], max_tokens=400)
    assert status == 200
    assert events[-1]["type"] == "done" and events[-1]["failed"] == []
    assert text_of(events, REASONING) and text_of(events, PLAIN)
    assert end_of(events, REASONING)["usage"]["reasoning_tokens"] == EFFORT_TOKENS["medium"]
    assert end_of(events, PLAIN)["usage"]["reasoning_tokens"] == 0
    by_deployment = {r["deployment"]: r["params"] for r in sim.requests()}
    assert by_deployment[REASONING]["max_completion_tokens"] == 400
    assert "max_tokens" not in by_deployment[REASONING]
    assert by_deployment[PLAIN]["max_tokens"] == 400
    assert "max_completion_tokens" not in by_deployment[PLAIN]


def test_unconfigured_reasoning_deployment_is_rejected_upstream_and_reported_as_502(sim):
    """Without CHAT_REASONING_DEPLOYMENTS the app sends `max_tokens` and Azure answers 400: the
    configuration is what makes it work, not a guess from the deployment's name. The caller gets
    `upstream_rejected` (a server-side misconfiguration), never Azure's text."""
    settings = settings_for(**_app_settings(sim, CHAT_REASONING_DEPLOYMENTS=""))
    with serve(settings) as app:
        status, _, body = stream(app.url, max_tokens=50)
    assert status == 502
    assert body is not None and body["error"]["code"] == "upstream_rejected"
    assert "Unsupported" not in json.dumps(body)
    (record,) = sim.requests()
    assert record["status"] == 400 and record["params"]["max_tokens"] == 50


# --- The v1 API: {endpoint}/openai/v1/chat/completions, deployment as model, no api-version -------


def test_v1_api_with_a_key(sim):
    settings = settings_for(**_app_settings(sim, AZURE_OPENAI_API_VERSION="v1"))
    with serve(settings) as app:
        status, events, _ = stream(app.url, max_tokens=300, reasoning_effort="minimal")
        assert status == 200
        assert text_of(events, REASONING)
        assert end_of(events, REASONING)["usage"]["reasoning_tokens"] == 0
        plain_status, plain_events, _ = stream(app.url, deployments=[PLAIN], temperature=0.5, max_tokens=3)
    assert plain_status == 200 and end_of(plain_events, PLAIN)["finish_reason"] == "length"
    first, second = sim.requests()
    for record, deployment in ((first, REASONING), (second, PLAIN)):
        assert record["path"] == "/openai/v1/chat/completions"
        assert record["api_version"] is None
        assert record["params"]["model"] == deployment
    assert first["params"]["max_completion_tokens"] == 300
    assert first["params"]["reasoning_effort"] == "minimal"
    assert second["params"]["temperature"] == 0.5
    # On the v1 (OpenAI) surface every model takes OpenAI's current name for the cap.
    assert second["params"]["max_completion_tokens"] == 3


def test_v1_api_keyless_uses_the_token_provider_as_bearer(sim, monkeypatch):
    from chatstream import models

    calls = 0

    async def token() -> str:
        nonlocal calls
        calls += 1
        return "entra-token"

    monkeypatch.setattr(models, "_token_provider", lambda client_id: token)
    settings = settings_for(**_app_settings(sim, AZURE_OPENAI_API_VERSION="v1", AZURE_OPENAI_API_KEY=""))
    with serve(settings) as app:
        status, events, _ = stream(app.url)
    assert status == 200 and text_of(events)
    assert calls >= 1
    (record,) = sim.requests()
    assert record["path"] == "/openai/v1/chat/completions" and record["status"] == 200


# --- The simulated reasoning deployment itself ----------------------------------------------------


def _sim_chat(sim: SimulatorHandle, deployment: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{sim.url}/openai/deployments/{deployment}/chat/completions?api-version=2025-04-01-preview",
        json={"messages": [{"role": "user", "content": "hi"}], **body},
        headers={"api-key": "k"},
        timeout=30,
    )


def test_simulator_rejects_temperature_with_azures_body(sim):
    response = _sim_chat(sim, REASONING, temperature=0.7)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Unsupported value: 'temperature' does not support 0.7 with this model. "
            "Only the default (1) value is supported.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "unsupported_value",
        }
    }
    assert _sim_chat(sim, REASONING, temperature=1).status_code == 200  # gpt-5: the default is taken
    assert _sim_chat(sim, PLAIN, temperature=0.7).status_code == 200


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("max_tokens", 100),
        ("top_p", 0.5),
        ("presence_penalty", 0.1),
        ("frequency_penalty", 0.1),
        ("logprobs", True),
        ("top_logprobs", 2),
        ("logit_bias", {"50256": -100}),
    ],
)
def test_simulator_rejects_what_reasoning_models_do_not_support(sim, param, value):
    response = _sim_chat(sim, REASONING, **{param: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"Unsupported parameter: '{param}' is not supported with this model.")
    if param == "max_tokens":
        assert error["message"].endswith("Use 'max_completion_tokens' instead.")
    assert _sim_chat(sim, PLAIN, **{param: value}).status_code == 200


def test_simulator_checks_reasoning_effort(sim):
    bad = _sim_chat(sim, REASONING, reasoning_effort="none")
    assert bad.status_code == 400
    assert bad.json()["error"] == {
        "message": "Unsupported value: 'none' is not supported with the 'gpt-5-mini-2025-08-07' model. "
        "Supported values are: 'minimal', 'low', 'medium', and 'high'.",
        "type": "invalid_request_error",
        "param": "reasoning_effort",
        "code": "unsupported_value",
    }
    plain = _sim_chat(sim, PLAIN, reasoning_effort="low")
    assert plain.status_code == 400 and plain.json()["error"]["code"] == "unsupported_parameter"
    good = _sim_chat(sim, REASONING, reasoning_effort="high", max_completion_tokens=1000)
    assert good.status_code == 200
    usage = good.json()["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == EFFORT_TOKENS["high"]
    assert usage["completion_tokens"] == EFFORT_TOKENS["high"] + sim.requests()[-1]["chunks_sent"]


def test_simulator_reasoning_deployment_thinks_before_the_first_token():
    """The first token comes after at least the thinking time (a lower bound: safe on a busy machine)."""
    config = SimulatorConfig(
        ttft_ms=0, token_delay_ms=0, reasoning_deployments=frozenset({REASONING}), reasoning_token_ms=10
    )
    with start_in_thread(config) as handle:
        started = time.monotonic()
        with httpx.stream(
            "POST",
            f"{handle.url}/v1/chat/completions",
            json={
                "model": REASONING,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "reasoning_effort": "high",
            },
            headers={"authorization": "Bearer t"},
            timeout=30,
        ) as response:
            first_content_at = None
            usage = None
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
                if delta.get("content") and first_content_at is None:
                    first_content_at = time.monotonic()
                if chunk.get("usage"):
                    usage = chunk["usage"]
    assert first_content_at is not None and usage is not None
    assert first_content_at - started >= EFFORT_TOKENS["high"] * 10 / 1000 * 0.95
    assert usage["completion_tokens_details"]["reasoning_tokens"] == EFFORT_TOKENS["high"]


def test_embedded_simulator_serves_the_configured_reasoning_deployment():
    """Local development without an endpoint: the embedded simulated deployment is a reasoning one
    when CHAT_REASONING_DEPLOYMENTS names it (here over the v1 API, as the deployed app calls it)."""
    from tests.conftest import start_app

    app = start_app(
        AZURE_OPENAI_DEPLOYMENT=REASONING,
        AZURE_OPENAI_API_VERSION="v1",
        CHAT_REASONING_DEPLOYMENTS=REASONING,
        SIMULATOR_TTFT_MS="0",
        SIMULATOR_TOKEN_DELAY_MS="0",
    )
    try:
        status, events, _ = stream(app.url, reasoning_effort="low", max_tokens=500)
        assert status == 200, app.output
        end = end_of(events, REASONING)
        assert end["usage"]["reasoning_tokens"] == EFFORT_TOKENS["low"]
        assert end["model"] == "gpt-5-mini-2025-08-07"
        refused, _, body = stream(app.url, temperature=0.5)
        assert refused == 400 and body is not None and body["error"]["param"] == "temperature"
    finally:
        app.stop()


def test_openapi_documents_reasoning_effort_and_reasoning_tokens(app):
    document = httpx.get(f"{app.url}/api/openapi.json", timeout=10).json()
    schemas = document["components"]["schemas"]
    effort = schemas["ChatRequest"]["properties"]["reasoning_effort"]
    assert effort["anyOf"][0]["enum"] == ["high", "low", "medium", "minimal"]
    assert "reasoning_tokens" in schemas["Answer"]["properties"]["usage"]["properties"]
