"""The Python worker's half of an invocation: call the user function, hand back its result.

The invocation ends when the function *returns*; a StreamingResponse's generator then
runs in the server's request task, exactly as with the real worker, so we never touch
the body here.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from typing import Any

import azure.functions as func
from fastapi import Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from funchost.registry import HttpFunction

log = logging.getLogger("funchost")


class InvocationContext(func.Context):
    """What the worker passes as `context` (no tracing/retry data locally)."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._tls = threading.local()
        self._tls.invocation_id = invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._tls

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


async def invoke(
    function: HttpFunction, request: Request, invocation_id: str, function_directory: str
) -> Any:
    """Run one invocation; returns whatever FastAPI should send (Response or plain value)."""
    kwargs: dict[str, Any] = {function.trigger_arg: request}
    if function.wants_context:
        kwargs["context"] = InvocationContext(invocation_id, function.name, function_directory)
    log.info("Executing 'Functions.%s' (Reason='HTTP request', Id=%s)", function.name, invocation_id)
    started = time.perf_counter()
    outcome = "Succeeded"
    try:
        fn = function.user_function
        if inspect.iscoroutinefunction(fn):
            result = await fn(**kwargs)
        else:
            # The worker runs `def` functions in a thread pool so they can't block the loop.
            result = await run_in_threadpool(functools.partial(fn, **kwargs))
        if result is None:
            outcome = "Failed"
            log.error(
                "Function '%s' returned None (Id=%s); HTTP functions must return a response",
                function.name,
                invocation_id,
            )
            return internal_error()
        return result
    except HTTPException:
        # FastAPI's own handler turns it into the status + {"detail": ...}, as in Azure.
        outcome = "Failed"
        raise
    except Exception:
        outcome = "Failed"
        log.exception("Executed 'Functions.%s' raised (Id=%s)", function.name, invocation_id)
        return internal_error()
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.info(
            "Executed 'Functions.%s' (%s, Id=%s, Duration=%.0fms)",
            function.name,
            outcome,
            invocation_id,
            elapsed_ms,
        )
