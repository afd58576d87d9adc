"""`LeanSequence`: a `RunnableSequence` whose `astream` skips the sequence's own per-chunk work when
nobody listens.

`RunnableSequence.astream` wraps every chunk of its last step in a new task (to carry the context) and
adds it to a running total (`final_output + chunk`, a new merged message per token, for `on_chain_end`).
With no callback handler configured, nothing reads that total. A sequence of prompts followed by one
streaming step then streams exactly the same chunks by invoking the prompts and streaming the last
step directly. Anything else (callbacks, tracing, other shapes, extra kwargs) takes LangChain's path,
and so does a sequence ending in LangChain's stock model (`CHAT_LEAN_STREAMING=false`, or the fallback
when the fast path cannot load): the model says whether it is lean (`lean_streaming`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManager
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableSequence, ensure_config


def nobody_listens(config: RunnableConfig) -> bool:
    """No callback handler (tracer, `astream_events`, user callbacks) would see this run."""
    manager = AsyncCallbackManager.configure(config.get("callbacks"), None, False, config.get("tags"))
    return not manager.handlers


async def _format(prompt: BasePromptTemplate, value: Any, config: RunnableConfig) -> Any:
    """`prompt.ainvoke` without its run setup (a tenth of a millisecond per request): with nobody
    listening, a dict holding every variable formats to the same prompt value. Anything else goes
    through `ainvoke`, which reports a missing variable the way LangChain does."""
    if isinstance(value, dict) and all(name in value for name in prompt.input_variables):
        return await prompt.aformat_prompt(**value)
    return await prompt.ainvoke(value, config)


def streams_lean(step: Any) -> bool:
    """The step is the app's lean chat model (chatstream.lean_model), bound or not: a binding hands
    attribute reads to the model it wraps."""
    return getattr(step, "lean_streaming", False) is True


class LeanSequence(RunnableSequence):
    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> AsyncIterator[Any]:
        config = ensure_config(config)
        *head, last = self.steps
        prompts_first = all(isinstance(step, BasePromptTemplate) for step in head)
        if kwargs or not prompts_first or not streams_lean(last) or not nobody_listens(config):
            async for chunk in super().astream(input, config, **kwargs):
                yield chunk
            return
        # The sequence's own run name and id are not the children's (as in RunnableSequence).
        child: RunnableConfig = {k: v for k, v in config.items() if k not in ("run_name", "run_id")}  # type: ignore
        value = input
        for step in head:
            value = await _format(step, value, child)  # type: ignore[arg-type]
        async for chunk in last.astream(value, child):
            yield chunk
