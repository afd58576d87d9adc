"""The Python worker's half of an invocation: call the user function, hand back its result.

The worker's part ends when the function *returns*: it runs in a task of its own
(`worker.start_invocation`), and a StreamingResponse's generator then runs in the server's
request task, exactly as with the real worker, so we never touch the body here. The host's
"Executed" line waits for the whole response (`asgi.FunctionHost`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
from fastapi import Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from funchost.registry import HttpFunction
from funchost.worker import invocation_id_local

log = logging.getLogger("funchost")


@dataclass(eq=False)
class Invocation:
    """One request's invocation, from the host's "Executing" line to its "Executed" line."""

    function: HttpFunction
    route_values: dict[str, str]
    invocation_id: str
    started: float = field(default_factory=time.perf_counter)
    failed: bool = False


class InvocationContext(func.Context):
    """What the worker passes as `context` (no tracing/retry data locally)."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        """The worker's one process-wide thread-local, shared by every invocation (not per context)."""
        return invocation_id_local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


def internal_error() -> PlainTextResponse:
    """A bare 500, never a stack trace: the details go to the log only."""
    return PlainTextResponse("Internal Server Error", status_code=500)


def _run_sync(invocation_id: str, fn: Any, kwargs: dict[str, Any]) -> Any:
    """The worker's `_run_sync_func`: the pool thread carries the id while the function runs."""
    invocation_id_local.invocation_id = invocation_id
    try:
        return fn(**kwargs)
    finally:
        invocation_id_local.invocation_id = None


async def invoke(invocation: Invocation, request: Request, function_directory: str) -> Any:
    """Run one invocation; returns whatever FastAPI should send (Response or plain value).

    Marks `invocation.failed` when the function raised or returned nothing."""
    function = invocation.function
    invocation_id = invocation.invocation_id
    kwargs: dict[str, Any] = {function.trigger_arg: request}
    if function.wants_context:
        kwargs["context"] = InvocationContext(invocation_id, function.name, function_directory)
    # As the worker: set for every invocation on the loop's thread and never cleared, so the
    # last invocation started is what code without a task id of its own is attributed to.
    invocation_id_local.invocation_id = invocation_id
    try:
        fn = function.user_function
        if inspect.iscoroutinefunction(fn):
            result = await fn(**kwargs)
        else:
            # The worker runs `def` functions in a thread pool so they can't block the loop.
            result = await run_in_threadpool(functools.partial(_run_sync, invocation_id, fn, kwargs))
        if result is None:
            invocation.failed = True
            log.error(
                "Function '%s' returned None (Id=%s); HTTP functions must return a response",
                function.name,
                invocation_id,
            )
            return internal_error()
        return result
    except HTTPException:
        # FastAPI's own handler turns it into the status + {"detail": ...}, as in Azure.
        invocation.failed = True
        raise
    except Exception:
        invocation.failed = True
        log.exception("Function '%s' raised (Id=%s)", function.name, invocation_id)
        return internal_error()
