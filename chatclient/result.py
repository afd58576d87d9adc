"""What one streamed answer came to: its text, who answered (after which fallbacks), how it ended, usage.

Fed every event by `ChatStream`, so it is up to date at any point of the stream, and still there
after a stop or a failure: a partial answer is an answer the caller may keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]


@dataclass
class ChatResult:
    #: The stream's id (`start.id`, also the `X-Request-Id` header): what resume and stop name.
    id: str | None = None
    #: The deployment that answered (after any fallback); None with several deployments.
    deployment: str | None = None
    #: The deployments that failed before this one answered: `[{"deployment", "code", "status"}]`.
    fallback_from: list[dict[str, Any]] = field(default_factory=list)
    #: Every deployment's text so far (one entry unless several deployments were asked).
    texts: dict[str, str] = field(default_factory=dict)
    finish_reason: str | None = None
    #: The `end` event's usage; after a stop it carries `"estimated": true` (counted by the app).
    usage: dict[str, Any] | None = None
    #: The `error` event, if the stream failed after it started.
    error: Event | None = None
    #: The stream's last event arrived (`end`, or `done` with several deployments).
    ended: bool = False
    #: How many times a dropped connection was resumed.
    resumes: int = 0
    #: Several deployments (from `start.deployments`): `end` is per deployment and `done` is last.
    multi: bool = False

    @property
    def text(self) -> str:
        """The answer: the answering deployment's text (the first one's, with several)."""
        if self.deployment in self.texts:
            return self.texts[self.deployment]
        return next(iter(self.texts.values()), "")

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "cancelled"

    @property
    def usage_estimated(self) -> bool:
        return bool(self.usage and self.usage.get("estimated"))

    def observe(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "start":
            self.id = event.get("id") or self.id
            self.deployment = event.get("deployment")
            self.fallback_from = list(event.get("fallback_from") or [])
            names = event.get("deployments") or []
            self.multi = len(names) > 1
            for name in names if self.multi else []:
                self.texts.setdefault(name, "")
        elif kind == "delta" and isinstance(event.get("delta_content"), str):
            name = str(event.get("deployment") or "")
            self.texts[name] = self.texts.get(name, "") + event["delta_content"]
        elif kind == "error":
            self.error = event
        elif kind == "end":
            if not self.multi:
                self.finish_reason = event.get("finish_reason")
                self.usage = event.get("usage")
                self.ended = True
        elif kind == "done":
            self.ended = True
