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
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator
from langchain_core.tools import BaseTool

from chains.example_tools import example_tools
from chains.registry import ChainContext, ChainSpec, ChatInput
from chatstream.errors import ChatError

log = logging.getLogger("chains.tools")

#: Longest tool result sent back to the model and shown in the `tool_result` event.
MAX_RESULT_CHARS = 4000


def rounds_exceeded(rounds: int) -> ChatError:
    return ChatError(
        502,
        "tool_rounds_exceeded",
        f"the model still asked for tools after {rounds} rounds; no answer was produced",
        retryable=False,
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
            turn: AIMessageChunk | None = None
            async for chunk in model.astream(messages, config):
                turn = chunk if turn is None else turn + chunk
                yield chunk
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

    return RunnableGenerator(loop, name="tool_loop")


def build_tools_chain(context: ChainContext) -> Runnable:
    return build_tool_loop(context, example_tools())


TOOLS = ChainSpec(
    name="tools",
    description="The model may call the example tools (calculator, utc_time); they run server-side.",
    build=build_tools_chain,
)
