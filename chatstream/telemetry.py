"""OpenTelemetry export to Application Insights, only when a connection string is configured.

Without `APPLICATIONINSIGHTS_CONNECTION_STRING` nothing is imported and every call here is a cheap
no-op, so local runs and tests pay nothing. With it, the Azure Monitor distro exports one span per
chat request (attributes follow OpenTelemetry's GenAI conventions where one exists) and the
`chatstream` loggers, correlated with that span.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatstream.outcome import RunRecord

log = logging.getLogger("chatstream.telemetry")

_tracer: Any = None


def configure(client_id: str | None = None) -> bool:
    """Returns whether export is on. Never raises: telemetry must not take the app down."""
    global _tracer
    connection_string = os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
    if not connection_string or _tracer is not None:
        return _tracer is not None
    try:
        from azure.monitor.opentelemetry import configure_azure_monitor
        from opentelemetry import trace

        options: dict[str, Any] = {
            "connection_string": connection_string,
            "logger_name": "chatstream",
            "enable_live_metrics": False,
        }
        auth = os.environ.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
        if "Authorization=AAD" in auth:
            # Keyless ingestion (local auth is disabled on the resource): the app's managed identity.
            from azure.identity import ManagedIdentityCredential

            options["credential"] = ManagedIdentityCredential(client_id=client_id)
        configure_azure_monitor(**options)
        # Each exported record names its request as a field (customDimensions.request_id).
        from chatstream.logcontext import RequestFilter

        for handler in logging.getLogger("chatstream").handlers:
            handler.addFilter(RequestFilter())
        # The exporter's own HTTP calls would otherwise be logged (and exported) at INFO.
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
        _tracer = trace.get_tracer("chatstream")
    except Exception:
        log.exception("Application Insights export could not be configured; continuing without it")
        return False
    log.info("Application Insights export is on")
    return True


def start_span(name: str, attributes: dict[str, Any]) -> Any:
    """A started span, or None when export is off."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, attributes=attributes)


def finish(run: RunRecord, elapsed: float) -> None:
    """Record what the run did on its span and end it."""
    span = run.span
    if span is None:
        return
    ttft = run.ttft
    attributes: dict[str, Any] = {
        "gen_ai.request.model": run.deployment,
        "chat.outcome": run.outcome,
        "chat.cancelled": run.outcome == "cancelled",
        "chat.deltas": run.deltas,
        "chat.duration_ms": round(elapsed * 1000, 1),
    }
    if run.model:
        attributes["gen_ai.response.model"] = run.model
    if run.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [run.finish_reason]
    if ttft is not None:
        attributes["chat.time_to_first_token_ms"] = round(ttft * 1000, 1)
        streaming_time = elapsed - ttft
        if run.usage and streaming_time > 0:
            attributes["chat.tokens_per_second"] = round(run.usage["completion_tokens"] / streaming_time, 1)
    if run.usage:
        attributes["gen_ai.usage.input_tokens"] = run.usage["prompt_tokens"]
        attributes["gen_ai.usage.output_tokens"] = run.usage["completion_tokens"]
    span.set_attributes(attributes)
    if run.outcome.startswith("error"):
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, run.outcome))
    span.end()


def use_span(span: Any) -> Any:
    """Context manager that makes `span` current (so log records carry its trace id)."""
    if span is None:
        import contextlib

        return contextlib.nullcontext()
    from opentelemetry import trace

    return trace.use_span(span, end_on_exit=False)
