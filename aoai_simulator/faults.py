"""Fault injection: a tiny grammar and the per-key attempt counter behind `times=N`.

Grammar (header `x-sim-fault`, or a deployment-bound spec)::

    spec    := item (";" item)*
    item    := "times=" N                  -- only the first N attempts of the same request fail
             | STATUS [":" opts]           -- 400..599, e.g. 429, 500, 502, 503; opts: retry-after=SECONDS
             | "timeout" ["=" SECONDS]     -- hold the request without headers (default: config.hold_seconds)
             | "reset"                     -- close the connection before any response byte
             | "slow-first-token=" MS      -- override time to first token
             | "stall-after=" N            -- stop after N content chunks, keep the connection open
             | "drop-after=" N             -- close the connection abruptly after N content chunks
             | "content-filter-prompt"     -- Azure's 400 content_filter error for the prompt
             | "content-filter-after=" N   -- finish_reason content_filter after N content chunks
             | "error-after=" N            -- an in-stream `{"error": ...}` event after N content chunks
             | "tokens=" N                 -- answer length (pacing, not a fault: for callers without headers)
             | "token-delay=" MS           -- delay between tokens (likewise)

Items combine, e.g. `slow-first-token=2000;drop-after=5` or `503;times=2`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


class FaultSpecError(ValueError):
    """Raised for a spec the grammar does not cover; the app answers 400 so typos are loud."""


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one request; every field None/False means behave normally."""

    spec: str = ""
    status: int | None = None
    retry_after_s: float | None = None
    timeout_s: float | None = None
    hold_default: bool = False
    reset: bool = False
    slow_first_token_ms: float | None = None
    stall_after: int | None = None
    drop_after: int | None = None
    content_filter_prompt: bool = False
    content_filter_after: int | None = None
    times: int | None = None
    error_after: int | None = None
    tokens: int | None = None
    token_delay_ms: float | None = None

    @property
    def before_headers(self) -> bool:
        """True when the fault replaces the response entirely."""
        return bool(
            self.status
            or self.reset
            or self.content_filter_prompt
            or self.timeout_s is not None
            or self.hold_default
        )


def _int(value: str, item: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise FaultSpecError(f"fault item {item!r} needs an integer") from exc
    if number < 0:
        raise FaultSpecError(f"fault item {item!r} must not be negative")
    return number


def _float(value: str, item: str) -> float:
    try:
        number = float(value)
    except ValueError as exc:
        raise FaultSpecError(f"fault item {item!r} needs a number") from exc
    if number < 0:
        raise FaultSpecError(f"fault item {item!r} must not be negative")
    return number


def parse_fault(spec: str) -> FaultPlan:
    """Parse a spec string into a plan; empty spec -> no fault."""
    fields: dict[str, object] = {"spec": spec.strip()}
    for raw in spec.split(";"):
        item = raw.strip()
        if not item:
            continue
        head, _, opts = item.partition(":")
        name, _, value = head.strip().partition("=")
        name = name.strip().lower()
        value = value.strip()
        if name.isdigit():
            status = int(name)
            if not 400 <= status <= 599:
                raise FaultSpecError(f"status fault {status} must be 400..599")
            fields["status"] = status
            for opt in filter(None, (o.strip() for o in opts.split(","))):
                key, _, val = opt.partition("=")
                if key.strip().lower() != "retry-after":
                    raise FaultSpecError(f"unknown option {opt!r} for status fault")
                fields["retry_after_s"] = _float(val.strip(), opt)
        elif name == "times":
            fields["times"] = _int(value, item)
        elif name == "timeout":
            if value:
                fields["timeout_s"] = _float(value, item)
            else:
                fields["hold_default"] = True
        elif name == "reset":
            fields["reset"] = True
        elif name == "slow-first-token":
            fields["slow_first_token_ms"] = _float(value, item)
        elif name == "stall-after":
            fields["stall_after"] = _int(value, item)
        elif name == "drop-after":
            fields["drop_after"] = _int(value, item)
        elif name == "content-filter-prompt":
            fields["content_filter_prompt"] = True
        elif name == "content-filter-after":
            fields["content_filter_after"] = _int(value, item)
        elif name == "error-after":
            fields["error_after"] = _int(value, item)
        elif name == "tokens":
            fields["tokens"] = _int(value, item)
        elif name == "token-delay":
            fields["token_delay_ms"] = _float(value, item)
        else:
            raise FaultSpecError(f"unknown fault {item!r}")
    return FaultPlan(**fields)  # type: ignore[arg-type]


class AttemptCounter:
    """Counts attempts per key so `times=N` faults hit only the first N tries of one logical request.

    Bounded (LRU) because keys come from clients; thread-safe because tests read it from another thread.
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._max_keys = max_keys
        self._lock = threading.Lock()

    def next_attempt(self, key: str) -> int:
        """Record one attempt and return its 1-based number."""
        with self._lock:
            count = self._counts.pop(key, 0) + 1
            self._counts[key] = count
            while len(self._counts) > self._max_keys:
                self._counts.popitem(last=False)
            return count

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
