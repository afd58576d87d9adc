"""What users feel about a stream: time to first token, tokens per second, and the usage bill."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamMetrics:
    """Feed it every event (`observe`); read the numbers at any time. Clock: `time.monotonic`."""

    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    deltas: int = 0
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "delta" and event.get("delta_content"):
            now = time.monotonic()
            self.first_token = self.first_token or now
            self.last_token = now
            self.deltas += 1
        elif kind == "end":
            self.usage = event.get("usage")
            self.finish_reason = event.get("finish_reason")

    def observe_answer(self, answer: dict[str, Any]) -> None:
        """A non-streaming answer: its first token is its only token."""
        self.first_token = self.last_token = time.monotonic()
        self.deltas = 1 if answer.get("content") else 0
        self.usage = answer.get("usage")
        self.finish_reason = answer.get("finish_reason")

    @property
    def ttft_seconds(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def completion_tokens(self) -> int:
        return int(self.usage["completion_tokens"]) if self.usage else self.deltas

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed after the first token (TTFT is reported on its own)."""
        if self.first_token is None or self.last_token is None or self.completion_tokens < 2:
            return None
        span = self.last_token - self.first_token
        return (self.completion_tokens - 1) / span if span > 0 else None

    def summary(self) -> str:
        parts = []
        ttft = self.ttft_seconds
        parts.append(f"first token {ttft * 1000:.0f} ms" if ttft is not None else "no tokens")
        rate = self.tokens_per_second
        if rate is not None:
            parts.append(f"{rate:.1f} tok/s")
        if self.usage:
            u = self.usage
            bill = f"usage {u['prompt_tokens']} in + {u['completion_tokens']} out = {u['total_tokens']}"
            parts.append(bill + (" (estimated)" if u.get("estimated") else ""))
        else:
            parts.append(f"{self.deltas} deltas, usage not reported")
        if self.finish_reason and self.finish_reason != "stop":
            parts.append(f"finish_reason {self.finish_reason}")
        return ", ".join(parts)
