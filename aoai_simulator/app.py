"""The ASGI app: Azure OpenAI chat-completions over HTTP, with timing, faults and stats.

Raw ASGI rather than Starlette: streaming needs direct control over `receive()` (to see the client
disconnect while we are still producing) and over how many SSE events go into one `send()` (batching
is what makes a zero-delay stream fast), and the app has only four routes.

Timing decision: like Azure, the status line, headers and the prompt-filter chunk go out immediately;
the time to first token is spent before the role chunk and the first content chunk, which are sent
together. Tokens are paced on an absolute schedule so the per-token overhead does not accumulate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from . import errors
from .chunks import DONE, PROMPT_FILTER_EVENT, ChunkEncoder, completion_body
from .config import SimulatorConfig
from .faults import AttemptCounter, FaultPlan, FaultSpecError, parse_fault
from .ratelimit import RateDecision, RateLimiter
from .reasoning import hidden_tokens, rejection
from .stats import RequestRecord, SimulatorStats
from .text import answer_tokens, messages_digest, prompt_tokens
from .tools import PlannedCall, plan_tool_calls

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024 * 1024
#: Events coalesced into one `send()` when there is no delay between tokens.
BATCH_EVENTS = 128
#: Waits longer than this watch for a disconnect instead of sleeping blindly.
_WATCHED_WAIT_S = 0.05

_AZURE_PREFIX = "/openai/deployments/"
_COMPLETIONS_SUFFIX = "/chat/completions"
_OPENAI_PATHS = ("/v1/chat/completions", "/openai/v1/chat/completions")
#: What Azure sends when generation fails after the stream started (then it ends the body).
_STREAM_ERROR_EVENT = (
    b'data: {"error":{"code":"server_error","message":"The server had an error while processing your '
    b'request. Sorry about that!"}}\n\n'
)
#: `[sim:SPEC]` in the last message (only with `prompt_faults`); SPEC has no brackets.
_PROMPT_FAULT = re.compile(r"\[sim:([^\[\]]*)\]")


class _HTTPError(Exception):
    """Short-circuits request handling with an Azure-shaped error response."""

    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []


class _ClientGone(Exception):
    """The client disconnected before we finished reading its request."""


@dataclass
class _Request:
    """A validated chat-completions request plus everything derived from its headers."""

    record: RequestRecord
    body: Mapping[str, Any]
    messages: list[Any]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    answer_len: int
    ttft_s: float
    token_delay_s: float
    plan: FaultPlan
    base_headers: list[tuple[bytes, bytes]]
    tool_calls: list[PlannedCall]
    #: Hidden tokens spent before the answer (reasoning deployments); they use up `max_tokens` first.
    reasoning_tokens: int = 0
    model: str = ""


class _Disconnect:
    """Watches `receive()` in the background so a streaming loop learns the client left."""

    def __init__(self, receive: Receive) -> None:
        self.event = asyncio.Event()
        self._task = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.event.set()
                return

    @property
    def is_set(self) -> bool:
        return self.event.is_set()

    async def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if the client disconnected meanwhile."""
        if seconds <= 0:
            return self.event.is_set()
        if seconds < _WATCHED_WAIT_S:
            await asyncio.sleep(seconds)
            return self.event.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)
        return self.event.is_set()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _transport(send: Send) -> asyncio.Transport | None:
    """Uvicorn's send is a bound method of the request cycle, which holds the socket's transport."""
    return getattr(getattr(send, "__self__", None), "transport", None)


async def _abort_connection(send: Send) -> None:
    """Close the socket without finishing the HTTP message (no chunked terminator, no response)."""
    transport = _transport(send)
    if transport is None:
        raise ConnectionAbortedError("simulated connection drop")  # the server closes on app errors
    deadline = time.monotonic() + 2.0
    # Let bytes already written reach the client, so "drop after N chunks" means N were delivered.
    # The transport offers no drain event for this, so poll briefly.
    while transport.get_write_buffer_size() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    transport.abort()
    # abort() reports connection_lost on the next loop turns; let the server see it before we return.
    for _ in range(3):
        await asyncio.sleep(0)


async def _send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _int_header(scope: Scope, name: str) -> float | None:
    raw = _header(scope, name.encode())
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise _HTTPError(400, errors.invalid_request(f"Header {name} must be a number.")) from exc
    if value < 0:
        raise _HTTPError(400, errors.invalid_request(f"Header {name} must not be negative."))
    return value


class SimulatorApp:
    """ASGI callable; one instance per server, holding its config, stats and counters."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.stats = SimulatorStats(self.config.history_size)
        self.attempts = AttemptCounter()
        self.limiter = RateLimiter(self.config.requests_per_minute, self.config.tokens_per_minute)

    def reset(self) -> None:
        self.stats.reset()
        self.attempts.reset()
        self.limiter.reset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/_sim/"):
            await self._admin(path, method, send)
            return
        deployment: str | None = None
        if path.startswith(_AZURE_PREFIX) and path.endswith(_COMPLETIONS_SUFFIX):
            deployment = path[len(_AZURE_PREFIX) : -len(_COMPLETIONS_SUFFIX)]
            if not deployment or "/" in deployment:
                await _send_json(send, 404, errors.resource_not_found(), [])
                return
        elif path not in _OPENAI_PATHS:
            await _send_json(send, 404, errors.resource_not_found(), [])
            return
        if method != "POST":
            await _send_json(send, 405, errors.invalid_request(f"Method {method} not allowed."), [])
            return
        await self._chat(scope, receive, send, deployment)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _admin(self, path: str, method: str, send: Send) -> None:
        if path == "/_sim/stats" and method == "GET":
            body = json.dumps(self.stats.snapshot(), default=str).encode()
            await _send_json(send, 200, body, [])
        elif path == "/_sim/reset" and method == "POST":
            self.reset()
            await _send_json(send, 200, b'{"reset":true}', [])
        elif path == "/_sim/health" and method == "GET":
            await _send_json(send, 200, b'{"status":"ok"}', [])
        else:
            await _send_json(send, 404, errors.resource_not_found(), [])

    # -- request handling -------------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send, deployment: str | None) -> None:
        request_id = str(uuid.uuid4())
        record = self.stats.record(
            RequestRecord(request_id=request_id, path=scope["path"], deployment=deployment)
        )
        base_headers = [
            (b"apim-request-id", request_id.encode()),
            (b"x-request-id", str(uuid.uuid4()).encode()),
        ]
        client_request_id = _header(scope, b"x-ms-client-request-id")
        if client_request_id:
            base_headers.append((b"x-ms-client-request-id", client_request_id.encode()))
        base_headers.append((b"x-ms-region", self.config.region.encode()))
        started = time.perf_counter()
        try:
            request = await self._prepare(scope, receive, record, base_headers)
            await self._respond(request, receive, send)
        except _HTTPError as exc:
            record.status = exc.status
            record.outcome = "error"
            await _send_json(send, exc.status, exc.body, base_headers + exc.headers)
        except _ClientGone:
            record.outcome = "client_closed"
            record.client_disconnected = True
        except asyncio.CancelledError:
            if record.outcome == "in_progress":
                record.outcome = "cancelled"
            raise
        finally:
            record.duration_ms = round((time.perf_counter() - started) * 1000, 3)

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _HTTPError(413, errors.invalid_request("Request body too large."))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _prepare(
        self, scope: Scope, receive: Receive, record: RequestRecord, base_headers: list[tuple[bytes, bytes]]
    ) -> _Request:
        """Validate in Azure's order: auth, api-version, deployment, body; then resolve faults and limits."""
        config = self.config
        api_key = _header(scope, b"api-key")
        authorization = _header(scope, b"authorization") or ""
        bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        if not (bearer or (api_key is not None and config.api_key_ok(api_key.strip()))):
            raise _HTTPError(401, errors.access_denied())

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        api_version = (query.get("api-version") or [""])[0]
        record.api_version = api_version or None
        if record.deployment is not None:
            if not api_version:
                raise _HTTPError(400, errors.api_version_missing())
            if not config.api_version_ok(api_version):
                raise _HTTPError(400, errors.api_version_unsupported())
            if not config.deployment_known(record.deployment):
                raise _HTTPError(404, errors.deployment_not_found())

        raw = await self._read_body(receive)
        body = self._parse_body(raw)
        if record.deployment is None:
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise _HTTPError(400, errors.invalid_request("you must provide a model parameter", "model"))
            if not config.deployment_known(model):
                raise _HTTPError(404, errors.deployment_not_found())
            record.deployment = model
        deployment = record.deployment
        base_headers.append((b"x-ms-deployment-name", deployment.encode()))
        record.params = {k: v for k, v in body.items() if k not in ("messages", "tools")}
        reasoning = config.is_reasoning(deployment)
        rejected = rejection(body, config, reasoning)
        if rejected is not None:
            raise _HTTPError(400, rejected)

        messages: list[Any] = body["messages"]
        stream = bool(body.get("stream", False))
        stream_options = body.get("stream_options") or {}
        include_usage = stream and bool(stream_options.get("include_usage", False))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        record.messages = messages
        record.stream = stream
        record.include_usage = include_usage
        record.max_tokens = max_tokens
        record.prompt_tokens = prompt_tokens(messages)
        hidden = record.reasoning_tokens = hidden_tokens(body, config, max_tokens) if reasoning else 0

        sim_tokens = _int_header(scope, "x-sim-tokens")
        answer_len = int(sim_tokens) if sim_tokens is not None else config.answer_tokens
        answer_len = min(answer_len, config.max_answer_tokens)
        ttft = _int_header(scope, "x-sim-ttft-ms")
        delay = _int_header(scope, "x-sim-token-delay-ms")

        plan = self._fault_plan(scope, deployment, raw, record, messages)
        if plan.slow_first_token_ms is not None:
            ttft = plan.slow_first_token_ms
        if plan.tokens is not None:
            answer_len = min(plan.tokens, config.max_answer_tokens)
        if plan.token_delay_ms is not None:
            delay = plan.token_delay_ms

        estimate = record.prompt_tokens + (max_tokens if max_tokens is not None else answer_len)
        decision = self.limiter.check(deployment, estimate)
        base_headers.extend(decision.headers())
        if not decision.allowed:
            raise self._too_many(decision, api_version)
        return _Request(
            record=record,
            body=body,
            messages=messages,
            stream=stream,
            include_usage=include_usage,
            max_tokens=max_tokens,
            answer_len=answer_len,
            # A reasoning deployment thinks before its first visible token.
            ttft_s=((config.ttft_ms if ttft is None else ttft) + hidden * config.reasoning_token_ms) / 1000,
            token_delay_s=(config.token_delay_ms if delay is None else delay) / 1000,
            plan=plan,
            base_headers=base_headers,
            tool_calls=plan_tool_calls(
                messages, body.get("tools"), body.get("tool_choice"), messages_digest(messages)
            ),
            reasoning_tokens=hidden,
            model=config.reasoning_model if reasoning else config.model,
        )

    @staticmethod
    def _parse_body(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _HTTPError(
                400, errors.invalid_request("We could not parse the JSON body of your request.")
            ) from exc
        if not isinstance(body, dict):
            raise _HTTPError(400, errors.invalid_request("The request body must be a JSON object."))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HTTPError(400, errors.invalid_request("'messages' is a required property", "messages"))
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _HTTPError(
                    400,
                    errors.invalid_request(f"Invalid value for 'messages[{index}]'.", f"messages[{index}]"),
                )
        if "stream" in body and not isinstance(body["stream"], bool):
            raise _HTTPError(400, errors.invalid_request("'stream' must be a boolean.", "stream"))
        options = body.get("stream_options")
        if options is not None:
            if not isinstance(options, dict):
                raise _HTTPError(
                    400, errors.invalid_request("'stream_options' must be an object.", "stream_options")
                )
            if not body.get("stream"):
                raise _HTTPError(
                    400,
                    errors.invalid_request(
                        "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                        "stream_options",
                    ),
                )
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise _HTTPError(400, errors.invalid_request(f"'{name}' must be a positive integer.", name))
        return body

    def _prompt_fault(self, messages: list[Any]) -> str | None:
        if not self.config.prompt_faults:
            return None
        content = messages[-1].get("content")
        match = _PROMPT_FAULT.search(content) if isinstance(content, str) else None
        return match.group(1) if match else None

    def _fault_plan(
        self, scope: Scope, deployment: str, raw: bytes, record: RequestRecord, messages: list[Any]
    ) -> FaultPlan:
        spec = (
            _header(scope, b"x-sim-fault")
            or self._prompt_fault(messages)
            or self.config.fault_for_deployment(deployment)
            or ""
        )
        if not spec.strip():
            return FaultPlan()
        try:
            plan = parse_fault(spec)
        except FaultSpecError as exc:
            raise _HTTPError(400, errors.invalid_request(f"x-sim-fault: {exc}")) from exc
        record.fault = plan.spec
        if plan.times is not None:
            # Retries of one logical request share a key: explicit, or the same spec + deployment + body.
            key = (
                _header(scope, b"x-sim-fault-key")
                or hashlib.sha256(b"\0".join((plan.spec.encode(), deployment.encode(), raw))).hexdigest()
            )
            record.attempt = self.attempts.next_attempt(key)
            if record.attempt > plan.times:  # the fault is spent; the pacing still applies
                return FaultPlan(spec=plan.spec, tokens=plan.tokens, token_delay_ms=plan.token_delay_ms)
        return plan

    @staticmethod
    def _too_many(decision: RateDecision, api_version: str, retry_after_s: float | None = None) -> _HTTPError:
        retry = decision.retry_after_s if retry_after_s is None else retry_after_s
        headers = [
            (b"retry-after", str(max(1, round(retry))).encode()),
            (b"retry-after-ms", str(round(retry * 1000)).encode()),
            (b"x-ratelimit-reset-requests", str(max(1, round(retry))).encode()),
            (b"x-ratelimit-reset-tokens", str(max(1, round(retry))).encode()),
        ]
        return _HTTPError(429, errors.rate_limited(api_version, retry, decision.kind or "token"), headers)

    # -- responses --------------------------------------------------------------------------------

    async def _respond(self, request: _Request, receive: Receive, send: Send) -> None:
        plan = request.plan
        if plan.before_headers:
            await self._fault_before_headers(request, receive, send)
            return
        if request.stream:
            await self._stream(request, receive, send)
            return
        await self._complete(request, receive, send)

    async def _fault_before_headers(self, request: _Request, receive: Receive, send: Send) -> None:
        plan = request.plan
        record = request.record
        api_version = record.api_version or ""
        if plan.reset:
            record.outcome = "reset"
            await _abort_connection(send)
            return
        if plan.timeout_s is not None or plan.hold_default:
            hold = plan.timeout_s if plan.timeout_s is not None else self.config.hold_seconds
            watcher = _Disconnect(receive)
            try:
                gone = await watcher.wait(hold)
            finally:
                await watcher.close()
            record.outcome = "timeout"
            record.client_disconnected = gone
            if gone:
                return
            raise _HTTPError(408, errors.for_status(408))
        if plan.content_filter_prompt:
            raise _HTTPError(400, errors.content_filter_prompt())
        status = plan.status or 500
        headers: list[tuple[bytes, bytes]] = []
        if status == 429 or plan.retry_after_s is not None:
            retry = plan.retry_after_s if plan.retry_after_s is not None else 1.0
            headers = [
                (b"retry-after", str(max(0, round(retry))).encode()),
                (b"retry-after-ms", str(round(retry * 1000)).encode()),
            ]
        raise _HTTPError(status, errors.for_status(status, api_version, plan.retry_after_s), headers)

    def _plan_tokens(self, request: _Request) -> tuple[tuple[str, ...], str]:
        """Tokens to emit and the finish reason, after max_tokens and content-filter faults."""
        tokens = answer_tokens(request.messages, request.answer_len)
        finish = "stop"
        budget = None if request.max_tokens is None else request.max_tokens - request.reasoning_tokens
        if budget is not None and budget < len(tokens):
            tokens = tokens[:budget]
            finish = "length"
        cut = request.plan.content_filter_after
        if cut is not None and cut < len(tokens):
            tokens = tokens[:cut]
            finish = "content_filter"
        return tokens, finish

    async def _complete(self, request: _Request, receive: Receive, send: Send) -> None:
        """Non-streaming: wait as long as generating would take, then answer in one body."""
        record = request.record
        tokens, finish = self._plan_tokens(request)
        calls = request.tool_calls
        if calls:
            tokens = tuple(fragment for call in calls for fragment in call.fragments())
            finish = "tool_calls"
        plan = request.plan
        watcher = _Disconnect(receive)
        try:
            gone = await watcher.wait(request.ttft_s + request.token_delay_s * len(tokens))
            if not gone and plan.stall_after is not None:
                gone = await watcher.wait(self.config.hold_seconds)
                record.outcome = "stalled"
        finally:
            await watcher.close()
        if gone:
            record.client_disconnected = True
            if record.outcome == "in_progress":
                record.outcome = "client_closed"
            return
        if plan.drop_after is not None:
            record.outcome = "dropped"
            await _abort_connection(send)
            return
        body = completion_body(
            model=request.model,
            system_fingerprint=self.config.system_fingerprint,
            content="".join(tokens),
            finish_reason=finish,
            prompt=record.prompt_tokens,
            completion=len(tokens),
            tool_calls=[
                {"function": {"arguments": c.arguments, "name": c.name}, "id": c.call_id, "type": "function"}
                for c in calls
            ],
            reasoning=request.reasoning_tokens,
        )
        record.status = 200
        record.chunks_sent = len(tokens)
        record.finish_reason = finish
        await _send_json(send, 200, body, request.base_headers)
        record.outcome = "completed"

    async def _stream(self, request: _Request, receive: Receive, send: Send) -> None:
        record = request.record
        record.status = 200
        self.stats.stream_opened()
        watcher = _Disconnect(receive)
        try:
            await self._stream_body(request, send, watcher)
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        except Exception:
            record.outcome = "error"
            raise
        finally:
            if watcher.is_set:
                record.client_disconnected = True
            await watcher.close()
            self.stats.stream_closed(record)

    async def _stream_body(self, request: _Request, send: Send, watcher: _Disconnect) -> None:
        record = request.record
        plan = request.plan
        tokens, finish = self._plan_tokens(request)
        encoder = ChunkEncoder(request.model, self.config.system_fingerprint, request.include_usage)
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *request.base_headers,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": PROMPT_FILTER_EVENT, "more_body": True})

        if await watcher.wait(request.ttft_s):
            record.outcome = "client_closed"
            return
        if request.tool_calls:
            await self._stream_tool_calls(request, send, watcher, encoder)
            return
        limit = len(tokens)
        for name in ("stall_after", "drop_after", "error_after"):
            value = getattr(plan, name)
            if value is not None:
                limit = min(limit, value)
        delay = request.token_delay_s
        sent = 0
        pending: list[bytes] = [encoder.role()]
        if delay <= 0:
            content = encoder.content
            while sent < limit:
                end = min(limit, sent + BATCH_EVENTS)
                pending.extend(content(token) for token in tokens[sent:end])
                await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
                pending = []
                record.chunks_sent = sent = end
                await asyncio.sleep(0)  # lets the disconnect watcher run
                if watcher.is_set:
                    record.outcome = "client_closed"
                    return
        else:
            next_at = time.monotonic()
            while sent < limit:
                pending.append(encoder.content(tokens[sent]))
                await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
                pending = []
                record.chunks_sent = sent = sent + 1
                if sent < limit:
                    next_at += delay
                    if await watcher.wait(next_at - time.monotonic()):
                        record.outcome = "client_closed"
                        return
        if pending:  # zero tokens to send: the role chunk still belongs to the stream
            await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})

        if plan.stall_after is not None and plan.stall_after < len(tokens):
            record.outcome = "stalled"
            await watcher.wait(self.config.hold_seconds)
            return
        if plan.drop_after is not None and plan.drop_after < len(tokens):
            record.outcome = "dropped"
            await _abort_connection(send)
            return
        if plan.error_after is not None and plan.error_after < len(tokens):
            record.outcome = "error"
            await send({"type": "http.response.body", "body": _STREAM_ERROR_EVENT, "more_body": False})
            return

        tail = [encoder.content_filtered() if finish == "content_filter" else encoder.finish(finish)]
        if request.include_usage:
            tail.append(encoder.usage(record.prompt_tokens, sent, request.reasoning_tokens))
        tail.append(DONE)
        await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
        record.finish_reason = finish
        record.outcome = "client_closed" if watcher.is_set else "completed"

    async def _stream_tool_calls(
        self, request: _Request, send: Send, watcher: _Disconnect, encoder: ChunkEncoder
    ) -> None:
        """Calls one after another (index 0, 1, ...), each as id+name then argument fragments."""
        record = request.record
        delay = request.token_delay_s
        sent = 0
        for index, call in enumerate(request.tool_calls):
            events = [encoder.tool_call(index, call.call_id, call.name, "")]
            events += [encoder.tool_call(index, None, None, fragment) for fragment in call.fragments()]
            for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
                sent += 1
                record.chunks_sent = sent
                if delay > 0:
                    gone = await watcher.wait(delay)
                else:
                    await asyncio.sleep(0)  # lets the disconnect watcher run
                    gone = watcher.is_set
                if gone:
                    record.outcome = "client_closed"
                    return
        tail = [encoder.finish("tool_calls")]
        if request.include_usage:
            tail.append(encoder.usage(record.prompt_tokens, sent, request.reasoning_tokens))
        tail.append(DONE)
        await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
        record.finish_reason = "tool_calls"
        record.outcome = "client_closed" if watcher.is_set else "completed"
