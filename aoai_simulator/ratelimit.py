"""Per-deployment requests/tokens-per-minute accounting for `x-ratelimit-*` headers and 429s.

Azure counts a request's token cost up front from the prompt plus `max_tokens`, over a 60 s window;
we do the same with a sliding window so limits are easy to hit deterministically in tests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

WINDOW_S = 60.0
#: Limits reported in headers when none is configured (the request never gets a 429).
NOTIONAL_RPM = 10_000
NOTIONAL_TPM = 10_000_000


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit_requests: int
    limit_tokens: int
    remaining_requests: int
    remaining_tokens: int
    retry_after_s: float
    kind: str  # "call" or "token": which limit refused the request

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit-requests", str(self.limit_requests).encode()),
            (b"x-ratelimit-limit-tokens", str(self.limit_tokens).encode()),
            (b"x-ratelimit-remaining-requests", str(self.remaining_requests).encode()),
            (b"x-ratelimit-remaining-tokens", str(self.remaining_tokens).encode()),
            (b"x-ratelimit-renewalperiod-requests", b"60"),
            (b"x-ratelimit-renewalperiod-tokens", b"60"),
        ]


class RateLimiter:
    """Sliding-window counter; thread-safe for stats resets from the test thread."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self._rpm = rpm
        self._tpm = tpm
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def check(self, deployment: str, tokens: int, now: float | None = None) -> RateDecision:
        now = time.monotonic() if now is None else now
        rpm = self._rpm or NOTIONAL_RPM
        tpm = self._tpm or NOTIONAL_TPM
        with self._lock:
            window = self._events.setdefault(deployment, deque())
            while window and window[0][0] <= now - WINDOW_S:
                window.popleft()
            used_requests = len(window)
            used_tokens = sum(cost for _, cost in window)
            over_calls = self._rpm is not None and used_requests + 1 > self._rpm
            over_tokens = self._tpm is not None and used_tokens + tokens > self._tpm
            if over_calls or over_tokens:
                retry = (window[0][0] + WINDOW_S - now) if window else 1.0
                return RateDecision(
                    False,
                    rpm,
                    tpm,
                    max(0, rpm - used_requests),
                    max(0, tpm - used_tokens),
                    max(retry, 0.001),
                    "call" if over_calls else "token",
                )
            window.append((now, tokens))
            return RateDecision(
                True, rpm, tpm, max(0, rpm - used_requests - 1), max(0, tpm - used_tokens - tokens), 0.0, ""
            )

    def reset(self) -> None:
        with self._lock:
            self._events.clear()
