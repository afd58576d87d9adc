"""A caller who hangs up stops the upstream request: the lean streaming path closes it within a second."""

from __future__ import annotations

import time

import httpx

from aoai_simulator import SimulatorConfig, start_in_thread
from tests.conftest import start_app


def test_client_disconnect_closes_the_upstream_stream_within_a_second():
    # 1000 tokens at 20 ms: the answer would take 20 s if nobody stopped it.
    with start_in_thread(SimulatorConfig(ttft_ms=0, token_delay_ms=20, answer_tokens=1000)) as sim:
        app = start_app(
            AZURE_OPENAI_ENDPOINT=sim.url, AZURE_OPENAI_API_KEY="test-key", CHAT_COALESCE_DELTAS="true"
        )
        try:
            deltas = 0
            with (
                httpx.Client(timeout=10) as client,
                client.stream(
                    "POST", f"{app.url}/api/chat", json={"user": "tell me a long story"}
                ) as response,
            ):
                assert response.status_code == 200
                for line in response.iter_lines():
                    if '"type":"delta"' in line:
                        deltas += 1
                        if deltas == 5:
                            break
                assert sim.open_streams == 1
            closed_at = time.monotonic()
            # The design bound is 1 s; a busy machine gets slack on top (an upstream left running would
            # take ~20 s, and `chunks_sent` below bounds it too).
            assert sim.wait_until(lambda s: s["open_streams"] == 0, timeout=5.0), sim.stats()["requests"][-1]
            assert time.monotonic() - closed_at < 2.5
            record = sim.last_request()
            assert record is not None and record["closed_early"] and record["client_disconnected"]
            assert record["chunks_sent"] < 200
        finally:
            app.stop()
