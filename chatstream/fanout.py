"""Several deployments answering one request, merged into one event stream.

Each deployment runs its own `ChainRun` in a task; their events meet in one bounded queue (so a slow
client slows the producers instead of growing memory). The merged stream has one `start` (listing the
deployments), every deployment's own events (already tagged with it) including its `error` and `end`,
and a final `done`. A deployment that fails before its first event gets an `error` + `end` of its
own while the others go on; only if every deployment fails before starting is the first failure
raised, so the HTTP layer can still answer with a real status. Closing the stream cancels every task,
and so every upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.runner import ChainRun

#: Events buffered between the deployments' tasks and the response.
QUEUE_SIZE = 256

_FINISHED = object()


def done_event(request_id: str, runs: list[ChainRun]) -> Event:
    return {
        "type": "done",
        "id": request_id,
        "deployments": [run.deployment for run in runs],
        "failed": [run.deployment for run in runs if run.outcome.startswith("error")],
    }


@dataclass
class MultiRun:
    """Several deployments' `ChainRun`s as one `run.Run`."""

    runs: list[ChainRun]
    request_id: str
    chain_name: str
    in_band_errors: bool = True
    started: bool = False
    #: Deployments whose task has ended (its events may still wait in the queue).
    ended: set[int] = field(default_factory=set)
    #: Deployments whose `end` the consumer has taken: only these are over for the caller.
    delivered: set[int] = field(default_factory=set)
    #: Failures before the merged stream started, reported right after its `start`.
    early: list[tuple[int, ChatError]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def span(self) -> Any:
        """None: each deployment's run has a span of its own (its outcome line uses it)."""
        return None

    @property
    def deployments(self) -> list[str]:
        return [run.deployment for run in self.runs]

    def _start_event(self) -> Event:
        self.started = True
        return {
            "type": "start",
            "id": self.request_id,
            "chain": self.chain_name,
            "deployment": None,
            "deployments": self.deployments,
            "created": int(time.time()),
        }

    async def _pump(self, index: int, queue: asyncio.Queue[tuple[int, Any]]) -> None:
        stream = self.runs[index].events()
        try:
            async for event in stream:
                await queue.put((index, event))
        except ChatError as error:  # failed before its first event
            await queue.put((index, error))
        finally:
            await stream.aclose()  # on cancellation: closes the chain, and so the upstream request
        await queue.put((index, _FINISHED))

    async def events(self) -> AsyncGenerator[Event, None]:
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._tasks = [asyncio.create_task(self._pump(i, queue)) for i in range(len(self.runs))]
        early = self.early
        delivered = self.delivered
        try:
            while len(self.ended) < len(self.runs):
                index, item = await queue.get()
                if item is _FINISHED:
                    self.ended.add(index)
                    continue
                if isinstance(item, ChatError):
                    if self.started:
                        for event in self._late_failure(index, item):
                            yield event
                        delivered.add(index)
                    else:
                        early.append((index, item))
                    continue
                kind = item["type"]
                if kind == "start":
                    if not self.started:
                        yield self._start_event()
                        while early:
                            failed, error = early[0]
                            for event in self._late_failure(failed, error):
                                yield event
                            early.pop(0)
                            delivered.add(failed)
                    continue
                yield item
                # Resumed: the consumer wrote the event and wants the next one.
                if kind == "end":
                    delivered.add(index)
            if not self.started:
                raise early[0][1]
        finally:
            await self._cancel()
        yield done_event(self.request_id, self.runs)

    def _late_failure(self, index: int, error: ChatError) -> list[Event]:
        run = self.runs[index]
        run.started = True  # the merged stream's start stands for it
        return run.fail(error)

    async def _cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    def fail(self, error: ChatError) -> list[Event]:
        """Deadline or late failure of the whole stream: every deployment the caller has not seen end
        gets an `error` and its own `end` (its early failure, or `error`), then `done` lists them."""
        head = [] if self.started else [self._start_event()]
        early = dict(self.early)
        self.early.clear()
        closing: list[Event] = []
        for index in range(len(self.runs)):
            if index not in self.delivered:
                closing.extend(self._late_failure(index, early.get(index, error)))
                self.delivered.add(index)
        return [*head, *closing, done_event(self.request_id, self.runs)]

    def cancelled(self) -> None:
        for run in self.runs:
            run.cancelled()

    @property
    def finished(self) -> bool:
        return all(run.finished for run in self.runs)

    def stop(self, *, outcome: str = "stopped") -> None:
        """Every deployment ends with its own `end` (`cancelled`, usage so far), then `done`."""
        for run in self.runs:
            run.stop(outcome=outcome)

    def log_outcome(self) -> None:
        """Each deployment's own line; one still running here was left by the caller."""
        for run in self.runs:
            run.cancelled()
            run.log_outcome()
