"""Graph chains end to end: a LangChain v1 `create_agent` agent (the `tools` chain and a two-tool example)
and a custom LangGraph graph, streamed through the real endpoint over real sockets to the simulator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import anyio
import httpx
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.tools import tool
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aoai_simulator import SimulatorConfig, start_in_thread
from aoai_simulator.server import SimulatorHandle
from chains import ChainContext, ChainSpec
from chains.graph import GraphChain
from chains.threads import BoundedMemorySaver
from chatstream.endpoint import ChatEndpoint
from chatstream.service import ChatService
from funchost.testing import ThreadServer, serve_in_thread
from tests.conftest import start_app
from tests.support.inprocess import settings_for
from tests.test_chat_stream import deltas, sse_events

# --- the chains a user of this project would register (docs/chains.md, "Adding a chain") ------------


@tool
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


@tool
def reverse(text: str) -> str:
    """Reverse a text."""
    return text[::-1]


def build_two_tool_agent(context: ChainContext) -> Any:
    """An agent with two tools: the runner streams whatever `create_agent` returns."""
    return create_agent(context.chat_model or context.model, [word_count, reverse])


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_custom_graph(context: ChainContext) -> Any:
    """Two nodes: `lookup` reports what it found as custom writes; `answer` streams the model."""

    async def lookup(state: State) -> dict[str, Any]:
        write = get_stream_writer()
        write({"type": "found", "count": 2})
        write("plain note")
        return {"messages": [AIMessage(content="Found 2 notes. ")]}

    async def answer(state: State) -> dict[str, Any]:
        return {"messages": [await context.model.ainvoke(state["messages"])]}

    graph = StateGraph(State)
    graph.add_node("lookup", lookup)
    graph.add_node("answer", answer)
    graph.add_edge(START, "lookup")
    graph.add_edge("lookup", "answer")
    graph.add_edge("answer", END)
    return graph.compile()


AGENT = ChainSpec("agent2", "Two-tool example agent.", build_two_tool_agent)
GRAPH = ChainSpec("graph", "A custom two-node graph.", build_custom_graph)


# --- an app with those chains registered, served in this process ---------------------------------------


def serve_service(service: ChatService) -> ThreadServer:
    endpoint = ChatEndpoint(service)

    async def chat(request: Request) -> Response:
        return await endpoint.handle(request)

    return serve_in_thread(Starlette(routes=[Route("/api/chat", chat, methods=["POST"])]))


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with start_in_thread(SimulatorConfig(ttft_ms=0, token_delay_ms=1, answer_tokens=12)) as handle:
        yield handle


@pytest.fixture(scope="module")
def graph_app(sim: SimulatorHandle) -> Iterator[str]:
    service = ChatService.from_settings(settings_for(AZURE_OPENAI_ENDPOINT=sim.url, AZURE_OPENAI_API_KEY="k"))
    service.registry.register(AGENT)
    service.registry.register(GRAPH)
    server = serve_service(service)
    try:
        yield server.url
    finally:
        server.stop()


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def assert_usage_is_every_call(end: dict, records: list[dict]) -> None:
    assert end["usage"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in records)
    assert end["usage"]["total_tokens"] == end["usage"]["prompt_tokens"] + end["usage"]["completion_tokens"]


# --- create_agent -------------------------------------------------------------------------------------


def test_a_create_agent_agent_streams_tokens_tool_events_and_summed_usage(graph_app, sim):
    before = len(sim.requests())
    response, events, _, done = sse_events(graph_app, {"user": "Call reverse please", "chain": "agent2"})
    assert response.status_code == 200 and done
    records = sim.requests()[before:]
    assert len(records) == 2, "one model call asked for the tool, one answered"
    (call,) = [e for e in events if e["type"] == "tool_call"]
    assert call["name"] == "reverse" and call["deployment"] == "gpt-4o-mini"
    (result,) = [e for e in events if e["type"] == "tool_result"]
    assert result["id"] == call["id"] and result["name"] == "reverse"
    assert result["content"] == json.loads(call["arguments"])["text"][::-1]
    k = kinds(events)
    assert k.index("tool_call_delta") < k.index("tool_call") < k.index("tool_result") < k.index("delta")
    assert all(e["deployment"] == "gpt-4o-mini" for e in events if e["type"] == "delta")
    assert f'"{result["content"]}"' in deltas(events)  # the simulator quotes tool results
    assert "progress" in k, "a registered graph reports its nodes"
    assert_usage_is_every_call(events[-1], records)


def test_the_tools_chain_is_an_agent_with_the_old_events(graph_app, sim):
    """Same events as the hand-written loop it replaced: no progress, results, summed usage."""
    before = len(sim.requests())
    _, events, _, done = sse_events(graph_app, {"user": "What is 6*7 and 1/0?", "chain": "tools"})
    assert done
    assert set(kinds(events)) == {
        "start",
        "tool_call_delta",
        "tool_call",
        "tool_result",
        "tool_error",
        "delta",
        "end",
    }
    assert [e["content"] for e in events if e["type"] == "tool_result"] == ["42"]
    assert [e["message"] for e in events if e["type"] == "tool_error"] == ["division by zero"]
    assert_usage_is_every_call(events[-1], sim.requests()[before:])


# --- a custom graph -------------------------------------------------------------------------------------


def test_a_custom_graph_streams_progress_custom_events_tokens_and_usage(graph_app, sim):
    before = len(sim.requests())
    response, events, _, done = sse_events(graph_app, {"user": "hello graph", "chain": "graph"})
    assert response.status_code == 200 and done
    k = kinds(events)
    assert k[0] == "start" and k[-1] == "end"
    found = next(e for e in events if e["type"] == "found")
    assert found == {"type": "found", "deployment": "gpt-4o-mini", "count": 2}
    assert next(e for e in events if e["type"] == "custom")["data"] == "plain note"
    stages = [e["stage"] for e in events if e["type"] == "progress"]
    assert stages == ["lookup", "answer"]
    text = deltas(events)
    assert text.startswith("Found 2 notes. ") and len(text) > len("Found 2 notes. ")
    assert k.index("found") < k.index("delta") and k[k.index("delta") + 1 :].count("progress") == 2
    records = sim.requests()[before:]
    assert len(records) == 1
    assert_usage_is_every_call(events[-1], records)
    assert events[-1]["finish_reason"] == "stop"


# --- threads --------------------------------------------------------------------------------------------


def test_a_thread_keeps_the_conversation_so_the_client_sends_only_the_new_message(graph_app, sim):
    thread = f"t-{time.time_ns()}"
    _, first, _, _ = sse_events(graph_app, {"user": "What is 2+3?", "chain": "tools", "thread_id": thread})
    answer = deltas(first)
    _, second, _, done = sse_events(graph_app, {"user": "and 4*4?", "chain": "tools", "thread_id": thread})
    assert done and [e["content"] for e in second if e["type"] == "tool_result"] == ["16"]
    sent = sim.last_request()["messages"]
    contents = [m.get("content") for m in sent]
    assert "What is 2+3?" in contents and answer in contents and "and 4*4?" in contents
    assert [m["role"] for m in sent].count("user") == 2
    # Another thread id starts afresh.
    sse_events(graph_app, {"user": "and 4*4?", "chain": "tools", "thread_id": thread + "-b"})
    assert "What is 2+3?" not in [m.get("content") for m in sim.last_request()["messages"]]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"user": "hi", "chain": "chat", "thread_id": "abcdefgh"}, "thread_id"),
        ({"user": "hi", "chain": "tools", "thread_id": "no spaces allowed"}, "thread_id"),
        ({"user": "hi", "chain": "tools", "thread_id": "x" * 129}, "thread_id"),
    ],
)
def test_thread_ids_are_checked(graph_app, body, param):
    response = httpx.post(f"{graph_app}/api/chat", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_the_thread_store_keeps_one_checkpoint_per_thread_and_forgets_the_oldest_thread():
    async def scenario() -> BoundedMemorySaver:
        saver = BoundedMemorySaver(max_threads=2)
        graph = build_custom_graph(ChainContext(model=_echo(), system_prompt="s"))
        chain = GraphChain(graph, checkpointer=saver)
        for thread in ("a", "a", "b", "c"):
            config: Any = {"configurable": {"thread_id": thread}}
            async for _ in chain.astream({"history": [], "question": f"q-{thread}"}, config):
                pass
        return saver

    saver = asyncio.run(scenario())
    assert set(saver.storage) == {"b", "c"}
    assert all(len(checkpoints) == 1 for ns in saver.storage.values() for checkpoints in ns.values())
    assert {key[0] for key in saver.blobs} == {"b", "c"}


def _echo() -> Any:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    return FakeListChatModel(responses=["ok"] * 10)


# --- cancellation ---------------------------------------------------------------------------------------


def test_a_client_leaving_an_agent_run_stops_the_model_call():
    """The model streams inside the agent graph's own tasks; closing our stream must stop it."""
    with start_in_thread(SimulatorConfig(ttft_ms=0, token_delay_ms=20, answer_tokens=1000)) as slow:
        app = start_app(AZURE_OPENAI_ENDPOINT=slow.url, AZURE_OPENAI_API_KEY="k", CHAT_COALESCE_DELTAS="true")
        try:
            seen = 0
            with (
                httpx.Client(timeout=10) as client,
                client.stream(
                    "POST", f"{app.url}/api/chat", json={"user": "tell me a story", "chain": "tools"}
                ) as r,
            ):
                assert r.status_code == 200
                for line in r.iter_lines():
                    if '"type":"delta"' in line:
                        seen += 1
                        if seen == 5:
                            break
                assert slow.open_streams == 1
            left_at = time.monotonic()
            assert slow.wait_until(lambda s: s["open_streams"] == 0, timeout=5.0), slow.stats()["requests"][
                -1
            ]
            assert time.monotonic() - left_at < 2.5
            record = slow.last_request()
            assert record is not None and record["closed_early"] and record["chunks_sent"] < 200
        finally:
            app.stop()


def test_closing_a_graph_stream_inside_a_cancelled_scope_still_stops_the_model():
    """langgraph#5682: `aclose()` of LangGraph's own stream inside a cancelled anyio scope leaves the
    model running. Ours cancels the graph's task without awaiting anything, so the upstream closes."""
    with start_in_thread(SimulatorConfig(ttft_ms=0, token_delay_ms=20, answer_tokens=1000)) as slow:

        async def scenario() -> None:
            service = ChatService.from_settings(
                settings_for(AZURE_OPENAI_ENDPOINT=slow.url, AZURE_OPENAI_API_KEY="k")
            )
            service.registry.register(GRAPH)
            from chatstream.schema import ChatRequest

            run = service.run(ChatRequest(user="a long story", chain="graph"), "cancel-1")
            stream = run.chain.astream(run.inputs, run.config)
            got = 0
            async for item in stream:
                got += isinstance(item, object)
                if got == 8:
                    break
            with anyio.CancelScope() as scope:
                scope.cancel()
                await stream.aclose()  # every await in here is cancelled at once
            # Waited for off the loop: the graph's cancelled task needs the loop to finish closing.
            closed = await asyncio.to_thread(slow.wait_until, lambda s: s["open_streams"] == 0, 5.0)
            assert closed

        asyncio.run(scenario())
        record = slow.last_request()
        assert record is not None and record["closed_early"] and record["chunks_sent"] < 200
