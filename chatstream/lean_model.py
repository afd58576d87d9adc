"""Chat models that stream without LangChain's per-chunk bookkeeping when nobody is listening.

`BaseChatModel.astream` keeps every chunk of a stream until it ends (for `on_llm_end`) and builds each
chunk through pydantic validation; with no callback handler configured (no tracing, no
`astream_events`), nothing reads either. So when the configured callback manager has no handlers, this
mixin runs `_astream` directly, yielding the same message chunks (same ids, metadata and the final
`chunk_position="last"` chunk) while keeping none; with any handler it defers to LangChain's own
`astream`, unchanged. Plain content chunks are built without validation (their fields are exactly what
the validated path produces), and the chunks are read from the dict-chunk stream in one generator
rather than through langchain-openai's three. tests/test_lean_equivalence.py compares this
path with stock `AzureChatOpenAI.astream` chunk by chunk.

The private LangChain names used here are checked at import: if an upgrade removed one, the import
fails with ImportError and chatstream.models falls back to the stock classes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Self

import openai
from langchain_core.callbacks import AsyncCallbackManager
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models._utils import _normalize_messages
from langchain_core.language_models.chat_models import _gen_info_and_msg_metadata
from langchain_core.messages import AIMessageChunk, BaseMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_openai import AzureChatOpenAI, ChatOpenAI
from langchain_openai.chat_models.base import (
    BaseChatOpenAI,
    _handle_openai_api_error,
    _handle_openai_bad_request,
)
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
    (BaseChatOpenAI, "_get_request_payload"),
    (BaseChatOpenAI, "_should_stream_usage"),
    (BaseChatOpenAI, "_use_responses_api"),
    (BaseChatOpenAI, "_uses_gateway"),
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
        async for message in self._lean_messages(messages, stop, kwargs):
            if message.id is None:
                message.id = run_id
            last = message
            yield message  # type: ignore[misc]  # an AIMessageChunk: what the chat model's stream yields
        if isinstance(last, AIMessageChunk) and not last.chunk_position:
            yield AIMessageChunk(
                content="" if isinstance(last.content, str) else [], chunk_position="last", id=run_id
            )

    async def _lean_messages(
        self, messages: list[Any], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> AsyncIterator[BaseMessageChunk]:
        """What `_astream` yields, as messages, read straight from the dict-chunk stream: the three
        generator layers of langchain-openai's `_astream` (routing, the chunk-timeout wrapper that is a
        plain pass-through with no timeout, the chunk loop) are one here, and a plain text chunk is one
        message object, no `ChatGenerationChunk` around it. Anything `_astream` does differently (the
        Responses API, response headers, a gateway, `response_format`) takes `_astream` itself."""
        model: Any = self
        stock = (
            model.include_response_headers
            or model._uses_gateway
            or model._use_responses_api({**kwargs, **model.model_kwargs})
        )
        payload: dict[str, Any] = {}
        if not stock:
            options = dict(kwargs)
            options["stream"] = True
            stream_usage = model._should_stream_usage(options.pop("stream_usage", None), **options)
            if stream_usage:
                options["stream_options"] = {"include_usage": stream_usage}
            payload = model._get_request_payload(messages, stop=stop, **options)
            stock = "response_format" in payload or not isinstance(model.async_client, DictChunkCompletions)
        if stock:
            async for generation in model._astream(messages, stop=stop, **kwargs):
                message = generation.message
                if generation.generation_info:
                    message.response_metadata = _gen_info_and_msg_metadata(generation)
                yield message
            return
        convert = model._convert_chunk_to_generation_chunk
        chunk_class: type = AIMessageChunk
        try:
            response = await model.async_client.create(**payload)
            async with response:
                async for chunk in response:
                    message = _plain_message(chunk) if chunk_class is AIMessageChunk else None
                    if message is None:
                        generation = convert(chunk, chunk_class, {})
                        if generation is None:
                            continue
                        message = generation.message
                        chunk_class = message.__class__
                        if generation.generation_info:
                            message.response_metadata = _gen_info_and_msg_metadata(generation)
                    yield message
        except openai.BadRequestError as exc:
            _handle_openai_bad_request(exc)
        except openai.APIError as exc:
            _handle_openai_api_error(exc)

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


_new = object.__new__
_set = object.__setattr__
#: The fields `_direct_text_message` fills, in `AIMessageChunk`'s order; checked below against pydantic's own.
_MESSAGE_FIELDS = (
    "content",
    "additional_kwargs",
    "response_metadata",
    "type",
    "name",
    "id",
    "tool_calls",
    "invalid_tool_calls",
    "usage_metadata",
    "tool_call_chunks",
    "chunk_position",
)


def _direct_text_message(content: str, message_id: str | None) -> AIMessageChunk:
    """`AIMessageChunk.model_construct(...)` of a text chunk with every field given, in a quarter of
    its time (about 3 µs instead of 10 per token): the same instance state, set directly."""
    message = _new(AIMessageChunk)
    _set(
        message,
        "__dict__",
        {
            "content": content,
            "additional_kwargs": {},
            "response_metadata": {"model_provider": "openai"},
            "type": "AIMessageChunk",
            "name": None,
            "id": message_id,
            "tool_calls": [],
            "invalid_tool_calls": [],
            "usage_metadata": None,
            "tool_call_chunks": [],
            "chunk_position": None,
        },
    )
    _set(message, "__pydantic_fields_set__", {"content", "response_metadata"})
    _set(message, "__pydantic_extra__", {})
    _set(message, "__pydantic_private__", None)
    return message


def _constructed_text_message(content: str, message_id: str | None) -> AIMessageChunk:
    # Every field given: `model_construct` would otherwise evaluate each default factory, which costs
    # an `inspect.signature` call per field in pydantic 2.x (far more than validation itself).
    return AIMessageChunk.model_construct(
        {"content", "response_metadata"},
        content=content,
        additional_kwargs={},
        response_metadata={"model_provider": "openai"},
        type="AIMessageChunk",
        name=None,
        id=message_id,
        tool_calls=[],
        invalid_tool_calls=[],
        usage_metadata=None,
        tool_call_chunks=[],
        chunk_position=None,
    )


def _same_state(a: AIMessageChunk, b: AIMessageChunk) -> bool:
    return (
        a.__dict__ == b.__dict__
        and list(a.__dict__) == list(b.__dict__)
        and a.__pydantic_fields_set__ == b.__pydantic_fields_set__
        and a.__pydantic_extra__ == b.__pydantic_extra__
        and a.__pydantic_private__ == b.__pydantic_private__
    )


#: Another langchain-core or pydantic whose instances differ: they are built the documented way.
_text_message = (
    _direct_text_message
    if tuple(AIMessageChunk.model_fields) == _MESSAGE_FIELDS
    and _same_state(_direct_text_message("x", "i"), _constructed_text_message("x", "i"))
    else _constructed_text_message
)


def _text_choice(chunk: dict) -> tuple[dict, dict] | None:
    """Choice 0 and its delta when the chunk carries text alone (no usage, logprobs, tool calls or other
    role); None for anything else, which takes `_convert_chunk_to_generation_chunk`."""
    if chunk.get("usage") or chunk.get("type"):
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
    return choice, delta


def _plain_message(chunk: dict) -> AIMessageChunk | None:
    """The message `_astream` yields for a chunk of text alone that does not finish the answer."""
    found = _text_choice(chunk)
    if found is None or found[0].get("finish_reason"):
        return None
    delta = found[1]
    return _text_message(delta.get("content") or "", delta.get("id"))


def _plain_generation(
    chunk: dict, default_chunk_class: type, base_generation_info: dict | None
) -> ChatGenerationChunk | None:
    """The generation chunk for text-only chat-completion chunks, built without validation; else None."""
    found = _text_choice(chunk) if default_chunk_class is AIMessageChunk else None
    if found is None:
        return None
    choice, delta = found
    content = delta.get("content") or ""
    info = dict(base_generation_info) if base_generation_info else {}
    if finish_reason := choice.get("finish_reason"):
        info["finish_reason"] = finish_reason
        for source, target in _FINISH_KEYS:
            if value := chunk.get(source):
                info[target] = value
        if service_tier := chunk.get("service_tier"):
            info["service_tier"] = service_tier
    message = _text_message(content, delta.get("id"))
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
