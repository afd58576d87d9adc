"""From what a chain streams (message chunks, text, its own dicts) to protocol events: the parts of
the translation that are not on the per-delta path (the runner's loop keeps that one inline)."""

from __future__ import annotations

import logging
from typing import Any, cast

from langchain_core.messages import AIMessageChunk

from chatstream import events
from chatstream.events import Event, Usage

log = logging.getLogger("chatstream.run")


def usage_of(metadata: Any) -> Usage | None:
    """LangChain's `usage_metadata` as the `usage` of an `end` event."""
    if not metadata:
        return None
    prompt = int(metadata.get("input_tokens", 0))
    completion = int(metadata.get("output_tokens", 0))
    usage: Usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(metadata.get("total_tokens", prompt + completion)),
    }
    # Hidden tokens of reasoning models (part of completion_tokens), when the upstream reports them.
    reasoning = (metadata.get("output_token_details") or {}).get("reasoning")
    if reasoning is not None:
        usage["reasoning_tokens"] = int(reasoning)
    return usage


def add_usage(total: Usage | None, more: Usage) -> Usage:
    """Chains that call the model several times (tool rounds) report the sum."""
    if total is None:
        return more
    a, b = cast(dict[str, int], total), cast(dict[str, int], more)
    # One usage may report reasoning tokens, another not: every key of either, summed.
    return cast(Usage, {key: a.get(key, 0) + b.get(key, 0) for key in dict.fromkeys([*a, *b])})


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    # Content blocks (Responses API, multimodal): keep the text parts, in order.
    parts = [
        block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text"
    ]
    return "".join(parts)


class ToolCallAssembler:
    """`tool_call_delta` per streamed fragment; whole `tool_call`s once the model finished its turn."""

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        #: Tool calls being streamed, by index: the parts of each `tool_call` event so far.
        self.pending: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: AIMessageChunk) -> list[Event]:
        out: list[Event] = []
        for part in chunk.tool_call_chunks:
            index = part.get("index")
            index = len(self.pending) if index is None else index
            call = self.pending.setdefault(index, {"index": index, "id": None, "name": None, "args": []})
            if part.get("id"):
                call["id"] = part["id"]
            if part.get("name"):
                call["name"] = part["name"]
            if part.get("args"):
                call["args"].append(part["args"])
            out.append(
                events.tool_call_delta(
                    self.deployment, index, part.get("id"), part.get("name"), part.get("args") or ""
                )
            )
        if chunk.response_metadata.get("finish_reason"):
            out.extend(self.complete())
        return out

    def complete(self) -> list[Event]:
        calls = [self.pending[index] for index in sorted(self.pending)]
        self.pending.clear()
        return [
            events.tool_call(self.deployment, c["index"], c["id"], c["name"], "".join(c["args"]))
            for c in calls
        ]


def chain_event(chunk: dict[str, Any], deployment: str, chain_name: str) -> Event | None:
    """A chain's own event (progress, citations, tool results): forwarded, tagged with the deployment."""
    kind = chunk.get("type")
    if not isinstance(kind, str) or kind in events.RUNNER_TYPES:
        log.warning("chain %s yielded a dict without a usable 'type'; dropped", chain_name)
        return None
    return {"type": kind, "deployment": deployment, **chunk}
