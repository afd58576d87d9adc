"""The error catalogue: every error the caller may see, and the one JSON shape they all take.

Every `ChatError` is built here, so a code has one status, one `retryable` and one message wherever it
is raised (docs/protocol.md lists them). Messages are written for the caller: they never carry
upstream exception text, endpoints, keys or stack traces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails


@dataclass
class ChatError(Exception):
    """A failure with an HTTP status for before the stream starts and a code for after."""

    status: int
    code: str
    message: str
    param: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.retryable:
            error["retryable"] = True
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        return {"error": error}


def _param(loc: tuple[int | str, ...]) -> str | None:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


#: Error types the request schema raises itself; each is also the code the caller sees.
_SCHEMA_CODES = {"too_many_messages", "content_too_long", "option_out_of_range", "unsupported_value"}
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _code_for(error: ErrorDetails) -> str:
    if error["type"] in _SCHEMA_CODES:
        return str(error["type"])
    if error["loc"] in (("max_tokens",), ("temperature",)) and error["type"] in _RANGE_ERRORS:
        return "option_out_of_range"
    return "invalid_request"


def from_validation_error(exc: ValidationError) -> ChatError:
    """The first problem, phrased for the caller; pydantic's input echo is left out on purpose."""
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        return invalid_json(str(first["ctx"].get("error", "malformed")) if first.get("ctx") else "malformed")
    param = _param(tuple(first["loc"]))
    message = str(first["msg"]).removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    return ChatError(400, _code_for(first), message, param=param)


def invalid_request(param: str, problem: str) -> ChatError:
    """A field a protocol's own request translation refuses (`param` as the caller's body names it)."""
    return ChatError(400, "invalid_request", f"{param}: {problem}", param=param)


def invalid_json(detail: str) -> ChatError:
    return ChatError(400, "invalid_json", f"the request body is not valid JSON: {detail}")


def body_too_large(limit: int) -> ChatError:
    return ChatError(413, "body_too_large", f"the request body is larger than {limit} bytes")


def unknown_chain(name: str, known: list[str]) -> ChatError:
    return ChatError(
        400,
        "unknown_chain",
        f"chain: unknown chain {name!r}; known chains: {', '.join(sorted(known))}",
        param="chain",
    )


def not_configured(reason: str) -> ChatError:
    return ChatError(503, "not_configured", f"the chat model is not configured: {reason}", retryable=False)


def not_acceptable() -> ChatError:
    return ChatError(
        406,
        "not_acceptable",
        "Accept refuses both text/event-stream and application/x-ndjson (q=0); "
        'accept one of them, or send "stream": false for one JSON answer',
    )


def internal_error() -> ChatError:
    """A bug of ours; the details are in the log only."""
    return ChatError(500, "internal_error", "the server failed to produce an answer", retryable=True)


def deadline_exceeded(seconds: float) -> ChatError:
    return ChatError(
        504, "deadline_exceeded", f"the answer took longer than the {seconds:g} s limit", retryable=True
    )


# -- resumable streams and stop (chatstream/resumable.py) -------------------------------------------


def stream_not_found(stream_id: str) -> ChatError:
    return ChatError(
        404,
        "stream_not_found",
        f"no stream {stream_id!r} here: it never was resumable, or it ended longer ago than the "
        "resume TTL (see GET /api/chat/{id}/stream in docs/protocol.md)",
    )


def stream_not_resumable() -> ChatError:
    return ChatError(
        410,
        "stream_not_resumable",
        "the events after Last-Event-ID are no longer kept (the stream outgrew CHAT_RESUME_MAX_BYTES); "
        "send the request again",
    )


def stream_finished(stream_id: str) -> ChatError:
    return ChatError(409, "stream_finished", f"stream {stream_id!r} has already ended; nothing to stop")


def invalid_last_event_id() -> ChatError:
    return ChatError(
        400,
        "invalid_last_event_id",
        "Last-Event-ID (or last_event_id) must be the id of an event received: a whole number >= 0",
        param="Last-Event-ID",
    )


def resume_capacity(limit: int) -> ChatError:
    return ChatError(
        503,
        "resume_capacity",
        f"this instance already keeps {limit} running resumable streams (CHAT_RESUME_MAX_STREAMS); "
        "retry, or send the request without resumable",
        retryable=True,
    )


def stream_producer_lost() -> ChatError:
    """The instance running a stream stopped writing it (killed, recycled) before its end: the answer is
    cut for good. Not retryable as a resume; a new request starts the answer again."""
    return ChatError(
        410,
        "stream_producer_lost",
        "the instance producing this stream stopped before the answer was complete; send the request again",
    )


def stream_store_unavailable() -> ChatError:
    return ChatError(
        503, "stream_store_unavailable", "the shared store of resumable streams failed", retryable=True
    )


# -- the model service (see chatstream/upstream.py for which failure is which) --------------------


def rate_limited(retry_after: float | None, headers: dict[str, str]) -> ChatError:
    return ChatError(
        429,
        "rate_limited",
        "the model is rate limited; retry later",
        retryable=True,
        retry_after=retry_after,
        headers=headers,
    )


def upstream_overloaded(retry_after: float | None, headers: dict[str, str]) -> ChatError:
    return ChatError(
        503,
        "upstream_overloaded",
        "the model service is overloaded; retry later",
        retryable=True,
        retry_after=retry_after,
        headers=headers,
    )


def prompt_filtered() -> ChatError:
    return ChatError(
        400, "content_filter", "the prompt was blocked by the content filter; rephrase it", retryable=False
    )


def answer_filtered() -> ChatError:
    """In-stream only (the status is never sent): the filter stopped an answer that had begun."""
    return ChatError(200, "content_filter", "the answer was stopped by the content filter", retryable=False)


def upstream_auth_failed() -> ChatError:
    return ChatError(
        502,
        "upstream_auth_failed",
        "the app is not allowed to call the model; check its identity and role",
        retryable=False,
    )


def deployment_not_found() -> ChatError:
    return ChatError(
        502, "deployment_not_found", "the configured model deployment does not exist", retryable=False
    )


def upstream_timeout(started: bool) -> ChatError:
    message = "the model stopped sending mid-answer" if started else "the model did not answer in time"
    return ChatError(504, "upstream_timeout", message, retryable=True)


def upstream_unavailable() -> ChatError:
    return ChatError(502, "upstream_unavailable", "the model service could not be reached", retryable=True)


def upstream_interrupted(why: str = "the connection to the model service broke mid-answer") -> ChatError:
    return ChatError(502, "upstream_interrupted", why, retryable=True)


def upstream_error(why: str = "the model service failed; retry later") -> ChatError:
    return ChatError(502, "upstream_error", why, retryable=True)


def upstream_rejected() -> ChatError:
    return ChatError(502, "upstream_rejected", "the model service rejected the request", retryable=False)


def chain_failed(code: str, message: str, retryable: bool) -> ChatError:
    """A chain's own failure (`chains.ChainFailure`, e.g. `tool_rounds_exceeded`): the chain's code
    and message, as the model service's fault for the status."""
    return ChatError(502, code, message, retryable=retryable)


def unknown_deployment(names: list[str], allowed: list[str], param: str = "deployments") -> ChatError:
    return ChatError(
        400,
        "unknown_deployment",
        f"{param}: {', '.join(map(repr, names))} not allowed; allowed: {', '.join(allowed)}",
        param=param,
    )


def fallback_with_deployments() -> ChatError:
    """Fallbacks stand in for one deployment; several answering at once have nothing to fall back to."""
    return ChatError(
        400,
        "fallback_with_deployments",
        "fallback_deployments: only for a request with one deployment; "
        "with several `deployments` leave it out",
        param="fallback_deployments",
    )


def unsupported_parameter(param: str, deployments: list[str], reasoning: bool) -> ChatError:
    """A request option the named deployments do not take (the same rule Azure applies, said earlier)."""
    names = ", ".join(map(repr, deployments))
    kind = "reasoning deployments" if reasoning else "deployments that are not reasoning models"
    return ChatError(
        400,
        "unsupported_parameter",
        f"{param}: not supported by {names} ({kind} do not take it); leave it out",
        param=param,
    )


def threads_unsupported(chain: str) -> ChatError:
    return ChatError(
        400,
        "unsupported_parameter",
        f"thread_id: chain {chain!r} keeps no conversation threads; send the whole conversation instead",
        param="thread_id",
    )


def threads_unavailable() -> ChatError:
    """The shared thread store (PostgreSQL) failed or timed out: the store's fault, so 503, and worth
    retrying later; nothing about the store (host, user, driver text) reaches the caller."""
    return ChatError(
        503,
        "threads_unavailable",
        "the conversation thread store is unavailable; retry later",
        retryable=True,
    )


# -- protocol translations (chatstream/protocols) -------------------------------------------------


def unsupported_value(param: str, problem: str) -> ChatError:
    """A value a protocol's request translation cannot carry (a tool message, an image part)."""
    return ChatError(400, "unsupported_value", f"{param}: {problem}", param=param)


def option_not_honoured(param: str, why: str) -> ChatError:
    """An option of another protocol the app would not honour: refused, never silently dropped."""
    return ChatError(
        400, "unsupported_parameter", f"{param}: not supported: {why}; leave it out", param=param
    )


def model_not_found(model: str) -> ChatError:
    """OpenAI's answer (status, code and words) for a `model` outside the deployment allow-list."""
    return ChatError(
        404,
        "model_not_found",
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
    )
