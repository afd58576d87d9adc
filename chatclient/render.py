"""Print a chat stream as text: the answer on stdout, what the chain did on stderr.

stdout only ever gets model text, so `> answer.txt` still captures just the answer; tool calls,
progress, sources, errors and metrics go to stderr. With several deployments their deltas arrive
interleaved, so each deployment's answer is printed as one block (`=== name ===`) when that
deployment ends, and its stderr lines are prefixed with `[name]`.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from chatclient.metrics import StreamMetrics

Event = dict[str, Any]

#: Longest tool result shown; the model gets the whole of it.
MAX_RESULT_CHARS = 300


def clip(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def format_call(name: str, arguments: str) -> str:
    """`calculator(expression='12 * (3 + 4)')`; the raw arguments when they are not a JSON object."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return f"{name}({arguments})"
    if not isinstance(args, dict):
        return f"{name}({arguments})"
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"


def fallback_note(deployment: str | None, fallback_from: list[dict[str, Any]] | None) -> str | None:
    """`answered by gpt-4o after gpt-4o-mini failed (rate_limited)`, or None without a fallback."""
    if not fallback_from:
        return None
    failed = ", ".join(f"{f.get('deployment')} failed ({f.get('code')})" for f in fallback_from)
    return f"answered by {deployment} after {failed}"


class TextPrinter:
    """Feed it every event; it prints them and keeps score (ended, failed, the answer to save)."""

    def __init__(
        self, out: TextIO, err: TextIO, metrics: StreamMetrics, show_metrics: bool = True, quiet: bool = False
    ) -> None:
        """`quiet`: print only errors (the caller prints the events itself), still keep score."""
        self.quiet = quiet
        self.out = out
        self.err = err
        self.metrics = metrics
        self.show_metrics = show_metrics
        #: Several deployments: their names in the order asked for (from `start`), else None.
        self.deployments: list[str] | None = None
        self.texts: dict[str, list[str]] = {}
        self.per_deployment: dict[str, StreamMetrics] = {}
        self.calls: dict[str, tuple[str, str]] = {}  # tool call id -> (name, arguments)
        self.ended = False
        self.failed = False

    @property
    def multi(self) -> bool:
        return self.deployments is not None

    @property
    def answer(self) -> str:
        """The text to keep in the conversation: the (first) deployment's."""
        name = self.deployments[0] if self.deployments else next(iter(self.texts), "")
        return "".join(self.texts.get(name, []))

    def note(self, event: Event, text: str, always: bool = False) -> None:
        if self.quiet and not always:
            return
        prefix = f"[{event.get('deployment')}] " if self.multi else ""
        print(prefix + text, file=self.err, flush=True)

    def handle(self, event: Event) -> None:
        kind = event.get("type")
        deployment = str(event.get("deployment") or "")
        if kind == "start" and (note := fallback_note(event.get("deployment"), event.get("fallback_from"))):
            self.note(event, note)
        if kind == "start" and len(event.get("deployments") or []) > 1:
            self.deployments = list(event["deployments"])
            started = self.metrics.started
            self.per_deployment = {name: StreamMetrics(started=started) for name in self.deployments}
        if self.multi and deployment in self.per_deployment:
            self.per_deployment[deployment].observe(event)
        if kind == "delta":
            text = event.get("delta_content") or ""
            self.texts.setdefault(deployment, []).append(text)
            if not self.multi and not self.quiet:
                self.out.write(text)
                self.out.flush()
        elif kind == "progress":
            self.note(event, f"progress: {event.get('message') or event.get('stage')}")
        elif kind == "citations":
            citations = event.get("citations") or []
            lines = [f"  [{c.get('number')}] {c.get('title')} ({c.get('source')})" for c in citations]
            self.note(event, "sources:\n" + "\n".join(lines))
        elif kind == "tool_call":
            self.calls[event.get("id") or ""] = (event.get("name") or "tool", event.get("arguments") or "")
        elif kind in ("tool_result", "tool_error"):
            name, arguments = self.calls.get(event.get("id") or "", (event.get("name") or "tool", ""))
            call = format_call(name, arguments)
            if kind == "tool_result":
                self.note(event, f"tool: {call} -> {clip(str(event.get('content', '')))}")
            else:
                self.note(event, f"tool failed: {call}: {event.get('message')}")
        elif kind == "error":
            self.failed = True
            text = f"error ({event.get('code')}): {event.get('message')}"
            self.note(event, text if self.multi else "\n" + text, always=True)
        elif kind == "end":
            if self.multi:
                self.print_block(deployment)
            else:
                self.ended = True
        elif kind == "done":
            self.ended = True
            self.failed = self.failed or bool(event.get("failed"))

    def print_block(self, deployment: str) -> None:
        """One deployment finished: its whole answer on stdout, its metrics on stderr."""
        if self.quiet:
            return
        self.out.write(f"=== {deployment} ===\n{''.join(self.texts.get(deployment, []))}\n\n")
        self.out.flush()
        metrics = self.per_deployment.get(deployment)
        if self.show_metrics and metrics:
            print(f"[{deployment}] {metrics.summary()}", file=self.err, flush=True)

    def summary(self) -> str:
        """The metrics line; with several deployments (each had its own) a tally instead."""
        if not self.deployments:
            return self.metrics.summary()
        failed = sum(1 for m in self.per_deployment.values() if m.finish_reason == "error")
        return f"{len(self.deployments)} deployments answered, {failed} failed"

    def finish(self) -> None:
        """The stream is over (whole or not): end the answer's line."""
        if not self.multi and not self.quiet:
            self.out.write("\n")
            self.out.flush()
