"""Which request a log record belongs to, bound in the task that does the work.

Under the Functions Python worker the function body and the stream's sender are different asyncio
tasks: contextvars set in the body are not seen while streaming, and the worker's own attribution
falls back to a thread-local naming whichever invocation started last. So the request is bound twice,
where each part runs: by the endpoint for the body and by the response for the stream (tasks created
from either inherit it). Binding does three things:

- a contextvar that `RequestFilter` turns into `record.request_id` (the telemetry handler's
  structured field; the text of our lines names the request too);
- the worker's invocation id attribute on the current task, so the worker sends the records to the
  host with this invocation's id (only when the task is the worker's kind; nothing otherwise);
- the request's telemetry span made current, so exported records carry its operation id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from chatstream import telemetry

#: The attribute the worker's `ContextEnabledTask` keeps the invocation id in (the 4.x worker and the
#: 3.13 proxy worker alike); its tasks copy it to the tasks they create.
WORKER_TASK_ATTRIBUTE = "__azure_function_invocation_id__"


class RequestLog:
    """One request's binding in one task; `use_span` adds its span once the run exists."""

    __slots__ = ("_stack", "request_id")

    def __init__(self, request_id: str, stack: contextlib.ExitStack) -> None:
        self.request_id = request_id
        self._stack = stack

    def use_span(self, span: Any) -> None:
        """Make `span` current until the binding ends (tasks created from here on inherit it)."""
        if span is not None:
            self._stack.enter_context(telemetry.use_span(span))


_current: ContextVar[RequestLog | None] = ContextVar("chatstream_request", default=None)


def current_request_id() -> str | None:
    binding = _current.get()
    return binding.request_id if binding is not None else None


@contextlib.contextmanager
def bind(request_id: str, span: Any = None) -> Iterator[RequestLog]:
    """Attribute everything logged in this task (and the tasks it creates) to `request_id`.

    Under Azure Functions `request_id` is the invocation id (`x-ms-invocation-id`)."""
    tag_worker_task(request_id)
    with contextlib.ExitStack() as stack:
        binding = RequestLog(request_id, stack)
        token = _current.set(binding)
        stack.callback(_current.reset, token)
        binding.use_span(span)
        yield binding


def tag_worker_task(invocation_id: str) -> None:
    """Set the worker's invocation id on the current task, if it is one of the worker's tasks.

    The attribute is only set on a task whose class declares it (`AZURE_INVOCATION_ID`): outside the
    worker nothing reads it, and plain asyncio tasks take no attributes."""
    task = asyncio.current_task()
    if task is not None and getattr(type(task), "AZURE_INVOCATION_ID", None) == WORKER_TASK_ATTRIBUTE:
        setattr(task, WORKER_TASK_ATTRIBUTE, invocation_id)


class RequestFilter(logging.Filter):
    """Stamps `record.request_id` from the binding of the task that logged (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = current_request_id()
            if request_id is not None:
                record.request_id = request_id
        return True
