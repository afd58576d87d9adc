"""How a chain says it cannot produce an answer, without knowing about HTTP or the wire.

The streaming core turns a `ChainFailure` into an `error` event (or a 502 before the first event)
carrying the chain's own code and message, so a chain of yours can fail in words the caller reads.
"""

from __future__ import annotations


class ChainFailure(Exception):
    """The chain gave up; `message` is shown to the caller, so it must not carry secrets."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class ThreadStoreUnavailable(ChainFailure):
    """The shared conversation store (`CHAT_THREADS_STORE=postgres`) failed or did not answer in time.

    A store failure, not the model's: the streaming core answers it as `threads_unavailable` (503)."""

    def __init__(self) -> None:
        super().__init__(
            "threads_unavailable", "the conversation thread store is unavailable; retry later", retryable=True
        )
