"""The simulator's tool calls: shaped like the recorded Azure/OpenAI streams, read by the real SDK."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.test_simulator import FIXTURES, azure_client, post_stream, run, sse_events

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate arithmetic",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "utc_time", "description": "Current UTC time", "parameters": {"type": "object"}},
}


def tool_stream(simulator, text: str, tools: list[dict], **extra: Any) -> list[Any]:
    body = {"messages": [{"role": "user", "content": text}], "tools": tools, **extra}
    response = post_stream(simulator, body)
    assert response.status_code == 200
    return sse_events(response.text)


def _shape(event: dict[str, Any]) -> list[tuple[str, ...]]:
    """Key sets of a tool-call chunk's choice, delta and call (values ignored)."""
    choice = event["choices"][0]
    call = choice["delta"].get("tool_calls", [{}])[0]
    return [tuple(sorted(choice)), tuple(sorted(choice["delta"])), tuple(sorted(call))]


def test_tool_call_chunks_have_the_shape_of_the_recorded_azure_stream(simulator):
    events = tool_stream(
        simulator, "What is 12 * (3 + 4)?", [CALCULATOR], stream_options={"include_usage": True}
    )
    assert events[0]["prompt_filter_results"] and events[-1] == "[DONE]"
    chunks = events[1:-2]
    first, fragments, finish = chunks[0], chunks[1:-1], chunks[-1]
    call = first["choices"][0]["delta"]["tool_calls"][0]
    assert call["index"] == 0 and call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"arguments": "", "name": "calculator"}
    assert first["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in fragments]
    assert len(pieces) > 2
    assert json.loads("".join(pieces)) == {"expression": "12 * (3 + 4)"}
    assert finish["choices"][0]["finish_reason"] == "tool_calls" and finish["choices"][0]["delta"] == {}
    usage = events[-2]["usage"]
    assert usage["completion_tokens"] == len(chunks) - 1
    simulator.wait_idle()  # the record is finished just after the last byte went out
    record = simulator.last_request()
    assert record["finish_reason"] == "tool_calls" and record["outcome"] == "completed"
    if FIXTURES.is_dir():
        recorded = sse_events((FIXTURES / "azure_gpt-4o-mini_tool-call_include-usage_crewai.sse").read_text())
        assert _shape(first) == _shape(recorded[1])
        assert _shape(fragments[0]) == _shape(recorded[2])
        assert _shape(finish) == _shape(recorded[-3])


def test_parallel_calls_use_indexes_and_the_sdk_reassembles_them(simulator):
    async def main() -> dict[int, dict[str, str]]:
        client = azure_client(simulator)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is 2+2 and 3*3, and the time?"}],
            tools=[CALCULATOR, CLOCK],
            stream=True,
        )
        calls: dict[int, dict[str, str]] = {}
        async for chunk in stream:
            for part in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                call = calls.setdefault(part.index, {"name": "", "arguments": ""})
                call["name"] += (part.function.name or "") if part.function else ""
                call["arguments"] += (part.function.arguments or "") if part.function else ""
        return calls

    calls = run(main())
    assert sorted(calls) == [0, 1, 2]
    assert [calls[i]["name"] for i in range(3)] == ["calculator", "calculator", "utc_time"]
    assert [json.loads(calls[i]["arguments"]) for i in range(3)] == [
        {"expression": "2+2"},
        {"expression": "3*3"},
        {},
    ]


def test_after_tool_messages_the_answer_quotes_the_results(simulator):
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
    ]
    response = post_stream(simulator, {"messages": messages, "tools": [CALCULATOR]})
    events = sse_events(response.text)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[1:-1] if e["choices"])
    assert text.startswith('Tool results: "4".')
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_no_matching_tool_or_tool_choice_none_answers_in_text(simulator):
    for text, extra in (("hello", {}), ("What is 2+2?", {"tool_choice": "none"})):
        events = tool_stream(simulator, text, [CALCULATOR], **extra)
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
        assert not any(e["choices"] and "tool_calls" in e["choices"][0]["delta"] for e in events[1:-1])


def test_non_streaming_tool_call(simulator):
    body = {"messages": [{"role": "user", "content": "What is 5*5?"}], "tools": [CALCULATOR]}
    response = httpx.post(
        f"{simulator.url}/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
        json=body,
        headers={"api-key": "k"},
        timeout=10,
    )
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"arguments": '{"expression": "5*5"}', "name": "calculator"}
