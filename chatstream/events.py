"""The event vocabulary: every event is a JSON object told apart by its `type` field.

See docs/protocol.md for every event's fields. Events are plain dicts, cheap to build on the
per-delta path; the functions below are the only places the runner's own events are built.
"""

from __future__ import annotations

import time
from typing import Any, NotRequired, TypedDict

from chatstream.errors import ChatError


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    #: Hidden reasoning tokens (included in completion_tokens), when the upstream reports them.
    reasoning_tokens: NotRequired[int]
    #: True when counted by us (a stopped stream: the upstream reports usage only at its end).
    estimated: NotRequired[bool]


Event = dict[str, Any]

#: Types only the runner produces; a chain yielding one of these as a dict is a bug.
RUNNER_TYPES = frozenset(
    {"start", "delta", "refusal", "error", "end", "done", "tool_call_delta", "tool_call"}
)


def start(request_id: str, chain: str, deployment: str) -> Event:
    return {
        "type": "start",
        "id": request_id,
        "chain": chain,
        "deployment": deployment,
        "created": int(time.time()),
    }


def delta(deployment: str, content: str) -> Event:
    return {"type": "delta", "deployment": deployment, "delta_content": content}


def refusal(deployment: str, text: str) -> Event:
    return {"type": "refusal", "deployment": deployment, "refusal": text}


def error(deployment: str, exc: ChatError) -> Event:
    event: Event = {
        "type": "error",
        "deployment": deployment,
        "code": exc.code,
        "message": exc.message,
        "retryable": exc.retryable,
    }
    if exc.retry_after is not None:
        event["retry_after"] = exc.retry_after
    return event


def end(
    request_id: str, deployment: str, model: str | None, finish_reason: str | None, usage: Usage | None
) -> Event:
    return {
        "type": "end",
        "id": request_id,
        "deployment": deployment,
        "model": model,
        "finish_reason": finish_reason,
        "usage": usage,
    }


def tool_call_delta(deployment: str, index: int, call_id: str | None, name: str | None, args: str) -> Event:
    return {
        "type": "tool_call_delta",
        "deployment": deployment,
        "index": index,
        "id": call_id,
        "name": name,
        "arguments_delta": args,
    }


def tool_call(deployment: str, index: int, call_id: str | None, name: str | None, arguments: str) -> Event:
    return {
        "type": "tool_call",
        "deployment": deployment,
        "index": index,
        "id": call_id,
        "name": name,
        "arguments": arguments,
    }
