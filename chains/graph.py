"""Any LangGraph compiled graph (a LangChain v1 `create_agent` agent too) as a chain the runner streams.

`GraphChain.astream` streams the graph with `stream_mode=["messages", "updates", "custom"]` and turns
each (namespace, mode, payload) into what the runner already understands, so its per-token loop is the
same for graphs and chains:

- `messages`: model tokens as the model's own `AIMessageChunk`s (text, tool-call fragments, usage on
  each call's last chunk, so `end.usage` sums every model call); a whole `AIMessage` a node returned
  without streaming becomes one chunk; a `ToolMessage` becomes `tool_result` (or `tool_error` when its
  status is `error`).
- `updates`: a `progress` event per finished node (`stage` = node name), unless `progress=False`;
  middleware hooks (`Name.before_model`) and nodes that changed nothing are not reported. A graph that
  stops at `interrupt()` ends with the chain failure `graph_interrupted`: nobody here can resume it.
- `custom` (a node's `get_stream_writer()(...)`): a dict with a `type` becomes an event of that type;
  anything else a `custom` event carrying it as `data`.

The graph runs in a task of its own that feeds a small queue: closing this stream (the client left)
cancels that task with `Task.cancel()`, which needs no await, so the model call inside the graph is
stopped even when the close happens inside an already cancelled scope (LangGraph's own `aclose()` there
leaves it running: langgraph#5682).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.runnables import Runnable, RunnableConfig

from chains.errors import ChainFailure
from chains.registry import ChatInput

if TYPE_CHECKING:  # LangGraph is imported by whoever builds a graph, not by every cold start
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.pregel import Pregel

STREAM_MODES = ["messages", "updates", "custom"]
#: Longest tool result shown in a `tool_result` event (what the model got is the tool's business).
MAX_RESULT_CHARS = 4000
#: Items the graph may run ahead of the client: enough to absorb bursts, small enough to push back.
_QUEUE_SIZE = 64
_END: Any = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def messages_input(inputs: ChatInput, *, thread_started: bool) -> dict[str, Any]:
    """The graph's input for a `MessagesState`-style graph: the conversation, or only the new question
    when the thread already holds the history."""
    question = HumanMessage(content=inputs["question"])
    if thread_started:
        return {"messages": [question]}
    return {"messages": [*inputs["history"], question]}


def _as_chunk(message: AIMessage) -> AIMessageChunk:
    """A message a node returned whole, as one chunk (its tool calls as complete fragments)."""
    calls = [
        tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
        for i, c in enumerate(message.tool_calls)
    ]
    metadata = dict(message.response_metadata)
    if calls and not metadata.get("finish_reason"):
        metadata["finish_reason"] = "tool_calls"
    return AIMessageChunk(
        content=message.content,
        id=message.id,
        response_metadata=metadata,
        usage_metadata=message.usage_metadata,
        additional_kwargs=message.additional_kwargs,
        tool_call_chunks=calls,
    )


def tool_event(message: ToolMessage) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "tool_result", "id": message.tool_call_id, "name": message.name}
    text = message.content if isinstance(message.content, str) else json.dumps(message.content, default=str)
    if message.status == "error":
        reason = (message.artifact or {}).get("error") if isinstance(message.artifact, dict) else None
        return {**event, "type": "tool_error", "message": reason or text.removeprefix("Error: ")}
    return {**event, "content": text[:MAX_RESULT_CHARS]}


def custom_event(payload: Any) -> dict[str, Any]:
    if isinstance(payload, dict) and isinstance(payload.get("type"), str):
        return payload
    if not isinstance(payload, str | int | float | bool | list | dict | None):
        payload = str(payload)
    return {"type": "custom", "data": payload}


class GraphChain(Runnable[ChatInput, Any]):
    """A compiled graph streamed as a chain. `to_input` builds the graph's input from the request
    (default: `{"messages": [...history, question]}`); `checkpointer` keeps threads when the run's
    config names a `thread_id` (`configurable`); `context` is the graph's runtime context."""

    def __init__(
        self,
        graph: Pregel,
        *,
        progress: bool = True,
        to_input: Callable[..., Any] = messages_input,
        checkpointer: BaseCheckpointSaver | None = None,
        recursion_limit: int | None = None,
        context: Any = None,
    ) -> None:
        self.graph = graph
        self.context = context
        self.progress = progress
        self.to_input = to_input
        self.checkpointer = checkpointer
        self.recursion_limit = recursion_limit
        self.name = graph.get_name()

    def invoke(self, input: ChatInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError("a graph chain only streams (astream)")

    async def _graph_and_input(self, inputs: ChatInput, config: RunnableConfig) -> tuple[Pregel, Any]:
        thread_id = (config.get("configurable") or {}).get("thread_id")
        if thread_id is None:
            return self.graph, self.to_input(inputs, thread_started=False)
        graph = self.graph
        if graph.checkpointer is None:
            if self.checkpointer is None:
                raise ChainFailure("threads_unavailable", "this chain keeps no conversation threads")
            graph = graph.copy(update={"checkpointer": self.checkpointer})
        state = await graph.aget_state(config)
        graph_input = self.to_input(inputs, thread_started=bool(state.values))
        request_id = (config.get("metadata") or {}).get("request_id")
        messages = graph_input.get("messages") if isinstance(graph_input, dict) else None
        if request_id and messages and isinstance(messages[-1], HumanMessage) and not messages[-1].id:
            # A retry (before the first chunk) replaces the question it already stored, not repeats it.
            messages[-1].id = f"question-{request_id}"
        return graph, graph_input

    async def astream(
        self, input: ChatInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        run_config: RunnableConfig = {**(config or {})}
        if self.recursion_limit is not None:
            run_config.setdefault("recursion_limit", self.recursion_limit)
        graph, graph_input = await self._graph_and_input(input, run_config)
        queue: asyncio.Queue[Any] = asyncio.Queue(_QUEUE_SIZE)

        async def pump() -> None:
            try:
                async for item in graph.astream(
                    graph_input,
                    run_config,
                    context=self.context,
                    stream_mode=STREAM_MODES,  # type: ignore[arg-type]
                    subgraphs=True,
                ):
                    await queue.put(item)
                await queue.put(_END)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the reader, who raises it in the runner
                await queue.put(_Failed(exc))

        task = asyncio.ensure_future(pump())
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                for out in self._translate(*item):
                    yield out
        finally:
            # Synchronous: works even when every await here would be cancelled at once.
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({task}, timeout=1.0)

    def _translate(self, namespace: tuple[str, ...], mode: str, payload: Any) -> list[Any]:
        if mode == "messages":
            message = payload[0]
            if isinstance(message, AIMessageChunk):
                return [message]
            if isinstance(message, AIMessage):
                return [_as_chunk(message)]
            if isinstance(message, ToolMessage):
                return [tool_event(message)]
            return []
        if mode == "custom":
            return [custom_event(payload)]
        if mode == "updates" and isinstance(payload, dict):
            if "__interrupt__" in payload:
                raise ChainFailure(
                    "graph_interrupted", "the graph stopped to wait for input this endpoint cannot give"
                )
            if not self.progress:
                return []
            where = [part.split(":", 1)[0] for part in namespace]
            return [
                {
                    "type": "progress",
                    "stage": node,
                    "message": f"{node} done",
                    **({"graph": where} if where else {}),
                }
                for node, update in payload.items()
                if update is not None and "." not in node and not node.startswith("__")
            ]
        return []


def as_chain(runnable: Runnable, **options: Any) -> Runnable:
    """A registered chain as the runner streams it: a compiled graph gets the adapter, the rest as is."""
    pregel = sys.modules.get("langgraph.pregel")  # no graph can exist before LangGraph is imported
    if pregel is not None and isinstance(runnable, pregel.Pregel):
        return GraphChain(runnable, **options)
    return runnable
