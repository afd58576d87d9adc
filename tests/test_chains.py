"""The `tools` and `rag` chains and multi-deployment streams, end to end through the local host."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
from httpx_sse import connect_sse

from chains.example_tools import calculate
from tests.conftest import EXTRA_DEPLOYMENTS
from tests.test_chat_stream import deltas, sse_events


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


# --- tools ------------------------------------------------------------------------------------------


def test_tool_call_streams_deltas_call_result_then_answer(app, paced_simulator):
    response, events, _, done = sse_events(app.url, {"user": "What is 12 * (3 + 4)?", "chain": "tools"})
    assert response.status_code == 200 and done
    kinds = types(events)
    assert kinds[0] == "start" and kinds[-1] == "end"
    first_delta = kinds.index("delta")
    # Fragments, then the complete call, then its result, all before the answer text.
    assert (
        kinds.index("tool_call_delta") < kinds.index("tool_call") < kinds.index("tool_result") < first_delta
    )
    fragments = [e for e in events if e["type"] == "tool_call_delta"]
    assert len(fragments) > 2, "arguments arrive in several fragments"
    assert fragments[0]["name"] == "calculator" and fragments[0]["id"]
    assert all(f["name"] is None and f["id"] is None for f in fragments[1:])
    (call,) = [e for e in events if e["type"] == "tool_call"]
    assert call["arguments"] == "".join(f["arguments_delta"] for f in fragments)
    assert json.loads(call["arguments"]) == {"expression": "12 * (3 + 4)"}
    assert call["id"] == fragments[0]["id"] and call["index"] == 0
    (result,) = [e for e in events if e["type"] == "tool_result"]
    assert result == {
        "type": "tool_result",
        "deployment": "gpt-4o-mini",
        "id": call["id"],
        "name": "calculator",
        "content": "84",
    }
    # The result went back to the model (the simulator quotes tool results in its answer).
    assert '"84"' in deltas(events)
    second = paced_simulator.last_request()["messages"]
    assert second[-1] == {"role": "tool", "content": "84", "tool_call_id": call["id"]} | {
        k: v for k, v in second[-1].items() if k not in ("role", "content", "tool_call_id")
    }
    assert second[-2]["tool_calls"][0]["function"]["arguments"] == call["arguments"]
    end = events[-1]
    assert end["finish_reason"] == "stop"
    # Usage is the sum of both model calls.
    records = paced_simulator.requests()
    assert len(records) == 2
    assert end["usage"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in records)
    assert end["usage"]["total_tokens"] == end["usage"]["prompt_tokens"] + end["usage"]["completion_tokens"]


def test_parallel_tool_calls_are_reassembled_per_index(app):
    _, events, _, _ = sse_events(
        app.url, {"user": "Compute 2**10 and 7 - 10, and what time is it?", "chain": "tools"}
    )
    calls = [e for e in events if e["type"] == "tool_call"]
    assert [c["index"] for c in calls] == [0, 1, 2]
    for call in calls:
        pieces = [
            e["arguments_delta"]
            for e in events
            if e["type"] == "tool_call_delta" and e["index"] == call["index"]
        ]
        assert call["arguments"] == "".join(pieces)
    assert [json.loads(c["arguments"]) for c in calls[:2]] == [
        {"expression": "2**10"},
        {"expression": "7 - 10"},
    ]
    assert calls[2]["name"] == "utc_time"
    results = {e["id"]: e["content"] for e in events if e["type"] == "tool_result"}
    assert results[calls[0]["id"]] == "1024" and results[calls[1]["id"]] == "-3"
    assert results[calls[2]["id"]].startswith("20") and results[calls[2]["id"]].endswith("+00:00")
    assert '"1024"' in deltas(events)


def test_failing_tool_gives_tool_error_and_the_model_still_answers(app, paced_simulator):
    _, events, _, done = sse_events(app.url, {"user": "What is 1/0?", "chain": "tools"})
    assert done
    (error,) = [e for e in events if e["type"] == "tool_error"]
    assert error["name"] == "calculator" and error["message"] == "division by zero"
    assert "tool_result" not in types(events) and "error" not in types(events)
    assert "division by zero" in deltas(events)
    tool_message = paced_simulator.last_request()["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"].startswith("Error:")
    assert events[-1]["finish_reason"] == "stop"


def test_tools_chain_without_a_tool_request_just_answers(app):
    _, events, _, _ = sse_events(app.url, {"user": "hello there", "chain": "tools", "max_tokens": 5})
    assert set(types(events)[1:-1]) == {"delta"}
    assert events[-1]["finish_reason"] == "length"


def test_tool_call_events_in_ndjson_and_json_answer(app):
    body = {"user": "What is 6*7?", "chain": "tools"}
    with httpx.stream(
        "POST", f"{app.url}/api/chat", json=body, headers={"Accept": "application/x-ndjson"}
    ) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "tool_call" in types(lines) and lines[-1]["type"] == "end"
    answer = httpx.post(f"{app.url}/api/chat", json={**body, "stream": False}, timeout=30).json()
    assert answer["content"] == deltas(lines)
    kinds = [e["type"] for e in answer["events"]]
    assert kinds == ["tool_call", "tool_result"]
    assert answer["events"][1]["content"] == "42"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("12 * (3 + 4)", "84"), ("2^8", "256"), ("-3.5 + 1", "-2.5"), ("7 // 2", "3"), ("10 / 4", "2.5")],
)
def test_calculator_evaluates_arithmetic(expression, expected):
    assert calculate(expression) == expected


@pytest.mark.parametrize(
    "expression",
    ["__import__('os')", "9**9**9", "1/0", "x + 1", "[1, 2]", "1" * 300, "(1).__class__", "1e300*1e300"],
)
def test_calculator_refuses_anything_but_bounded_arithmetic(expression):
    with pytest.raises(ValueError):
        calculate(expression)


# --- rag ----------------------------------------------------------------------------------------------


def test_rag_streams_progress_and_citations_before_the_answer(app, paced_simulator):
    question = "What happens to the model call when the client disconnects?"
    _, events, _, done = sse_events(app.url, {"user": question, "chain": "rag"})
    assert done
    kinds = types(events)
    first_delta = kinds.index("delta")
    head = events[1:first_delta]
    assert [e["type"] for e in head] == ["progress", "progress", "citations", "progress"]
    assert [e.get("stage") for e in head] == ["searching", "found", None, "generating"]
    assert head[0]["message"] == "Searching 22 documents"
    citations = head[2]["citations"]
    assert head[1]["count"] == len(citations) and head[1]["message"] == f"Found {len(citations)} passages"
    assert citations[0]["id"] == "disconnect" and citations[0]["source"] == "docs/disconnect.txt"
    assert [c["number"] for c in citations] == list(range(1, len(citations) + 1))
    scores = [c["score"] for c in citations]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    assert all(e["deployment"] == "gpt-4o-mini" for e in head)
    assert set(kinds[first_delta:-1]) == {"delta"} and kinds[-1] == "end"
    # The passages reached the model, numbered as cited.
    system = paced_simulator.last_request()["messages"][0]["content"]
    assert "[1] Client disconnects cancel the model call" in system
    assert paced_simulator.last_request()["messages"][-1]["content"] == question


def test_rag_with_no_matching_passage_still_answers(app, paced_simulator):
    _, events, _, _ = sse_events(app.url, {"user": "zebra quokka", "chain": "rag"})
    citations = next(e for e in events if e["type"] == "citations")["citations"]
    assert citations == []
    assert "(no passages matched)" in paced_simulator.last_request()["messages"][0]["content"]
    assert events[-1]["finish_reason"] == "stop"


# --- several deployments --------------------------------------------------------------------------------


def per_deployment(events: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for event in events:
        if event["type"] not in ("start", "done"):
            grouped.setdefault(event["deployment"], []).append(event)
    return grouped


def test_several_deployments_stream_interleaved_into_one_response(app, paced_simulator):
    body = {"user": "compare yourselves", "deployments": ["gpt-4o-mini", "gpt-4o"]}
    _, events, _, done = sse_events(app.url, body)
    assert done
    start, last = events[0], events[-1]
    assert start["type"] == "start" and start["deployments"] == ["gpt-4o-mini", "gpt-4o"]
    assert last == {"type": "done", "id": start["id"], "deployments": ["gpt-4o-mini", "gpt-4o"], "failed": []}
    assert types(events).count("start") == 1
    grouped = per_deployment(events[1:-1])
    assert set(grouped) == {"gpt-4o-mini", "gpt-4o"}
    # Interleaved, not one after the other.
    order = [e["deployment"] for e in events[1:-1] if e["type"] == "delta"]
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches > 2
    _, single, _, _ = sse_events(app.url, {"user": "compare yourselves"})
    for own in grouped.values():
        assert own[-1]["type"] == "end" and own[-1]["finish_reason"] == "stop"
        assert own[-1]["usage"]["completion_tokens"] == sum(1 for e in own if e["type"] == "delta")
        assert deltas(own) == deltas(single)  # the simulator's answer depends on the messages only
        assert set(types(own)[:-1]) == {"delta"}
    served = sorted(r["deployment"] for r in paced_simulator.requests())
    assert served == ["gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]


def test_one_failing_deployment_does_not_end_the_others(app):
    body = {"user": "hello", "deployments": ["gpt-4o-mini", "fault-drop-after=3", "fault-400"]}
    response, events, _, done = sse_events(app.url, body)
    assert response.status_code == 200 and done
    grouped = per_deployment(events)
    assert (
        types(grouped["gpt-4o-mini"])[-1] == "end" and grouped["gpt-4o-mini"][-1]["finish_reason"] == "stop"
    )
    dropped = grouped["fault-drop-after=3"]
    assert types(dropped) == ["delta"] * 3 + ["error", "end"]
    assert dropped[-1]["finish_reason"] == "error"
    rejected = grouped["fault-400"]
    assert types(rejected) == ["error", "end"] and rejected[0]["code"] == "upstream_rejected"
    assert events[-1]["type"] == "done"
    assert sorted(events[-1]["failed"]) == ["fault-400", "fault-drop-after=3"]


def test_every_deployment_failing_before_start_is_a_real_http_error(app):
    body = {"user": "hello", "deployments": ["fault-400", "fault-400"]}
    response = httpx.post(f"{app.url}/api/chat", json=body, timeout=30)
    assert response.status_code == 400  # named twice: a validation error
    body = {"user": "hello", "deployments": ["fault-400"]}
    response = httpx.post(f"{app.url}/api/chat", json=body, timeout=30)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_rejected"


@pytest.mark.parametrize(
    ("deployments", "code"),
    [
        (["gpt-4o-mini", "nope"], "unknown_deployment"),
        ([], "invalid_request"),
        (["a", "b", "c", "d", "e"], "invalid_request"),
    ],
)
def test_deployments_are_checked_against_the_allow_list(app, paced_simulator, deployments, code):
    response = httpx.post(f"{app.url}/api/chat", json={"user": "hi", "deployments": deployments}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == "deployments"
    if code == "unknown_deployment":
        assert "'nope'" in error["message"]
    assert paced_simulator.stats()["requests_total"] == 0


def test_several_deployments_cannot_answer_as_one_json(app):
    body = {"user": "hi", "deployments": ["gpt-4o-mini", "gpt-4o"], "stream": False}
    response = httpx.post(f"{app.url}/api/chat", json=body, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "deployments"


def test_disconnect_cancels_every_upstream_request(app, paced_simulator):
    # Both deployments stall after a few tokens and hold the connection until the client leaves.
    body = {"user": "hello", "deployments": ["fault-stall-after=4", "fault-stall-after=6"]}
    seen: dict[str, int] = {}
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "POST", f"{app.url}/api/chat", json=body) as source,
    ):
        for sse in source.iter_sse():
            event = json.loads(sse.data)
            if event["type"] == "delta":
                seen[event["deployment"]] = seen.get(event["deployment"], 0) + 1
            if seen.get("fault-stall-after=4") == 4 and seen.get("fault-stall-after=6") == 6:
                break
    assert paced_simulator.wait_until(
        lambda s: len(s["requests"]) == 2 and all(r["client_disconnected"] for r in s["requests"]), 10
    ), paced_simulator.requests()
    assert paced_simulator.wait_idle(5)
    assert all(r["outcome"] == "stalled" for r in paced_simulator.requests())


# --- the catalog ------------------------------------------------------------------------------------


def test_catalog_lists_chains_and_allowed_deployments_without_a_key(app):
    response = httpx.get(f"{app.url}/api/chains", timeout=30)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"
    catalog = response.json()
    assert [c["name"] for c in catalog["chains"]] == ["chat", "rag", "tools"]
    assert all(c["description"] for c in catalog["chains"])
    assert catalog["default_chain"] == "chat" and catalog["default_deployment"] == "gpt-4o-mini"
    assert catalog["deployments"] == ["gpt-4o-mini", *EXTRA_DEPLOYMENTS]
    assert catalog["max_request_deployments"] == 4
    assert "test-key" not in response.text and "127.0.0.1" not in response.text
    assert httpx.post(f"{app.url}/api/chains", timeout=30).status_code in (404, 405)
