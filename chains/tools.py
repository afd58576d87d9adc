"""`tools`: the model may call tools; they run here, their results go back, and the answer streams.

One round = one streamed model call. The model's chunks pass through unchanged (the runner turns
`tool_call_chunks` into `tool_call_delta` / `tool_call` events); after a round that asked for tools
this chain runs them and yields a `tool_result` (or `tool_error`) event per call, then calls the
model again with the results. A failing tool does not end the run: the model is told the tool
failed (as LangChain's ToolNode does) and can answer anyway. After `tool_max_rounds` rounds that all
asked for tools the run ends with an `error` event (`tool_rounds_exceeded`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.ai import add_ai_message_chunks
from langchain_core.messages.tool import ToolCallChunk, tool_call_chunk
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator
from langchain_core.tools import BaseTool

from chains.errors import ChainFailure
from chains.example_tools import example_tools
from chains.registry import ChainContext, ChainSpec, ChatInput

log = logging.getLogger("chains.tools")

#: Longest tool result sent back to the model and shown in the `tool_result` event.
MAX_RESULT_CHARS = 4000


def rounds_exceeded(rounds: int) -> ChainFailure:
    return ChainFailure(
        "tool_rounds_exceeded",
        f"the model still asked for tools after {rounds} rounds; no answer was produced",
    )


class _CallParts:
    """One tool call's fragments as they arrive; joined once when the turn is complete."""

    __slots__ = ("args", "call_id", "index", "name")

    def __init__(self, index: int | None, call_id: str | None) -> None:
        self.index = index
        self.call_id = call_id
        self.name: list[str] = []
        self.args: list[str] = []

    def chunk(self) -> ToolCallChunk:
        return tool_call_chunk(
            name="".join(self.name) or None, args="".join(self.args), id=self.call_id, index=self.index
        )


class Turn:
    """One streamed model turn, merged once at its end: linear in the size of the turn.

    `turn = turn + chunk` re-merged the whole turn and re-parsed every tool call's arguments so far
    on each chunk, so arguments streamed in small fragments cost quadratic CPU (seconds for 16 KB),
    and a caller's prompt can make a model do that. Here tool-call fragments go into lists by index
    (the same grouping as LangChain's merge: one call per index unless a different id starts a new
    one), the rest of each chunk is merged by LangChain in one pass, and the arguments are parsed once.
    """

    def __init__(self) -> None:
        self._chunks: list[AIMessageChunk] = []
        self._calls: list[_CallParts] = []
        self._by_index: dict[int, _CallParts] = {}

    def add(self, chunk: AIMessageChunk) -> None:
        if chunk.tool_call_chunks:
            for part in chunk.tool_call_chunks:
                self._add_part(part)
            chunk = chunk.model_copy(
                update={"tool_call_chunks": [], "tool_calls": [], "invalid_tool_calls": []}
            )
        self._chunks.append(chunk)

    def _add_part(self, part: ToolCallChunk) -> None:
        index, call_id = part.get("index"), part.get("id") or None
        call = self._by_index.get(index) if isinstance(index, int) else None
        if call is None or (call_id and call.call_id and call_id != call.call_id):
            call = _CallParts(index, call_id)
            self._calls.append(call)
            if isinstance(index, int):
                self._by_index[index] = call
        elif call_id and not call.call_id:
            call.call_id = call_id
        if name := part.get("name"):
            call.name.append(name)
        if args := part.get("args"):
            call.args.append(args)

    def message(self) -> AIMessageChunk | None:
        """The whole turn as LangChain's sum of its chunks would be; None if the model sent nothing."""
        if not self._chunks:
            return None
        merged = add_ai_message_chunks(*self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        if not self._calls:
            return merged
        return AIMessageChunk(
            content=merged.content,
            additional_kwargs=merged.additional_kwargs,
            response_metadata=merged.response_metadata,
            usage_metadata=merged.usage_metadata,
            id=merged.id,
            chunk_position=merged.chunk_position,
            tool_call_chunks=[call.chunk() for call in self._calls],
        )


def _invalid(call: Any) -> dict[str, Any]:
    """A call whose arguments were not a JSON object: answered with an error like a failing tool."""
    return {"name": call.get("name") or "", "id": call.get("id"), "args": {}, "invalid": True}


async def _run_tool(tool: BaseTool | None, call: Any, config: RunnableConfig) -> tuple[str, str | None]:
    """(content for the model, error message or None). Never raises: a tool failure is data."""
    if call.get("invalid"):
        return "Error: the arguments were not a valid JSON object", "arguments are not valid JSON"
    if tool is None:
        return f"Error: there is no tool named {call['name']!r}", f"unknown tool {call['name']!r}"
    try:
        result = await tool.ainvoke(call["args"], config)
    except Exception as exc:  # a tool's failure is reported to the caller and the model, not raised
        log.info("tool %s failed: %s", call["name"], exc)
        message = str(exc) or type(exc).__name__
        return f"Error: {message}", message
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    return text[:MAX_RESULT_CHARS], None


def build_tool_loop(context: ChainContext, tools: Sequence[BaseTool]) -> Runnable:
    by_name = {tool.name: tool for tool in tools}
    model = context.model_with_tools(tools)
    max_rounds = context.tool_max_rounds

    async def loop(inputs: AsyncIterator[ChatInput], config: RunnableConfig) -> AsyncIterator[Any]:
        request = [item async for item in inputs][-1]
        messages: list[BaseMessage] = [
            SystemMessage(content=context.system_prompt),
            *request["history"],
            HumanMessage(content=request["question"]),
        ]
        for _ in range(max_rounds):
            parts = Turn()
            async for chunk in model.astream(messages, config):
                parts.add(chunk)
                yield chunk
            turn = parts.message()
            if turn is None or not (turn.tool_calls or turn.invalid_tool_calls):
                return
            messages.append(turn)
            calls = [*turn.tool_calls, *(_invalid(c) for c in turn.invalid_tool_calls)]
            outcomes = await asyncio.gather(
                *(_run_tool(None if c.get("invalid") else by_name.get(c["name"]), c, config) for c in calls)
            )
            for call, (content, error) in zip(calls, outcomes, strict=True):
                event: dict[str, Any] = {"type": "tool_result", "id": call["id"], "name": call["name"]}
                if error is None:
                    event["content"] = content
                else:
                    event = {**event, "type": "tool_error", "message": error}
                yield event
                messages.append(
                    ToolMessage(
                        content=content,
                        tool_call_id=call["id"] or "",
                        name=call["name"],
                        status="error" if error else "success",
                    )
                )
        raise rounds_exceeded(max_rounds)

    # RunnableGenerator passes the config to a function that takes one; its stubs do not say so.
    return RunnableGenerator(loop, name="tool_loop")  # type: ignore[arg-type]


def build_tools_chain(context: ChainContext) -> Runnable:
    return build_tool_loop(context, example_tools())


TOOLS = ChainSpec(
    name="tools",
    description="The model may call the example tools (calculator, utc_time); they run server-side.",
    build=build_tools_chain,
)
