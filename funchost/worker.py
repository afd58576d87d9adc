"""How Microsoft's Python worker decides which invocation a log record belongs to, reproduced.

The worker (azure_functions_worker `dispatcher.py`; the 3.13 proxy worker does the same) installs a
task factory whose tasks copy a `__azure_function_invocation_id__` attribute from the task that
created them, sets that attribute on the task that runs an invocation, and stores the id in a
thread-local as well. Its log handler sends each record to the host with the id it finds on the
*current task*, else the thread-local. HTTP streams are sent by the HTTP server's own request task,
which no invocation created, so records written while streaming get the thread-local id: the
invocation that started last. funchost does the same, so code that relies on the thread-local (or on
contextvars set in the function body) misattributes its logs here as it would in Azure.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: The worker's attribute name (`ContextEnabledTask.AZURE_INVOCATION_ID`).
TASK_ATTRIBUTE = "__azure_function_invocation_id__"

#: The worker's `_invocation_id_local`: set for every invocation, never cleared for async functions.
invocation_id_local = threading.local()


class ContextEnabledTask(asyncio.Task[Any]):
    """A task that inherits the invocation id of the task that created it (as the worker's does)."""

    AZURE_INVOCATION_ID = TASK_ATTRIBUTE

    def __init__(
        self, coro: Any, loop: asyncio.AbstractEventLoop, context: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(coro, loop=loop, context=context, **kwargs)
        parent = asyncio.current_task(loop)
        invocation_id = getattr(parent, TASK_ATTRIBUTE, None) if parent is not None else None
        if invocation_id is not None:
            self.set_azure_invocation_id(invocation_id)

    def set_azure_invocation_id(self, invocation_id: str) -> None:
        setattr(self, TASK_ATTRIBUTE, invocation_id)


def _task_factory(
    loop: asyncio.AbstractEventLoop, coro: Any, context: Any = None, **kwargs: Any
) -> ContextEnabledTask:
    return ContextEnabledTask(coro, loop=loop, context=context, **kwargs)


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Every task created on `loop` from now on is a `ContextEnabledTask` (the worker does this at start)."""
    loop.set_task_factory(_task_factory)


def current_invocation_id() -> str | None:
    """The worker's `get_current_invocation_id()`: the current task's id, else the thread-local one."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop (a thread-pool thread)
        task = None
    found = getattr(task, TASK_ATTRIBUTE, None) if task is not None else None
    return found or getattr(invocation_id_local, "invocation_id", None)


def start_invocation(coro: Coroutine[Any, Any, T], invocation_id: str) -> asyncio.Task[T]:
    """Run an invocation the way the worker does: in a task of its own, created outside any request
    (a fresh contextvars context, so nothing set in the function body is seen by the response's
    sender, nor the other way round), tagged with the invocation id."""
    task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
    setattr(task, TASK_ATTRIBUTE, invocation_id)
    return task


#: funchost's console format: the invocation id each line would be sent to the host with.
LOG_FORMAT = "[%(asctime)s] [%(worker_invocation_id)s] %(levelname)s %(name)s: %(message)s"


class WorkerLogFormatter(logging.Formatter):
    """Fills `%(worker_invocation_id)s` as the worker's handler would attribute the record (`-`: none).

    Formatting happens in `emit`, in the task that logged, which is where the worker looks too. Host
    lines (funchost's own "Executing"/"Executed") pass `extra={"host_invocation_id": ...}`: the host
    knows which invocation it is talking about, whatever task it logs from.
    """

    def format(self, record: logging.LogRecord) -> str:
        host_id = getattr(record, "host_invocation_id", None)
        record.worker_invocation_id = host_id or current_invocation_id() or "-"
        return super().format(record)
