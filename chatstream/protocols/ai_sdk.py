"""The Vercel AI SDK's UI message stream (`useChat` / `DefaultChatTransport`) on `POST /api/chat`.

Chosen by the body: the AI SDK sends `{"id", "messages": [{"id", "role", "parts": [...]}], "trigger"}`,
a shape the app's own protocol rejects, so claiming it breaks no native caller. The UI messages become
a `ChatRequest` (text parts only) and the events become UI message chunks as SSE `data:` lines, ending
with `data: [DONE]` (docs/clients/ai-sdk.md has the mapping). Pure: bytes in, bytes out.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstream import errors
from chatstream.encoding import SSE_DONE, SSE_HEARTBEAT
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.protocols import native
from chatstream.schema import ChatRequest, Limits

#: The header the AI SDK's own servers send with a UI message stream.
UI_MESSAGE_STREAM_HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}

#: Request options of ours a caller may add to the AI SDK body (`DefaultChatTransport({body})` or
#: `sendMessage(message, {body})`); they mean what they mean in the native request. Besides these,
#: `deployment` names one allowed deployment (the native `deployments`, with one name).
OPTIONS = ("chain", "max_tokens", "temperature", "reasoning_effort", "resumable", "fallback_deployments")

#: Native `finish_reason` -> the AI SDK's `finishReason`.
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
    "error": "error",
}

#: Where the extras of a part (citation number, refusal) go: the only part field the SDK keeps as is.
METADATA_KEY = "chatstream"


class _Part(BaseModel):
    """One part of a UI message; only `type` and a text part's `text` matter here."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    text: str | None = None


class _UIMessage(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    role: Literal["system", "user", "assistant"]
    parts: list[_Part]


class _Body(BaseModel):
    """The transport's body plus our options. Other fields are ignored, unlike in the native request:
    the SDK adds fields of its own from version to version, and one more must not turn into a 400."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str | None = None
    messages: list[_UIMessage] = Field(min_length=1)
    trigger: Literal["submit-message", "regenerate-message"] | None = None
    messageId: str | None = None
    chain: Any = None
    deployment: Any = None
    #: Refused rather than ignored: several deployments answering cannot be one UI message.
    deployments: Any = None
    max_tokens: Any = None
    temperature: Any = None
    reasoning_effort: Any = None
    resumable: Any = None
    fallback_deployments: Any = None


def claims(body: bytes) -> bool:
    """`trigger` at the top, or `parts` in a message. A byte search first, so native bodies (which
    have neither key) are not parsed twice."""
    if b'"trigger"' not in body and b'"parts"' not in body:
        return False
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(data, dict):
        return False
    if "trigger" in data:
        return True
    messages = data.get("messages")
    return isinstance(messages, list) and any(isinstance(m, dict) and "parts" in m for m in messages)


def _text_of(index: int, message: _UIMessage) -> str:
    """The message's text parts, joined by blank lines. Files cannot be sent to the chains (400);
    everything else (tool calls, sources, reasoning, data parts) is display state and left out."""
    texts: list[str] = []
    for number, part in enumerate(message.parts):
        if part.type == "text":
            if part.text:
                texts.append(part.text)
        elif part.type == "file" and message.role != "assistant":
            raise errors.unsupported_value(
                f"messages[{index}].parts[{number}]", "file parts are not supported; send text parts only"
            )
    return "\n\n".join(texts)


#: A native request's field -> the AI SDK body's: message content is in parts, one deployment is named.
_NATIVE_PARAM = re.compile(r"^messages\[(\d+)\]\.content|^deployments(?:\[0\])?")


def as_sent(error: ChatError, origin: list[int] | None = None) -> ChatError:
    """A native error about `messages[k].content` or `deployments` said about the field the caller
    sent: the k-th translated message's UI message (`origin[k]`), `deployment`."""
    if error.param is None:
        return error
    match = _NATIVE_PARAM.match(error.param)
    if match is None:
        return error
    if match.group(1) is None:
        param = "deployment" + error.param[match.end() :]
    elif origin is None:
        return error
    else:
        param = f"messages[{origin[int(match.group(1))]}].parts" + error.param[match.end() :]
    message = error.message
    if message.startswith(error.param):
        message = param + message[len(error.param) :]
    return dataclasses.replace(error, param=param, message=message)


def parse_request(body: bytes, limits: Limits) -> ChatRequest:
    """UI messages -> native messages (text only; assistant messages without text are dropped), then
    the native validation, so every limit and rule is the same and errors name the AI SDK's fields."""
    if not body.strip():
        raise errors.invalid_json("the body is empty")
    try:
        envelope = _Body.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise errors.from_validation_error(exc) from None
    if "deployments" in envelope.model_fields_set:
        raise errors.option_not_honoured(
            "deployments", "a UI message stream carries one answer (send `deployment` with one name)"
        )
    messages: list[dict[str, str]] = []
    origin: list[int] = []
    for index, message in enumerate(envelope.messages):
        text = _text_of(index, message)
        if text:
            messages.append({"role": message.role, "content": text})
            origin.append(index)
        elif message.role != "assistant":
            raise errors.invalid_request(f"messages[{index}].parts", "no text part with text")
    native_body: dict[str, Any] = {"messages": messages}
    native_body.update(
        (name, getattr(envelope, name)) for name in OPTIONS if name in envelope.model_fields_set
    )
    if envelope.deployment is not None:
        native_body["deployments"] = [envelope.deployment]
    try:
        request = native.parse_request(orjson.dumps(native_body), limits)
    except ChatError as error:
        raise as_sent(error, origin) from None
    # The chat id: the SDK's `resumeStream` asks for the chat's running stream by it.
    request.set_resume_alias(envelope.id)
    return request


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _json(value: str) -> Any:
    """Tool arguments as JSON when they are JSON (they should be); the raw string otherwise."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _source(citation: dict[str, Any]) -> bytes:
    """A citation as a `source-document`: `sourceId` is its number, which the answer cites as `[n]`."""
    source = str(citation.get("source") or "")
    chunk: dict[str, Any] = {
        "type": "source-document",
        "sourceId": str(citation.get("number")),
        "mediaType": mimetypes.guess_type(source)[0] or "text/plain",
        "title": str(citation.get("title") or source),
        "providerMetadata": {
            METADATA_KEY: {k: citation[k] for k in ("number", "id", "score") if citation.get(k) is not None}
        },
    }
    if source:
        chunk["filename"] = source
    return _sse(chunk)


@dataclasses.dataclass
class _Call:
    native_id: str | None
    ui_id: str
    name: str


class UIMessageStreamEncoder:
    """Native events -> UI message chunks for one response. Keeps the open text part and the tool
    calls in flight, since the SDK wants ids on every chunk where the native events use an index."""

    media_type = "text/event-stream"
    #: An SSE comment: the SDK's parser (eventsource-parser) drops comment lines.
    heartbeat = SSE_HEARTBEAT
    headers = UI_MESSAGE_STREAM_HEADERS

    def __init__(self) -> None:
        #: The bytes that start a `text-delta` of the open text part; None when no text part is open.
        self._delta_prefix: bytes | None = None
        self._text_id = ""
        self._refusal = False
        self._parts = 0
        #: Tool calls whose arguments are streaming, by the model's index.
        self._streaming: dict[int, _Call] = {}
        #: Tool calls the model finished, waiting for their result.
        self._waiting: list[_Call] = []

    def _next_id(self, kind: str) -> str:
        self._parts += 1
        return f"{kind}-{self._parts}"

    def _open_text(self, refusal: bool) -> bytes:
        self._text_id = self._next_id("text")
        self._refusal = refusal
        self._delta_prefix = b'data: {"type":"text-delta","id":' + orjson.dumps(self._text_id) + b',"delta":'
        start: dict[str, Any] = {"type": "text-start", "id": self._text_id}
        if refusal:
            start["providerMetadata"] = {METADATA_KEY: {"refusal": True}}
        return _sse(start)

    def _close_text(self) -> bytes:
        if self._delta_prefix is None:
            return b""
        self._delta_prefix = None
        return _sse({"type": "text-end", "id": self._text_id})

    def _text(self, text: str, refusal: bool) -> bytes:
        if not text:
            return b""
        prefix = self._delta_prefix
        if prefix is not None and self._refusal is refusal:
            return prefix + orjson.dumps(text) + b"}\n\n"
        opened = self._close_text() + self._open_text(refusal)
        assert self._delta_prefix is not None
        return opened + self._delta_prefix + orjson.dumps(text) + b"}\n\n"

    def encode(self, event: Event) -> bytes:
        kind = event["type"]
        if kind == "delta":  # the per-token path: one orjson call on the text
            return self._text(event["delta_content"], False)
        if kind == "refusal":
            return self._text(event["refusal"], True)
        if kind == "done":  # several deployments: never in this protocol (one deployment at most)
            return b""
        closed = self._close_text()
        handler = _HANDLERS.get(kind)
        return closed + (handler(self, event) if handler else self._data(event))

    def close(self) -> bytes:
        return self._close_text() + SSE_DONE

    # -- one method per native event type -------------------------------------------------------

    def _start(self, event: Event) -> bytes:
        metadata = {"chain": event.get("chain"), "deployment": event.get("deployment")}
        if event.get("fallback_from"):
            metadata["fallback_from"] = event["fallback_from"]
        return _sse({"type": "start", "messageId": event["id"], "messageMetadata": metadata}) + _sse(
            {"type": "start-step"}
        )

    def _end(self, event: Event) -> bytes:
        finish: dict[str, Any] = {"type": "finish"}
        reason = event.get("finish_reason")
        if reason is not None:
            finish["finishReason"] = FINISH_REASONS.get(reason, "other")
        finish["messageMetadata"] = {
            "usage": event.get("usage"),
            "model": event.get("model"),
            "deployment": event.get("deployment"),
            "finish_reason": reason,
        }
        return _sse({"type": "finish-step"}) + _sse(finish)

    def _error(self, event: Event) -> bytes:
        """The code and `retryable` go into the message's metadata first: `Chat` stops reading at an
        `error` chunk and keeps only its `errorText` (the message, written for people)."""
        error = {k: event[k] for k in ("code", "message", "retryable", "retry_after") if k in event}
        return _sse({"type": "message-metadata", "messageMetadata": {"error": error}}) + _sse(
            {"type": "error", "errorText": event["message"]}
        )

    def _tool_call_delta(self, event: Event) -> bytes:
        index = event["index"]
        call = self._streaming.get(index)
        out = b""
        if call is None or (event["id"] and call.native_id and event["id"] != call.native_id):
            call = _Call(event["id"], event["id"] or self._next_id("call"), event["name"] or "")
            self._streaming[index] = call
            out = _sse({"type": "tool-input-start", "toolCallId": call.ui_id, "toolName": call.name})
        if event["arguments_delta"]:
            out += _sse(
                {
                    "type": "tool-input-delta",
                    "toolCallId": call.ui_id,
                    "inputTextDelta": event["arguments_delta"],
                }
            )
        return out

    def _tool_call(self, event: Event) -> bytes:
        call = self._streaming.pop(event["index"], None)
        if call is None or (event["id"] and call.native_id and event["id"] != call.native_id):
            call = _Call(event["id"], event["id"] or self._next_id("call"), "")
        call.name = event["name"] or call.name
        self._waiting.append(call)
        return _sse(
            {
                "type": "tool-input-available",
                "toolCallId": call.ui_id,
                "toolName": call.name,
                "input": _json(event["arguments"]),
            }
        )

    def _result_call(self, event: Event) -> tuple[bytes, str]:
        """The call a result answers (by the model's id, else the oldest without one); a result for a
        call never announced gets its `tool-input-available` first, since the SDK throws otherwise."""
        native_id = event.get("id")
        for position, call in enumerate(self._waiting):
            if call.native_id == native_id:
                del self._waiting[position]
                return b"", call.ui_id
        ui_id = native_id or self._next_id("call")
        announce = {"type": "tool-input-available", "toolCallId": ui_id, "toolName": event.get("name") or ""}
        return _sse({**announce, "input": None}), ui_id

    def _tool_result(self, event: Event) -> bytes:
        before, ui_id = self._result_call(event)
        return before + _sse(
            {"type": "tool-output-available", "toolCallId": ui_id, "output": event["content"]}
        )

    def _tool_error(self, event: Event) -> bytes:
        before, ui_id = self._result_call(event)
        return before + _sse(
            {"type": "tool-output-error", "toolCallId": ui_id, "errorText": event["message"]}
        )

    def _progress(self, event: Event) -> bytes:
        """One `data-progress` part, updated in place (same id): the stage the answer is at."""
        data = {k: v for k, v in event.items() if k not in ("type", "deployment")}
        return _sse({"type": "data-progress", "id": "progress", "data": data})

    def _citations(self, event: Event) -> bytes:
        return b"".join(_source(citation) for citation in event.get("citations") or ())

    def _data(self, event: Event) -> bytes:
        """Any other chain event as a `data-<type>` part, so nothing a chain says is lost."""
        data = {k: v for k, v in event.items() if k != "type"}
        return _sse({"type": f"data-{event['type']}", "data": data})


_HANDLERS = {
    "start": UIMessageStreamEncoder._start,
    "end": UIMessageStreamEncoder._end,
    "error": UIMessageStreamEncoder._error,
    "tool_call_delta": UIMessageStreamEncoder._tool_call_delta,
    "tool_call": UIMessageStreamEncoder._tool_call,
    "tool_result": UIMessageStreamEncoder._tool_result,
    "tool_error": UIMessageStreamEncoder._tool_error,
    "progress": UIMessageStreamEncoder._progress,
    "citations": UIMessageStreamEncoder._citations,
}


class AiSdkProtocol:
    name = "ai-sdk"

    def claims(self, body: bytes) -> bool:
        return claims(body)

    def parse(self, body: bytes, limits: Limits) -> ChatRequest:
        return parse_request(body, limits)

    def encoder(self, request: Request, chat: ChatRequest) -> UIMessageStreamEncoder:
        """Always SSE: the transport sends no `Accept` and reads nothing else."""
        return UIMessageStreamEncoder()

    def resume_encoder(self, request: Request, first_id: int) -> UIMessageStreamEncoder:
        """A resumed UI message stream is always replayed from its start (`first_id` is 0): the SDK's
        `resumeStream` rebuilds the message from the whole stream."""
        return UIMessageStreamEncoder()

    def answer_response(
        self, answer: dict[str, Any], request: ChatRequest, headers: dict[str, str]
    ) -> Response:
        """Not reached: the AI SDK body has no `stream` field, so its requests always stream."""
        return JSONResponse(answer, headers=headers)

    def error_response(self, error: ChatError, headers: dict[str, str]) -> Response:
        """The native JSON error body (`param` as the AI SDK body names it). The transport throws
        `new Error(await response.text())`, so `chat.error.message` is this JSON: readable, and
        parseable for its `code` and `retryable` (the status itself does not reach the page)."""
        if error.code == "unknown_deployment":  # the service's check, after `parse`
            error = as_sent(error)
        return native.error_response(error, headers)


AI_SDK = AiSdkProtocol()
