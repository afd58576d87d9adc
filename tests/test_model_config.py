"""How configuration picks the model: the embedded simulator, an OpenAI-compatible server, or a clear 503."""

from __future__ import annotations

import httpx

from funchost.testing import free_port
from tests.conftest import start_app
from tests.support.inprocess import serve, settings_for


def chat(url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/api/chat", json={"user": "hello", "stream": False, **body}, timeout=30)


def test_no_endpoint_uses_the_embedded_simulated_deployment():
    sim_port = free_port()
    app = start_app(SIMULATOR_PORT=str(sim_port), SIMULATOR_TTFT_MS="0", SIMULATOR_TOKEN_DELAY_MS="0")
    try:
        answer = chat(app.url)
        assert answer.status_code == 200
        assert answer.json()["content"].startswith('You asked: "hello"')
        stats = httpx.get(f"http://127.0.0.1:{sim_port}/_sim/stats", timeout=10).json()
        assert stats["requests_total"] == 1
        assert stats["requests"][-1]["deployment"] == "gpt-4o-mini"
        assert "curl -N" in app.output and "/api/chat" in app.output
        # The embedded deployment takes fault markers from the prompt, so failures can be tried by hand.
        limited = chat(app.url, user="hello [sim:429:retry-after=30]")
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "30"
        assert limited.json()["error"]["code"] == "rate_limited"
    finally:
        app.stop()


def test_openai_compatible_server_tags_deltas_with_the_model(simulator):
    settings = settings_for(
        OPENAI_BASE_URL=simulator.openai_base_url, OPENAI_MODEL="llama3.2", OPENAI_API_KEY="x"
    )
    with serve(settings) as app:
        with httpx.stream("POST", f"{app.url}/api/chat", json={"user": "hi"}, timeout=30) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert response.status_code == 200
    assert '"deployment":"llama3.2"' in lines[1]
    assert simulator.last_request()["deployment"] == "llama3.2"
    assert '"finish_reason":"stop"' in lines[-1]


def test_misconfiguration_is_reported_at_startup_and_answered_with_503():
    app = start_app(OPENAI_BASE_URL="http://127.0.0.1:9/v1")  # OPENAI_MODEL missing
    try:
        response = chat(app.url)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "not_configured"
        assert "OPENAI_MODEL" in error["message"]
        # Bad requests are still validated first and get their own 400.
        assert chat(app.url, max_tokens=0).status_code == 400
        assert "misconfigured" in app.output and "OPENAI_MODEL" in app.output
    finally:
        app.stop()


def test_an_unusable_endpoint_url_is_a_503_not_a_crash():
    app = start_app(AZURE_OPENAI_ENDPOINT="my-resource.openai.azure.com", AZURE_OPENAI_API_KEY="x")
    try:
        response = chat(app.url)
        assert response.status_code == 503
        assert "AZURE_OPENAI_ENDPOINT" in response.json()["error"]["message"]
    finally:
        app.stop()
