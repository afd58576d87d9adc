"""Azure-shaped chat-completion JSON, pre-encoded to SSE bytes.

Keys follow Azure's wire order (alphabetical) and 2026 shape: a prompt-filter chunk with empty
`choices` first, a role chunk with `refusal: null`, content chunks carrying `content_filter_results`,
`finish_reason` on the choice of the last choice chunk, an optional usage chunk, then `[DONE]`.
Content chunks are a constant prefix + the JSON-escaped token + a constant suffix, so the hot path is
one C-level string escape and a bytes concatenation (cached per distinct token).
"""

from __future__ import annotations

import json
import secrets
import string
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

_SAFE = {"filtered": False, "severity": "safe"}
_NOT_DETECTED = {"detected": False, "filtered": False}

#: Prompt filter annotations Azure sends before any choice (2026 adds jailbreak).
PROMPT_FILTER_RESULTS: list[dict[str, Any]] = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            "hate": _SAFE,
            "jailbreak": _NOT_DETECTED,
            "self_harm": _SAFE,
            "sexual": _SAFE,
            "violence": _SAFE,
        },
    }
]

#: Per-chunk completion annotations as on gpt-4o / gpt-4.1 deployments in 2026.
CONTENT_FILTER_RESULTS: dict[str, Any] = {
    "hate": _SAFE,
    "protected_material_code": _NOT_DETECTED,
    "protected_material_text": _NOT_DETECTED,
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}

#: What the async filter reports when it blocks the completion mid-stream.
BLOCKED_CONTENT_FILTER_RESULTS: dict[str, Any] = {
    **CONTENT_FILTER_RESULTS,
    "protected_material_text": {"detected": True, "filtered": True},
}

DONE = b"data: [DONE]\n\n"
_ALPHABET = string.ascii_letters + string.digits


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(obj: Any) -> bytes:
    return f"data: {_dumps(obj)}\n\n".encode()


PROMPT_FILTER_EVENT = sse(
    {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": PROMPT_FILTER_RESULTS,
    }
)


def new_completion_id() -> str:
    return "chatcmpl-" + "".join(secrets.choice(_ALPHABET) for _ in range(29))


def usage_dict(prompt: int, completion: int, reasoning: int = 0) -> dict[str, Any]:
    """`completion` counts visible tokens; hidden reasoning tokens are billed as completion tokens too."""
    completion += reasoning
    return {
        "completion_tokens": completion,
        "completion_tokens_details": {
            "accepted_prediction_tokens": 0,
            "audio_tokens": 0,
            "reasoning_tokens": reasoning,
            "rejected_prediction_tokens": 0,
        },
        "prompt_tokens": prompt,
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
        "total_tokens": prompt + completion,
    }


@dataclass
class ChunkEncoder:
    """Builds every event of one streamed completion; one instance per response."""

    model: str
    system_fingerprint: str
    include_usage: bool = False
    completion_id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        tail = {
            "created": self.created,
            "id": self.completion_id,
            "model": self.model,
            "object": "chat.completion.chunk",
            "system_fingerprint": self.system_fingerprint,
        }
        if self.include_usage:
            tail["usage"] = None
        # `{"choices":[` + choice + `],` + tail-without-brace; choices sort first, so order stays Azure's.
        self._tail_json = _dumps(tail)[1:]
        choice_head = _dumps({"content_filter_results": CONTENT_FILTER_RESULTS})[:-1]
        self._content_prefix = ('data: {"choices":[' + choice_head + ',"delta":{"content":').encode()
        self._content_suffix = (
            '},"finish_reason":null,"index":0,"logprobs":null}],' + self._tail_json + "\n\n"
        ).encode()
        self._cache: dict[str, bytes] = {}

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        head = _dumps({"choices": choices, **extra})[:-1]
        return f"data: {head},{self._tail_json}\n\n".encode()

    def role(self) -> bytes:
        delta = {"content": "", "refusal": None, "role": "assistant"}
        return self._event(
            [
                {
                    "content_filter_results": {},
                    "delta": delta,
                    "finish_reason": None,
                    "index": 0,
                    "logprobs": None,
                }
            ]
        )

    def content(self, token: str) -> bytes:
        """One content chunk; cached because answers reuse a small vocabulary."""
        event = self._cache.get(token)
        if event is None:
            event = self._content_prefix + encode_basestring(token).encode() + self._content_suffix
            if len(self._cache) < 4096:
                self._cache[token] = event
        return event

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        """One tool-call fragment: id, type and name only on a call's first fragment (as Azure sends)."""
        function: dict[str, Any] = {"arguments": arguments}
        call: dict[str, Any] = {"function": function, "index": index}
        delta: dict[str, Any] = {"tool_calls": [call]}
        if call_id is not None:
            function["name"] = name
            call["id"] = call_id
            call["type"] = "function"
        if index == 0 and call_id is not None:
            delta = {"content": None, "refusal": None, "role": "assistant", **delta}
        choice = {
            "content_filter_results": {},
            "delta": delta,
            "finish_reason": None,
            "index": 0,
            "logprobs": None,
        }
        return self._event([choice])

    def finish(self, reason: str) -> bytes:
        return self._event(
            [
                {
                    "content_filter_results": {},
                    "delta": {},
                    "finish_reason": reason,
                    "index": 0,
                    "logprobs": None,
                }
            ]
        )

    def content_filtered(self) -> bytes:
        """Async-filter verdict that ends a blocked stream (no delta, like Azure's documented sample)."""
        choice = {
            "content_filter_results": BLOCKED_CONTENT_FILTER_RESULTS,
            "delta": {},
            "finish_reason": "content_filter",
            "index": 0,
            "logprobs": None,
        }
        return self._event([choice])

    def usage(self, prompt: int, completion: int, reasoning: int = 0) -> bytes:
        obj = {
            "choices": [],
            "created": self.created,
            "id": self.completion_id,
            "model": self.model,
            "object": "chat.completion.chunk",
            "system_fingerprint": self.system_fingerprint,
            "usage": usage_dict(prompt, completion, reasoning),
        }
        return sse(obj)


def completion_body(
    *,
    model: str,
    system_fingerprint: str,
    content: str,
    finish_reason: str,
    prompt: int,
    completion: int,
    tool_calls: list[dict[str, Any]] | None = None,
    reasoning: int = 0,
) -> bytes:
    """Non-streaming `chat.completion` object with Azure's filter annotations."""
    filters = BLOCKED_CONTENT_FILTER_RESULTS if finish_reason == "content_filter" else CONTENT_FILTER_RESULTS
    obj = {
        "choices": [
            {
                "content_filter_results": filters,
                "finish_reason": finish_reason,
                "index": 0,
                "logprobs": None,
                "message": {
                    "annotations": [],
                    "content": content if not tool_calls else None,
                    "refusal": None,
                    "role": "assistant",
                    **({"tool_calls": tool_calls} if tool_calls else {}),
                },
            }
        ],
        "created": int(time.time()),
        "id": new_completion_id(),
        "model": model,
        "object": "chat.completion",
        "prompt_filter_results": PROMPT_FILTER_RESULTS,
        "system_fingerprint": system_fingerprint,
        "usage": usage_dict(prompt, completion, reasoning),
    }
    return _dumps(obj).encode()
