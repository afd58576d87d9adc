"""OpenAI's Chat Completions API on `POST /api/v1/chat/completions` (and `GET /api/v1/models`), so the
openai SDKs, and everything built on them, work with `baseURL` pointed at the app.

The request is translated into the app's own `ChatRequest`; the event stream comes back as
`chat.completion.chunk` objects. The chains' server-side work (tool calls and results, progress,
citations) has no place in this shape and is left out: the client sees the assistant's text only, never
`tool_calls` it would be expected to run. Options the app would not honour are refused with a 400 rather
than dropped (the same rule as the native protocol's `unsupported_parameter`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstream import errors
from chatstream.encoding import SSE_DONE, SSE_HEARTBEAT
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.protocols.base import StreamEncoder
from chatstream.schema import ChatRequest, Limits

#: The app's own extension of the request: `chain` (the SDKs send it with `extra_body`).
_OWN_FIELDS = frozenset({"chain"})
#: Accepted and ignored: bookkeeping that does not change the answer or its shape.
_IGNORED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "prompt_cache_key",
        "safety_identifier",
    }
)


def _empty(value: Any) -> bool:
    return value in ([], {})


#: Options the app cannot honour, accepted only at a value that asks for nothing (null always is).
_ONLY_AT_DEFAULT: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v == 1 and not isinstance(v, bool),
    "top_p": lambda v: v == 1 and not isinstance(v, bool),
    "frequency_penalty": lambda v: v == 0 and not isinstance(v, bool),
    "presence_penalty": lambda v: v == 0 and not isinstance(v, bool),
    "logprobs": lambda v: v is False,
    "top_logprobs": lambda v: v == 0 and not isinstance(v, bool),
    "stop": _empty,
    "logit_bias": _empty,
    "tools": _empty,
    "functions": _empty,
    "tool_choice": lambda v: v in ("none", "auto"),
    "function_call": lambda v: v in ("none", "auto"),
    "response_format": lambda v: v == {"type": "text"},
    "modalities": lambda v: v == ["text"],
    "seed": lambda v: False,
    "audio": lambda v: False,
    "prediction": lambda v: False,
    "web_search_options": lambda v: False,
    "verbosity": lambda v: False,
}
#: Why a refused option is refused, where there is more to say than "not supported".
_WHY = {
    "tools": 'the app runs its own tools on the server, with "chain": "tools", and never returns '
    "tool calls to the client",
    "functions": "the app runs its own tools on the server and never returns function calls",
    "n": "one choice per request",
}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _text(content: Any, where: str) -> Any:
    """A string, or an array of text parts (joined); other parts (images, audio, files) are refused."""
    if not isinstance(content, list):
        return content
    texts: list[str] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            raise errors.unsupported_value(f"{where}[{i}]", f"only text parts are supported (got {kind!r})")
        texts.append(part["text"])
    return "".join(texts)


def _message(message: Any, i: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise errors.invalid_request(where, "must be an object")
    role = message.get("role")
    if role in ("tool", "function"):
        raise errors.unsupported_value(
            f"{where}.role",
            f"{role!r} messages are not supported: the app runs its own tools on the server, "
            'with "chain": "tools", and never returns tool calls',
        )
    if role not in _ROLES:
        raise errors.invalid_request(f"{where}.role", f"must be one of: {', '.join(_ROLES)}")
    if message.get("tool_calls") or message.get("function_call"):
        raise errors.unsupported_value(f"{where}.tool_calls", "client-side tool calls are not supported")
    content = message.get("content")
    if content is None and role == "assistant" and isinstance(message.get("refusal"), str):
        content = message["refusal"]  # an earlier refusal, sent back as history
    return {"role": _ROLES[role], "content": _text(content, f"{where}.content")}


class OpenAIChatRequest(ChatRequest):
    """The app's request plus what only this protocol's encoder needs."""

    include_usage: bool = False


def parse_request(body: bytes, limits: Limits, allowed_models: list[str]) -> OpenAIChatRequest:
    """The Chat Completions body as the app's request; 400 (404 for an unknown `model`) otherwise."""
    try:
        data = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise errors.invalid_json(str(exc)) from None
    if data is None:
        raise errors.invalid_json("the body is empty")
    if not isinstance(data, dict):
        raise errors.invalid_request("body", "must be a JSON object")
    request: dict[str, Any] = {}
    for name, value in data.items():
        if name in _IGNORED or name in ("model", "messages", "stream", "stream_options"):
            continue
        if name in _ONLY_AT_DEFAULT:
            if value is not None and not _ONLY_AT_DEFAULT[name](value):
                raise errors.option_not_honoured(name, _WHY.get(name, "this API does not honour it"))
        elif name in ("max_tokens", "max_completion_tokens", "temperature", "reasoning_effort"):
            if value is not None:
                request[name] = value
        elif name in _OWN_FIELDS:
            request[name] = value
        else:
            raise errors.invalid_request(name, "unrecognized request argument (not a Chat Completions field)")
    if "max_completion_tokens" in request:
        limit = request.pop("max_completion_tokens")
        if request.get("max_tokens", limit) != limit:
            raise errors.invalid_request("max_tokens", "send max_tokens or max_completion_tokens, not both")
        request["max_tokens"] = limit
    model = data.get("model")
    if model is not None:
        if not isinstance(model, str) or not model:
            raise errors.invalid_request("model", "must be a non-empty string")
        if model not in allowed_models:
            raise errors.model_not_found(model)
        request["deployments"] = [model]
    stream = data.get("stream")
    request["stream"] = False if stream is None else stream
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise errors.invalid_request("stream_options", "must be an object")
        request["include_usage"] = options.get("include_usage") is True
    messages = data.get("messages")
    if isinstance(messages, list):
        request["messages"] = [_message(m, i) for i, m in enumerate(messages)]
    elif messages is None:
        raise errors.invalid_request("messages", "at least one message is required")
    else:
        request["messages"] = messages  # the schema names the problem
    try:
        return OpenAIChatRequest.model_validate(request, strict=True, context={"limits": limits})
    except ValidationError as exc:
        error = errors.from_validation_error(exc)
        if error.param == "max_tokens" and "max_completion_tokens" in data and "max_tokens" not in data:
            # Name the field the caller sent.
            error.param = "max_completion_tokens"
            error.message = error.message.replace("max_tokens", "max_completion_tokens")
        raise error from None


def error_type(status: int) -> str:
    """OpenAI's `type` for an HTTP status (the SDKs pick their exception class by status, not by this)."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(message: str, status: int, code: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_response(error: ChatError, headers: Mapping[str, str]) -> JSONResponse:
    """OpenAI's error shape; `x-should-retry` tells the SDKs (which retry 429 and 5xx by themselves)
    whether this one is worth retrying."""
    return JSONResponse(
        error_body(error.message, error.status, error.code, error.param),
        status_code=error.status,
        headers={**error.headers, **headers, "x-should-retry": "true" if error.retryable else "false"},
    )


_FINISH_REASONS = frozenset({"stop", "length", "content_filter"})


def finish_reason(reason: str | None) -> str:
    """The chains' own tool rounds ended before the answer did, so `tool_calls` never reaches the
    client: it would wait for calls it was never sent."""
    return reason if reason in _FINISH_REASONS else "stop"


def usage_body(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    body: dict[str, Any] = {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
    }
    if "reasoning_tokens" in usage:
        body["completion_tokens_details"] = {"reasoning_tokens": usage["reasoning_tokens"]}
    return body


_DELTA_SUFFIX = b'},"finish_reason":null}]}\n\n'


class ChunkEncoder:
    """Events to `chat.completion.chunk` SSE events: one per text delta, a finish chunk, the usage chunk
    when asked for, `[DONE]`. A failure after the start is OpenAI's in-stream error, `data: {"error":
    {...}}`, with no `[DONE]` after it (both SDKs raise `APIError` on it)."""

    media_type = "text/event-stream"
    heartbeat = SSE_HEARTBEAT  # a comment line: both SDKs' SSE decoders skip it
    headers: Mapping[str, str] = {}

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.failed = False
        self.filtered = False
        self._head: dict[str, Any] = {
            "id": "chatcmpl-",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "",
        }
        self._content_prefix = b""

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**self._head, "choices": choices, **extra}) + b"\n\n"

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": None}])

    def encode(self, event: Event) -> bytes:
        kind = event["type"]
        if kind == "delta":  # the hot path: a prefix built once, one string encoded
            return self._content_prefix + orjson.dumps(event["delta_content"]) + _DELTA_SUFFIX
        if self.failed:
            return b""
        if kind == "start":
            self._head.update(
                id=f"chatcmpl-{event['id']}", created=event["created"], model=event["deployment"]
            )
            self._content_prefix = (
                b"data: " + orjson.dumps(self._head)[:-1] + b',"choices":[{"index":0,"delta":{"content":'
            )
            return self._delta({"role": "assistant", "content": ""})
        if kind == "refusal":
            return self._delta({"refusal": event["refusal"]})
        if kind == "error":
            if event["code"] == "content_filter":  # OpenAI's way: finish_reason says it, no error
                self.filtered = True
                return b""
            self.failed = True
            status = 429 if event["code"] == "rate_limited" else 500
            return (
                b"data: " + orjson.dumps(error_body(event["message"], status, event["code"], None)) + b"\n\n"
            )
        if kind == "end":
            reason = "content_filter" if self.filtered else finish_reason(event["finish_reason"])
            out = self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}])
            if self.include_usage:
                out += self._chunk([], usage=usage_body(event["usage"]))
            return out
        return b""  # tool calls and results, progress, citations: the server's own business

    def close(self) -> bytes:
        return b"" if self.failed else SSE_DONE


class OpenAIProtocol:
    """`allowed_models`: the deployments a request may name as `model` (the first is the default)."""

    name = "openai"

    def __init__(self, allowed_models: list[str]) -> None:
        self.allowed_models = allowed_models

    def claims(self, body: bytes) -> bool:
        return True  # its own route only

    def parse(self, body: bytes, limits: Limits) -> ChatRequest:
        return parse_request(body, limits, self.allowed_models)

    def encoder(self, request: Request, chat: ChatRequest) -> StreamEncoder:
        """Always SSE: the SDKs send `Accept: application/json` on streamed requests too."""
        return ChunkEncoder(isinstance(chat, OpenAIChatRequest) and chat.include_usage)

    def answer_response(
        self, answer: dict[str, Any], request: ChatRequest, headers: dict[str, str]
    ) -> Response:
        """A `chat.completion`; a refusal is `message.refusal` with `content` null, as OpenAI sends it."""
        refusals = [e["refusal"] for e in answer.get("events", ()) if e.get("type") == "refusal"]
        refusal = "".join(refusals) or None
        content = answer["content"] or (None if refusal else "")
        completion = {
            "id": f"chatcmpl-{answer['id']}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answer["deployment"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "logprobs": None,
                    "finish_reason": finish_reason(answer["finish_reason"]),
                }
            ],
            "usage": usage_body(answer["usage"]),
        }
        return JSONResponse(completion, headers=headers)

    def error_response(self, error: ChatError, headers: dict[str, str]) -> Response:
        return error_response(error, headers)

    def models_response(self, headers: Mapping[str, str]) -> Response:
        """`GET /v1/models`: the deployments a request may name, in OpenAI's list shape."""
        return JSONResponse(
            {"object": "list", "data": [_model(name) for name in self.allowed_models]}, headers=headers
        )

    def model_response(self, name: str, headers: Mapping[str, str]) -> Response:
        """`GET /v1/models/{model}`: one of them, or 404 `model_not_found`."""
        if name not in self.allowed_models:
            return error_response(errors.model_not_found(name), headers)
        return JSONResponse(_model(name), headers=headers)


def _model(name: str) -> dict[str, Any]:
    # `created` is unknown for a deployment; 0 rather than a made-up date.
    return {"id": name, "object": "model", "created": 0, "owned_by": "system"}
