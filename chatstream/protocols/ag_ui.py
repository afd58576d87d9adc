"""AG-UI (`POST /api/ag-ui`): a `RunAgentInput` in, AG-UI events out as SSE, for `HttpAgent` and the
frontends built on it (docs/clients/ag-ui.md has the mapping table).

The request's text turns become the chat request; the server runs its own tools, so the frontend's
`tools` are not offered to the model, and tool calls and results from earlier runs are left out of the
conversation (the server re-runs its tools as needed). Options travel in `forwardedProps`. A run ends
with exactly one `RUN_FINISHED` or `RUN_ERROR`; there is no `[DONE]`. Events carry only the fields of
the AG-UI schema (the client strips and warns about any other), extra detail goes in `metadata`.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstream import encoding, errors
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.schema import ChatRequest, Limits

#: The AG-UI version whose event schema this module follows (`@ag-ui/core` 1.0).
PROTOCOL_VERSION = "1.0"

#: `forwardedProps` keys that are our options; any other key is the application's and ignored.
FORWARDED_OPTIONS = ("chain", "max_tokens", "temperature", "reasoning_effort")

#: Where a `ChatRequest` field came from in the AG-UI body, for error `param`s.
_PARAM_NAMES = {option: f"forwardedProps.{option}" for option in FORWARDED_OPTIONS} | {
    "deployments": "forwardedProps.deployment"
}
_MESSAGE_PARAM = re.compile(r"^messages\[(\d+)\]")


class _Context(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    description: str
    value: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    role: str
    content: Any = None


class RunAgentInput(BaseModel):
    """The fields we read; AG-UI's others (`state`, `resume`, `parentRunId`, ...) are accepted and unused,
    and unknown ones ignored, so a newer client's additions do not break it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    thread_id: str = Field(alias="threadId", min_length=1)
    run_id: str = Field(alias="runId", min_length=1)
    messages: list[_Message]
    tools: list[Any] = Field(default_factory=list)
    context: list[_Context] = Field(default_factory=list)
    forwarded_props: Any = Field(None, alias="forwardedProps")


class AgUiChatRequest(ChatRequest):
    """The chat request plus the ids every run event echoes. AG-UI's `threadId` names the client's
    conversation, whose whole history the client sends each run: it is echoed, not used as a server-side
    conversation thread (`ChatRequest.thread_id`)."""

    ag_ui_thread_id: str
    run_id: str


def _text(content: Any, param: str) -> str:
    """String content, or the text of a list of parts (AG-UI's `contentToText`); other media: a 400."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise errors.invalid_request(param, "only text content is supported")
            texts.append(part["text"])
        return "".join(texts)
    raise errors.invalid_request(param, "must be a string or a list of text parts")


def _conversation(run: RunAgentInput) -> tuple[list[dict[str, str]], list[int | None]]:
    """Our messages, and for each the index of the AG-UI message it came from (None: the context).

    user -> user; system and developer -> system; assistant -> assistant when it has text (a turn of
    only tool calls is left out); tool, activity and reasoning messages are left out.
    """
    messages: list[dict[str, str]] = []
    origins: list[int | None] = []
    if run.context:
        lines = "\n".join(f"{item.description}: {item.value}" for item in run.context)
        messages.append({"role": "system", "content": f"Context from the application:\n{lines}"})
        origins.append(None)
    for index, message in enumerate(run.messages):
        param = f"messages[{index}].content"
        if message.role == "user":
            messages.append({"role": "user", "content": _text(message.content, param)})
        elif message.role in ("system", "developer"):
            messages.append({"role": "system", "content": _text(message.content, param)})
        elif message.role == "assistant":
            text = "" if message.content is None else _text(message.content, param)
            if not text:
                continue
            messages.append({"role": "assistant", "content": text})
        elif message.role in ("tool", "activity", "reasoning"):
            continue
        else:
            raise errors.invalid_request(f"messages[{index}].role", f"{message.role!r} is not an AG-UI role")
        origins.append(index)
    return messages, origins


def _options(forwarded: Any) -> dict[str, Any]:
    if forwarded is None:
        return {}
    if not isinstance(forwarded, dict):
        raise errors.invalid_request("forwardedProps", "must be an object")
    options = {key: forwarded[key] for key in FORWARDED_OPTIONS if key in forwarded}
    if "deployment" in forwarded:
        options["deployments"] = [forwarded["deployment"]]
    return options


def _with_param(error: ChatError, param: str | None) -> ChatError:
    """The error with `param` (and the message that starts with the old one) renamed."""
    if error.param is None or param == error.param:
        return error
    message = error.message
    if message.startswith(error.param):
        message = f"{param}{message[len(error.param) :]}"
    return dataclasses.replace(error, message=message, param=param)


def _message_param(param: str | None, origins: list[int | None]) -> str | None:
    """`messages[i]...` of our conversation as the AG-UI body's index (or `context`)."""
    match = _MESSAGE_PARAM.match(param or "")
    if param is None or match is None:
        return param
    position = int(match.group(1))
    if position >= len(origins):
        return "messages"
    origin = origins[position]
    return "context" if origin is None else f"messages[{origin}]{param[match.end() :]}"


def _option_param(param: str | None) -> str | None:
    """A `ChatRequest` option (`chain`, `deployments[0]`, ...) as the `forwardedProps` key it came from."""
    if param is None:
        return None
    name = re.split(r"[\[.]", param, maxsplit=1)[0]
    return _PARAM_NAMES.get(name, param)


def parse_request(body: bytes, limits: Limits) -> AgUiChatRequest:
    if not body.strip():
        raise errors.invalid_json("the body is empty")
    try:
        run = RunAgentInput.model_validate_json(body)
    except ValidationError as exc:
        raise errors.from_validation_error(exc) from None
    messages, origins = _conversation(run)
    data: dict[str, Any] = {"messages": messages, **_options(run.forwarded_props)}
    data |= {"ag_ui_thread_id": run.thread_id, "run_id": run.run_id}
    try:
        return AgUiChatRequest.model_validate(data, strict=True, context={"limits": limits})
    except ValidationError as exc:
        error = errors.from_validation_error(exc)
        raise _with_param(error, _message_param(error.param, origins)) from None


def _usage(event: Event) -> list[dict[str, Any]] | None:
    usage = event.get("usage")
    if not usage:
        return None
    entry: dict[str, Any] = {
        "model": event.get("model") or event.get("deployment"),
        "inputTokens": usage["prompt_tokens"],
        "outputTokens": usage["completion_tokens"],
        "totalTokens": usage["total_tokens"],
    }
    if "reasoning_tokens" in usage:
        entry["reasoningTokens"] = usage["reasoning_tokens"]
    if entry["model"] is None:
        del entry["model"]
    return [entry]


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _new_id() -> str:
    return uuid.uuid4().hex


class AgUiEncoder:
    """Native events to AG-UI events for one run. Keeps what AG-UI's ordering rules need: the open text
    message, the open tool calls (by index), the open step, and an `error` held for the `end` after it
    (so `RUN_ERROR` carries the usage and is the last event)."""

    media_type = "text/event-stream"
    heartbeat = encoding.SSE_HEARTBEAT
    headers: Mapping[str, str] = {}

    def __init__(self, thread_id: str, run_id: str) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self._message: str | None = None  # the open text message
        self._content_prefix = b""  # its TEXT_MESSAGE_CONTENT up to the delta, built once per message
        self._turn: str | None = None  # the assistant message tool calls of this model turn belong to
        self._calls: dict[int, str] = {}  # index -> id of the open tool calls
        self._step: str | None = None
        self._error: Event | None = None
        self._started = False
        self._ended = False

    def encode(self, event: Event) -> bytes:
        kind = event.get("type")
        if kind == "delta":
            return self._content(event["delta_content"])
        if kind == "refusal":  # the model's own words: shown as its answer
            return self._content(event["refusal"])
        if self._ended:
            return b""
        if kind == "start":
            return self._run_started(event)
        if kind == "tool_call_delta":
            return self._tool_call_delta(event)
        if kind == "tool_call":
            return self._tool_call(event)
        if kind == "tool_result":
            return self._tool_result(event["id"], event["content"])
        if kind == "tool_error":
            return self._tool_result(event["id"], f"Error: {event['message']}")
        if kind == "progress":
            return self._progress(event)
        if kind == "citations":
            return _sse({"type": "CUSTOM", "name": "citations", "value": event["citations"]})
        if kind == "error":
            self._error = event  # sent with the `end` that always follows
            return b""
        if kind == "end":
            return self._end(event)
        return b""  # `done` (several deployments are not offered here) and types added later

    def close(self) -> bytes:
        """Every run ends with RUN_FINISHED or RUN_ERROR; a stream cut short still gets RUN_ERROR."""
        if not self._started or self._ended:
            return b""
        self._ended = True
        error = self._error or {"code": "internal_error", "message": "the stream ended before the answer"}
        return self._run_error(error, None)

    # --- text -------------------------------------------------------------------------------------

    def _content(self, text: str) -> bytes:
        if self._ended:
            return b""
        opening = b""
        if self._message is None:
            opening = self._open_message()
        return opening + self._content_prefix + orjson.dumps(text) + b"}\n\n"

    def _open_message(self) -> bytes:
        self._message = self._turn = _new_id()
        self._content_prefix = (
            b'data: {"type":"TEXT_MESSAGE_CONTENT","messageId":"' + self._message.encode() + b'","delta":'
        )
        return _sse({"type": "TEXT_MESSAGE_START", "messageId": self._message, "role": "assistant"})

    def _close_message(self) -> bytes:
        if self._message is None:
            return b""
        message, self._message = self._message, None
        return _sse({"type": "TEXT_MESSAGE_END", "messageId": message})

    # --- tools ------------------------------------------------------------------------------------

    def _start_call(self, index: int, call_id: str | None, name: str | None) -> bytes:
        out = self._close_message()  # the text so far is done; the call belongs to the same turn
        if self._turn is None:
            self._turn = _new_id()
        call_id = call_id or f"call_{_new_id()}"
        self._calls[index] = call_id
        start = {"type": "TOOL_CALL_START", "toolCallId": call_id, "toolCallName": name or ""}
        return out + _sse({**start, "parentMessageId": self._turn})

    def _tool_call_delta(self, event: Event) -> bytes:
        index = event["index"]
        out = b""
        if index not in self._calls:
            out = self._start_call(index, event["id"], event["name"])
        if event["arguments_delta"]:
            args = {
                "type": "TOOL_CALL_ARGS",
                "toolCallId": self._calls[index],
                "delta": event["arguments_delta"],
            }
            out += _sse(args)
        return out

    def _tool_call(self, event: Event) -> bytes:
        index = event["index"]
        out = b""
        if index not in self._calls:  # never streamed: the whole call at once
            out = self._start_call(index, event["id"], event["name"])
            if event["arguments"]:
                out += _sse(
                    {"type": "TOOL_CALL_ARGS", "toolCallId": self._calls[index], "delta": event["arguments"]}
                )
        call_id = self._calls.pop(index)
        if not self._calls:
            self._turn = None  # the model's turn is over: what it says next is a new message
        return out + _sse({"type": "TOOL_CALL_END", "toolCallId": call_id})

    def _tool_result(self, call_id: str, content: str) -> bytes:
        self._turn = None
        result = {"type": "TOOL_CALL_RESULT", "messageId": _new_id(), "toolCallId": call_id}
        return _sse({**result, "content": content, "role": "tool"})

    def _close_calls(self) -> bytes:
        out = b"".join(
            _sse({"type": "TOOL_CALL_END", "toolCallId": call_id}) for call_id in self._calls.values()
        )
        self._calls.clear()
        return out

    # --- steps and the run ------------------------------------------------------------------------

    def _progress(self, event: Event) -> bytes:
        out = self._close_step()
        self._step = event["stage"]
        metadata = {"message": event["message"]}
        if "count" in event:
            metadata["count"] = event["count"]
        return out + _sse({"type": "STEP_STARTED", "stepName": self._step, "metadata": metadata})

    def _close_step(self) -> bytes:
        if self._step is None:
            return b""
        step, self._step = self._step, None
        return _sse({"type": "STEP_FINISHED", "stepName": step})

    def _run_started(self, event: Event) -> bytes:
        self._started = True
        metadata = {"requestId": event["id"], "chain": event["chain"], "deployment": event["deployment"]}
        started = {"type": "RUN_STARTED", "threadId": self.thread_id, "runId": self.run_id}
        return _sse({**started, "protocolVersion": PROTOCOL_VERSION, "metadata": metadata})

    def _end(self, event: Event) -> bytes:
        self._ended = True
        usage = _usage(event)
        if self._error is not None:
            return self._run_error(self._error, usage)
        out = self._close_message() + self._close_calls() + self._close_step()
        finished: dict[str, Any] = {"type": "RUN_FINISHED", "threadId": self.thread_id, "runId": self.run_id}
        if usage is not None:
            finished["usage"] = usage
        finished["metadata"] = {
            "finishReason": event.get("finish_reason"),
            "deployment": event.get("deployment"),
        }
        return out + _sse(finished)

    def _run_error(self, error: Event, usage: list[dict[str, Any]] | None) -> bytes:
        """Last: nothing may follow a RUN_ERROR, and an open message or step needs no closing before it."""
        metadata: dict[str, Any] = {"retryable": bool(error.get("retryable", False))}
        if error.get("retry_after") is not None:
            metadata["retryAfter"] = error["retry_after"]
        failed: dict[str, Any] = {"type": "RUN_ERROR", "message": error["message"], "code": error["code"]}
        if usage is not None:
            failed["usage"] = usage
        return _sse({**failed, "metadata": metadata})


def error_body(error: ChatError) -> dict[str, Any]:
    """A pre-stream error in the shape of the RUN_ERROR event, so one handler reads both; HttpAgent
    throws `HTTP <status>: <this JSON>` and keeps the object as the error's `payload`."""
    body: dict[str, Any] = {"type": "RUN_ERROR", "message": error.message, "code": error.code}
    metadata: dict[str, Any] = {}
    if error.param is not None:
        metadata["param"] = error.param
    if error.retryable:
        metadata["retryable"] = True
    if error.retry_after is not None:
        metadata["retryAfter"] = error.retry_after
    if metadata:
        body["metadata"] = metadata
    return body


class AgUiProtocol:
    name = "ag-ui"

    def claims(self, body: bytes) -> bool:
        """A body with AG-UI's required ids (only consulted when a route shares protocols)."""
        return b'"runId"' in body and b'"threadId"' in body

    def parse(self, body: bytes, limits: Limits) -> ChatRequest:
        return parse_request(body, limits)

    def encoder(self, request: Request, chat: ChatRequest) -> AgUiEncoder:
        """Always SSE: HttpAgent asks for it and picks its parser by the response's content type."""
        assert isinstance(chat, AgUiChatRequest)
        return AgUiEncoder(chat.ag_ui_thread_id, chat.run_id)

    def answer_response(
        self, answer: dict[str, Any], request: ChatRequest, headers: dict[str, str]
    ) -> Response:
        """Unused: an AG-UI run always streams (the request has no `stream` switch)."""
        return JSONResponse(answer, headers=headers)

    def error_response(self, error: ChatError, headers: dict[str, str]) -> Response:
        error = _with_param(error, _option_param(error.param))
        return JSONResponse(error_body(error), status_code=error.status, headers={**error.headers, **headers})


AG_UI = AgUiProtocol()
