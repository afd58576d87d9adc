"""The `tools` chain's agent: a LangChain v1 `create_agent` agent with the example tools, streamed as a
graph. Imported on the chain's first use (`chains/tools.py`): LangChain's agent stack costs about
0.35 s of import, which every cold start would otherwise pay whether or not a request uses it.

The model's chunks pass through (the runner turns `tool_call_chunks` into `tool_call_delta` /
`tool_call` events); each tool result becomes a `tool_result` (or `tool_error`) event; then the model
is called again with the results. What the hand-written loop this replaces promised still holds, by
middleware:

- a failing tool does not end the run: the model is told `Error: <message>` (status `error`) and can
  answer anyway; an unknown tool or arguments that are not a JSON object are answered the same way
  (`ToolErrors`), and a turn whose only calls had invalid arguments goes back to the model;
- results are cut to `MAX_RESULT_CHARS` before the model and the caller see them;
- at most `tool_max_rounds` model calls: a run that needs another one ends with `tool_rounds_exceeded`
  (`RoundLimit`);
- the request's options (`max_tokens`, `temperature`) reach every model call (`RequestOptions`: the
  agent is compiled once per model and prompt, ~3 ms saved per request, so options come per run).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelCallLimitMiddleware, hook_config
from langchain.agents.middleware.model_call_limit import ModelCallLimitExceededError
from langchain.agents.middleware.types import ModelRequest, ModelResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.pregel import Pregel
from langgraph.types import Command

from chains.errors import ChainFailure
from chains.example_tools import example_tools
from chains.graph import GraphChain
from chains.registry import ChainContext

log = logging.getLogger("chains.tools")

#: Longest tool result sent back to the model and shown in the `tool_result` event.
MAX_RESULT_CHARS = 4000
#: Compiled agents kept (one per deployment's model, system prompt and round limit).
_MAX_AGENTS = 32


def rounds_exceeded(rounds: int) -> ChainFailure:
    return ChainFailure(
        "tool_rounds_exceeded",
        f"the model still asked for tools after {rounds} rounds; no answer was produced",
    )


@dataclass(frozen=True)
class RunOptions:
    """The agent's runtime context: what changes per request without recompiling the agent."""

    model_options: dict[str, Any] = field(default_factory=dict)


class RoundLimit(ModelCallLimitMiddleware):
    """LangChain's per-run model-call limit, failing in our words (`tool_rounds_exceeded`)."""

    def __init__(self, rounds: int) -> None:
        super().__init__(run_limit=rounds, exit_behavior="error")
        self.rounds = rounds

    async def abefore_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        try:
            return self.before_model(state, runtime)
        except ModelCallLimitExceededError:
            raise rounds_exceeded(self.rounds) from None


def _error_message(call: dict[str, Any], content: str, reason: str) -> ToolMessage:
    """What the model reads (`content`) and what the caller's `tool_error` says (`reason`)."""
    return ToolMessage(
        content=content,
        tool_call_id=call.get("id") or "",
        name=call.get("name") or "",
        status="error",
        artifact={"error": reason},
    )


class ToolErrors(AgentMiddleware):
    """Tool failures are data for the model, never the end of the run."""

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command]],
    ) -> ToolMessage | Command:
        call = request.tool_call
        if request.tool is None:
            name = call["name"]
            return _error_message(call, f"Error: there is no tool named {name!r}", f"unknown tool {name!r}")  # type: ignore[arg-type]
        try:
            result = await handler(request)
        except Exception as exc:  # a tool's failure is reported to the caller and the model, not raised
            log.info("tool %s failed: %s", call["name"], exc)
            cause = exc.__cause__ if type(exc).__name__ == "ToolInvocationError" and exc.__cause__ else exc
            message = str(cause) or type(cause).__name__
            return _error_message(call, f"Error: {message}", message)  # type: ignore[arg-type]
        if isinstance(result, ToolMessage) and isinstance(result.content, str):
            if len(result.content) > MAX_RESULT_CHARS:
                result.content = result.content[:MAX_RESULT_CHARS]
        return result

    @hook_config(can_jump_to=["model"])
    async def aafter_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Calls whose arguments were not a JSON object get an error answer now (the agent would
        otherwise end the run on a turn with no valid call), and the model is asked again."""
        last = state["messages"][-1]
        if not isinstance(last, AIMessage) or not last.invalid_tool_calls:
            return None
        answers = [
            _error_message(
                dict(call),
                "Error: the arguments were not a valid JSON object",
                "arguments are not valid JSON",
            )
            for call in last.invalid_tool_calls
        ]
        update: dict[str, Any] = {"messages": answers}
        if not last.tool_calls:
            update["jump_to"] = "model"
        return update


class RequestOptions(AgentMiddleware):
    """The request's model options (`RunOptions.model_options`) on every model call of the run."""

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        context = request.runtime.context if request.runtime else None
        options = context.model_options if isinstance(context, RunOptions) else None
        if options:
            request = request.override(model_settings={**request.model_settings, **options})
        return await handler(request)


_agents: dict[tuple[int, str, int, tuple[str, ...]], tuple[BaseChatModel, Any]] = {}


def tools_agent(model: BaseChatModel, tools: Sequence[BaseTool], system_prompt: str, rounds: int) -> Pregel:
    """The compiled agent for this model, prompt and limit; built once (the model object is kept by the
    service per deployment, so its identity is a stable key)."""
    key = (id(model), system_prompt, rounds, tuple(t.name for t in tools))
    cached = _agents.get(key)
    if cached is not None and cached[0] is model:
        return cached[1]
    agent = create_agent(
        model,
        list(tools),
        system_prompt=system_prompt,
        middleware=[RoundLimit(rounds), ToolErrors(), RequestOptions()],  # type: ignore[list-item]
        context_schema=RunOptions,
        name="tools_agent",
    )
    if len(_agents) >= _MAX_AGENTS:
        _agents.pop(next(iter(_agents)))
    _agents[key] = (model, agent)
    return agent  # type: ignore[return-value]


def build_tool_agent(context: ChainContext, tools: Sequence[BaseTool]) -> Runnable:
    model = context.chat_model or context.model
    if not isinstance(model, BaseChatModel):
        raise TypeError("the tools chain needs ChainContext.chat_model")
    agent = tools_agent(model, tools, context.system_prompt, context.tool_max_rounds)
    return GraphChain(
        agent,
        progress=False,  # the `tools` chain's events are what they were: no per-node progress
        context=RunOptions(dict(context.model_options)),
        checkpointer=context.checkpointer,
    )


def build_tools_chain(context: ChainContext) -> Runnable:
    return build_tool_agent(context, example_tools())
