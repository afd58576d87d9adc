"""Chat models that stream without LangChain's per-chunk bookkeeping when nobody is listening.

`BaseChatModel.astream` keeps every chunk of a stream until it ends (for `on_llm_end`) and builds each
chunk through pydantic validation; with no callback handler configured (no tracing, no
`astream_events`), nothing reads either. So when the configured callback manager has no handlers, this
mixin runs `_astream` directly, yielding the same message chunks (same ids, metadata and the final
`chunk_position="last"` chunk) while keeping none; with any handler it defers to LangChain's own
`astream`, unchanged. Plain content chunks are built with `model_construct` (no validation: their
fields are exactly what the validated path produces). tests/test_lean_equivalence.py compares this
path with stock `AzureChatOpenAI.astream` chunk by chunk.

The private LangChain names used here are checked at import: if an upgrade removed one, the import
fails with ImportError and chatstream.models falls back to the stock classes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Self

from langchain_core.callbacks import AsyncCallbackManager
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models._utils import _normalize_messages
from langchain_core.language_models.chat_models import _gen_info_and_msg_metadata
from langchain_core.messages import AIMessageChunk, BaseMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_openai import AzureChatOpenAI, ChatOpenAI
from langchain_openai.chat_models.base import BaseChatOpenAI
from pydantic import model_validator

from chatstream.chunk_stream import DictChunkCompletions

_LC_ID_PREFIX = "lc_run-"
_FINISH_KEYS = (("model", "model_name"), ("system_fingerprint", "system_fingerprint"))
#: Keyword arguments `with_structured_output` binds for tracing only: stock `astream` pops them before
#: `_astream` (which would send them to the API).
_TRACING_ONLY_KWARGS = ("ls_structured_output_format", "structured_output_format")

for _owner, _name in (
    (BaseChatOpenAI, "_convert_chunk_to_generation_chunk"),
    (BaseChatOpenAI, "_astream"),
    (BaseChatOpenAI, "_convert_input"),
):
    if not hasattr(_owner, _name):
        raise ImportError(f"{_owner.__name__}.{_name} is missing")


class LeanStreamingMixin:
    """Mixed into a langchain-openai chat model class (before it in the bases)."""

    #: Read by chains.lean.LeanSequence: only a lean model's sequence takes the lean path too.
    lean_streaming: ClassVar[bool] = True

    def _install_dict_client(self) -> None:
        """Swap the SDK's completions resource for one that yields plain dict chunks."""
        client: Any = getattr(self, "async_client", None)
        if client is not None and not isinstance(client, DictChunkCompletions):
            coalesce = bool(getattr(self, "coalesce_deltas", True))
            self.async_client = DictChunkCompletions(client, coalesce)

    def _nobody_listens(self, config: RunnableConfig) -> bool:
        model: Any = self
        if model.rate_limiter is not None or model.output_version == "v1" or model.disable_streaming:
            return False
        manager = AsyncCallbackManager.configure(
            config.get("callbacks"), model.callbacks, model.verbose, config.get("tags"), model.tags
        )
        return not manager.handlers

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        model: Any = self
        config = ensure_config(config)
        if not self._nobody_listens(config):
            async for chunk in super().astream(input, config, stop=stop, **kwargs):  # type: ignore[misc]
                yield chunk
            return
        for name in _TRACING_ONLY_KWARGS:
            kwargs.pop(name, None)
        messages = _normalize_messages(model._convert_input(input).to_messages())
        run_id = f"{_LC_ID_PREFIX}-{config.get('run_id') or uuid.uuid4()}"
        last: BaseMessageChunk | None = None
        async for generation in model._astream(messages, stop=stop, **kwargs):
            message = generation.message
            if message.id is None:
                message.id = run_id
            if generation.generation_info:
                message.response_metadata = _gen_info_and_msg_metadata(generation)
            last = message
            yield message
        if isinstance(last, AIMessageChunk) and not last.chunk_position:
            yield AIMessageChunk(
                content="" if isinstance(last.content, str) else [], chunk_position="last", id=run_id
            )

    def _convert_chunk_to_generation_chunk(
        self, chunk: dict, default_chunk_class: type, base_generation_info: dict | None
    ) -> ChatGenerationChunk | None:
        fast = _plain_generation(chunk, default_chunk_class, base_generation_info)
        if fast is not None:
            return fast
        generation = super()._convert_chunk_to_generation_chunk(  # type: ignore[misc]
            chunk, default_chunk_class, base_generation_info
        )
        refusal = _refusal(chunk)
        if refusal and generation is not None:
            generation.message.additional_kwargs["refusal"] = refusal
        return generation


def _refusal(chunk: dict) -> str | None:
    choices = chunk.get("choices") or ()
    delta = choices[0].get("delta") if choices else None
    value = delta.get("refusal") if delta else None
    return value if isinstance(value, str) and value else None


def _plain_generation(
    chunk: dict, default_chunk_class: type, base_generation_info: dict | None
) -> ChatGenerationChunk | None:
    """The generation chunk for text-only chat-completion chunks, built without validation; else None."""
    if default_chunk_class is not AIMessageChunk or chunk.get("usage") or chunk.get("type"):
        return None
    choices = chunk.get("choices")
    if not choices:
        return None
    choice = choices[0]
    delta = choice.get("delta")
    if not delta or choice.get("logprobs"):
        return None
    for key, value in delta.items():
        if key not in ("content", "role") and value is not None:
            return None
    if delta.get("role") not in (None, "assistant"):
        return None
    content = delta.get("content") or ""
    info = dict(base_generation_info) if base_generation_info else {}
    if finish_reason := choice.get("finish_reason"):
        info["finish_reason"] = finish_reason
        for source, target in _FINISH_KEYS:
            if value := chunk.get(source):
                info[target] = value
        if service_tier := chunk.get("service_tier"):
            info["service_tier"] = service_tier
    # Every field given: `model_construct` would otherwise evaluate each default factory, which costs
    # an `inspect.signature` call per field in pydantic 2.x (far more than validation itself).
    message = AIMessageChunk.model_construct(
        {"content", "response_metadata"},
        content=content,
        additional_kwargs={},
        response_metadata={"model_provider": "openai"},
        type="AIMessageChunk",
        name=None,
        id=delta.get("id"),
        tool_calls=[],
        invalid_tool_calls=[],
        usage_metadata=None,
        tool_call_chunks=[],
        chunk_position=None,
    )
    return ChatGenerationChunk.model_construct(
        {"message", "text"},
        text=content,
        generation_info=info or None,
        type="ChatGenerationChunk",
        message=message,
    )


class LeanAzureChatOpenAI(LeanStreamingMixin, AzureChatOpenAI):
    #: Merge content chunks that arrived in one network read into one chunk (never waits for more).
    coalesce_deltas: bool = True

    @model_validator(mode="after")
    def _dict_client(self) -> Self:
        self._install_dict_client()
        return self


class LeanChatOpenAI(LeanStreamingMixin, ChatOpenAI):
    coalesce_deltas: bool = True

    @model_validator(mode="after")
    def _dict_client(self) -> Self:
        self._install_dict_client()
        return self
