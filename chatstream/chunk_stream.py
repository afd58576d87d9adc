"""Chat-completion chunks as plain dicts, parsed straight from the upstream's SSE body.

langchain-openai accepts dict chunks from its client (it only calls `model_dump()` on SDK objects).
So the openai SDK still does everything up to the response (URL, api-key or Entra token, retries,
status errors), and this module reads the body itself with orjson: no per-chunk pydantic models.

Two fidelity fixes ride along: only choice 0 is forwarded (LangChain would read `choices[0]` of every
chunk whatever its index, mixing n>1 answers), and `delta.refusal` text is kept (LangChain drops it;
`lean_model` surfaces it as `additional_kwargs["refusal"]`).

Coalescing: content-only chunks of one answer that arrived in the same network read are merged into
one chunk (their text concatenated). Nothing is ever held back to wait for more, and nothing is lost:
text decoded before a failure in the same read is yielded before the failure is raised.

What counts as a complete answer: the stream said `[DONE]` after at least one chunk of choice 0, or
choice 0 had a `finish_reason` (then even an empty answer is a legitimate one). Anything else that ends
(an empty body, a body cut short, `[DONE]` with nothing before it) raises `StreamTruncated`. Bytes
that are not a chat-completion stream (a JSON or HTML body, invalid JSON, an unknown shape, an event
over `MAX_EVENT_BYTES`) raise `UpstreamProtocolError`. Both are the upstream's fault, never ours.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

import httpx2
import openai
import orjson

from chatstream.aiohttp_transport import BODY_READER, BodyReader
from chatstream.direct import DirectChat, DirectResponse
from chatstream.upstream import StreamTruncated, UpstreamProtocolError

Chunk = dict[str, Any]

_DATA = b"data:"
_DONE = b"[DONE]"
_loads = orjson.loads
_SSE_STARTS = (b"data:", b"event:", b":", b"id:", b"retry:")

#: The largest SSE event accepted (a chat-completion chunk is a few KB): a server that sends an endless
#: line costs at most this much memory before the answer fails with `upstream_error`.
MAX_EVENT_BYTES = 4 << 20

#: Content types that are certainly not an event stream (an error page or a JSON error at status 200).
_NOT_SSE = ("application/json", "text/html", "application/xml", "text/xml", "application/problem+json")


class EventTooLarge(ValueError):
    """An SSE event grew past the parser's limit without ending."""


class SSEParser:
    """Incremental SSE parser (any of \\n, \\r\\n, \\r line ends): bytes in, `(event, data)` pairs out.

    Linear in the bytes fed, however they are split: an incomplete event is kept in a bytearray that
    only grows by each new read (never re-copied or re-scanned), up to `max_event_bytes`."""

    __slots__ = ("_cr", "_pending", "_sse", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._pending = bytearray()
        self._cr = False  # the last read ended with \r, maybe half of a \r\n
        self._sse = False  # an event or a comment was seen: the body is an event stream
        self.max_event_bytes = max_event_bytes

    def looks_like_sse(self) -> bool:
        """Whether anything fed so far was an SSE event, a comment, or the start of one."""
        return self._sse or self._pending.startswith(_SSE_STARTS)

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete event held for the next read."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[tuple[bytes | None, bytes]]:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if b"\r" in data:
            if data.endswith(b"\r"):
                data = data[:-1]
                self._cr = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        pending = self._pending
        if pending:
            if b"\n\n" not in data and not (pending[-1] == 10 and data.startswith(b"\n")):
                pending += data
                if len(pending) > self.max_event_bytes:
                    pending.clear()
                    raise EventTooLarge(f"an SSE event is over {self.max_event_bytes} bytes")
                return []
            data = b"".join((pending, data))
            pending.clear()
        *complete, rest = data.split(b"\n\n")
        if rest:
            if len(rest) > self.max_event_bytes:
                raise EventTooLarge(f"an SSE event is over {self.max_event_bytes} bytes")
            pending += rest
        events: list[tuple[bytes | None, bytes]] = []
        for block in complete:
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append((None, block[6:]))  # the common case: one data line
                continue
            name: bytes | None = None
            lines: list[bytes] = []
            for line in block.split(b"\n"):
                if line.startswith(_DATA):
                    value = line[5:]
                    lines.append(value[1:] if value.startswith(b" ") else value)
                elif line.startswith(b"event:"):
                    name = line[6:].strip()
                elif line.startswith(_SSE_STARTS):
                    self._sse = True
            if lines:
                events.append((name, b"\n".join(lines)))
        if events:
            self._sse = True
        return events


class _Decoder:
    """Turns one SSE payload into the chunk LangChain gets, checking the shape it will rely on, and
    keeps track of whether the answer is complete. Anything else the upstream sent is its fault."""

    __slots__ = ("answered", "finished", "response")

    def __init__(self, response: httpx2.Response | DirectResponse) -> None:
        self.response = response  # its request is only read for an error (a direct one builds it then)
        self.answered = False  # choice 0 said something (text, a tool call, a refusal)
        self.finished = False  # choice 0 had a finish_reason

    @property
    def request(self) -> httpx2.Request:
        return self.response.request

    def junk(self, what: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"the model server sent {what}", self.request, body=None)

    def decode(self, payload: bytes) -> Chunk | None:
        try:
            chunk = _loads(payload)
        except orjson.JSONDecodeError:
            raise self.junk(f"an event that is not JSON: {payload[:200]!r}") from None
        # The common case, checked inline: one choice, index 0, a delta of text and nothing else.
        if type(chunk) is dict and "error" not in chunk and chunk.get("usage") is None:
            choices = chunk.get("choices")
            if type(choices) is list and len(choices) == 1:
                choice = choices[0]
                if type(choice) is dict:
                    delta = choice.get("delta")
                    if (
                        type(delta) is dict
                        and len(delta) == 1
                        and type(delta.get("content")) is str
                        and choice.get("index", 0) == 0
                        and choice.get("finish_reason") is None
                    ):
                        if delta["content"]:
                            self.answered = True
                        return chunk
        return self._decode_rest(chunk, payload)

    def _decode_rest(self, chunk: Any, payload: bytes) -> Chunk | None:
        if type(chunk) is not dict:
            raise self.junk(f"an event that is not a JSON object: {payload[:200]!r}")
        if chunk.get("error"):
            raise _error(chunk["error"], self.request)
        choices = chunk.get("choices")
        if not choices:
            if choices is not None and type(choices) is not list:
                raise self.junk(f"choices that are not a list: {payload[:200]!r}")
            if chunk.get("usage") is not None:
                _check_usage(chunk["usage"], self, payload)
            return chunk
        if type(choices) is not list:
            raise self.junk(f"choices that are not a list: {payload[:200]!r}")
        chunk = _choice_zero(chunk, choices, self, payload)
        if chunk is None:
            return None
        choice = chunk["choices"]
        if choice:
            if choice[0].get("finish_reason"):
                self.finished = True
            elif _says_something(choice[0]):
                self.answered = True
        if chunk.get("usage") is not None:
            _check_usage(chunk["usage"], self, payload)
        return chunk

    @property
    def complete(self) -> bool:
        return self.finished or self.answered


def _says_something(choice: Chunk) -> bool:
    """A delta with more than its role (text, a tool call, a refusal): a role chunk followed by `[DONE]`
    is an empty answer, not a complete one."""
    delta = choice.get("delta") or {}
    return any(value for key, value in delta.items() if key != "role")


def _check_choice(choice: Any, decoder: _Decoder, payload: bytes) -> Chunk:
    if type(choice) is not dict:
        raise decoder.junk(f"a choice that is not an object: {payload[:200]!r}")
    delta = choice.get("delta")
    if delta is not None:
        if type(delta) is not dict:
            raise decoder.junk(f"a delta that is not an object: {payload[:200]!r}")
        content = delta.get("content")
        if content is not None and type(content) is not str and type(content) is not list:
            raise decoder.junk(f"content that is not text: {payload[:200]!r}")
        if len(delta) > 2 or (len(delta) == 2 and "role" not in delta) or "content" not in delta:
            _check_delta_rest(delta, decoder, payload)
        elif delta.get("role") not in (None, "assistant"):
            raise decoder.junk(f"a delta of role {delta.get('role')!r}")
    finish = choice.get("finish_reason")
    if finish is not None and type(finish) is not str:
        raise decoder.junk(f"a finish_reason that is not text: {payload[:200]!r}")
    return choice


def _check_delta_rest(delta: Chunk, decoder: _Decoder, payload: bytes) -> None:
    """The rarer delta fields (tool calls, refusals, roles), in the shapes LangChain reads them."""
    if delta.get("role") not in (None, "assistant"):
        raise decoder.junk(f"a delta of role {delta.get('role')!r}")
    for key in ("refusal", "id"):
        value = delta.get(key)
        if value is not None and type(value) is not str:
            raise decoder.junk(f"a {key} that is not text: {payload[:200]!r}")
    function_call = delta.get("function_call")
    if function_call is not None and type(function_call) is not dict:
        raise decoder.junk(f"a function_call that is not an object: {payload[:200]!r}")
    tool_calls = delta.get("tool_calls")
    if tool_calls is None:
        return
    if type(tool_calls) is not list:
        raise decoder.junk(f"tool_calls that are not a list: {payload[:200]!r}")
    for call in tool_calls:
        if type(call) is not dict or type(call.get("function", {})) is not dict:
            raise decoder.junk(f"a tool call that is not an object: {payload[:200]!r}")
        index = call.get("index")
        if index is not None and type(index) is not int:
            raise decoder.junk(f"a tool call index that is not a number: {payload[:200]!r}")
        function = call.get("function") or {}
        for value in (call.get("id"), function.get("name"), function.get("arguments")):
            if value is not None and type(value) is not str:
                raise decoder.junk(f"a tool call field that is not text: {payload[:200]!r}")


def _check_usage(usage: Any, decoder: _Decoder, payload: bytes) -> None:
    if type(usage) is not dict:
        raise decoder.junk(f"usage that is not an object: {payload[:200]!r}")
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if value is not None and type(value) is not int:
            raise decoder.junk(f"a token count that is not a number: {payload[:200]!r}")
    for key in ("prompt_tokens_details", "completion_tokens_details"):
        value = usage.get(key)
        if value is not None and type(value) is not dict:
            raise decoder.junk(f"usage details that are not an object: {payload[:200]!r}")


def _choice_zero(chunk: Chunk, choices: list[Any], decoder: _Decoder, payload: bytes) -> Chunk | None:
    """The chunk with only choice index 0 (which always has a `delta` key, as the SDK's models do);
    None when nothing is left worth forwarding."""
    if len(choices) == 1:
        choice = _check_choice(choices[0], decoder, payload)
        if choice.get("index", 0) == 0:
            if "delta" not in choice:
                chunk["choices"] = [{**choice, "delta": None}]
            return chunk
    kept = [
        c if "delta" in c else {**c, "delta": None}
        for c in choices
        if _check_choice(c, decoder, payload).get("index", 0) == 0
    ]
    if not kept and not chunk.get("usage"):
        return None
    return {**chunk, "choices": kept}


def _plain_text(chunk: Chunk) -> str | None:
    """The text of a chunk that carries nothing but content (mergeable), else None."""
    choices = chunk.get("choices")
    if not choices or len(choices) != 1 or chunk.get("usage"):
        return None
    choice = choices[0]
    if choice.get("finish_reason") or choice.get("logprobs"):
        return None
    delta = choice.get("delta")
    if not delta:
        return None
    content = delta.get("content")
    if not isinstance(content, str):
        return None
    for key, value in delta.items():
        if key != "content" and value is not None:
            return None
    return content


def _error(error: Any, request: httpx2.Request) -> openai.APIError:
    """What the SDK raises for an `{"error": ...}` event in a stream."""
    message = error.get("message") if isinstance(error, dict) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return openai.APIError(message, request, body=error)


def _not_sse(response: httpx2.Response | DirectResponse) -> UpstreamProtocolError | None:
    """A 200 whose content type says it is no event stream (a JSON error or an HTML page)."""
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type in _NOT_SSE:
        return UpstreamProtocolError(
            f"the model server answered a stream with {content_type or 'no content type'}",
            response.request,
            body=None,
        )
    return None


class DictChunkStream:
    """The response of a streamed `create()`: an async context manager iterating dict chunks."""

    def __init__(self, response: httpx2.Response | DirectResponse, coalesce: bool = True) -> None:
        self.response = response
        self.coalesce = coalesce

    async def __aenter__(self) -> DictChunkStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.response.aclose()

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Chunk]:
        response = self.response
        parser = SSEParser()
        decoder = _Decoder(response)
        decode = decoder.decode
        coalesce = self.coalesce
        reader: BodyReader | None = response.extensions.get(BODY_READER)
        try:
            failure: openai.APIError | None = _not_sse(response)
            if failure is not None:
                raise failure
            # Our aiohttp transport: read its body directly, past the httpx2 wrapper layers.
            read: Callable[[], Awaitable[bytes]]
            if reader is not None:
                read = reader.read
            else:
                read = aiter(response.aiter_bytes()).__anext__
            received = False
            while True:
                try:
                    data = await read()
                except StopAsyncIteration:
                    break
                if not data:
                    if reader is None:
                        continue
                    break  # the reader's end of body
                received = True
                pending: Chunk | None = None
                pending_text: list[str] = []
                done = False
                failure = None
                try:
                    for _event, payload in parser.feed(data):
                        if payload.startswith(_DONE):
                            done = True
                            break
                        chunk = decode(payload)
                        if chunk is None:
                            continue
                        text = _plain_text(chunk) if coalesce else None
                        if pending is not None and text is not None and chunk.get("id") == pending.get("id"):
                            pending_text.append(text)
                            continue
                        if pending is not None:
                            yield _merged(pending, pending_text)
                            pending, pending_text = None, []
                        if text is not None:
                            pending, pending_text = chunk, [text]
                        else:
                            yield chunk
                except EventTooLarge as exc:
                    failure = decoder.junk(str(exc))
                except openai.APIError as exc:
                    failure = exc
                if pending is not None:
                    yield _merged(pending, pending_text)  # text before a failure is never dropped
                if failure is not None:
                    raise failure
                if done:
                    if not decoder.complete:
                        raise StreamTruncated(
                            "the model server ended an empty stream", response.request, body=None
                        )
                    if reader is not None:
                        reader.finish()  # ends now even if the server keeps the connection open
                    return
            if not decoder.finished:
                if received and not parser.looks_like_sse():
                    raise decoder.junk("a body that is not an event stream")
                what = (
                    "an empty body" if not decoder.answered and not parser.pending_bytes else "a cut stream"
                )
                raise StreamTruncated(
                    f"the model server ended {what} without [DONE] or a finish_reason",
                    response.request,
                    body=None,
                )
        except httpx2.TimeoutException as exc:
            raise openai.APITimeoutError(request=response.request) from exc
        except httpx2.RequestError as exc:
            raise openai.APIConnectionError(request=response.request) from exc
        finally:
            await response.aclose()


def _merged(chunk: Chunk, texts: list[str]) -> Chunk:
    if len(texts) == 1:
        return chunk
    choice = chunk["choices"][0]
    return {**chunk, "choices": [{**choice, "delta": {**choice["delta"], "content": "".join(texts)}}]}


class DictChunkCompletions:
    """Stands in for `AsyncOpenAI(...).chat.completions`; only streamed `create()` changes."""

    def __init__(self, completions: Any, coalesce: bool = True) -> None:
        self._completions = completions
        self.coalesce = coalesce
        self._direct: DirectChat | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._completions, name)

    async def create(self, **params: Any) -> Any:
        """A streamed request the SDK would build the usual way is sent directly (`chatstream.direct`).

        Otherwise the messages travel as `extra_body`: the same JSON body, but the SDK's recursive
        TypedDict transform (about half a millisecond per request for a short chat) skips them.
        LangChain hands over plain JSON-ready dicts, which that transform would leave unchanged."""
        direct = self._direct
        if direct is None:
            direct = self._direct = DirectChat(self._completions)
        if direct.takes(params) and await direct.ready():
            response = await direct.open(params)
            if response is not None:
                return DictChunkStream(response, self.coalesce)
        messages = params.get("messages")
        if isinstance(messages, list):
            extra = params.get("extra_body") or {}
            if "messages" not in extra:
                params = {**params, "messages": [], "extra_body": {**extra, "messages": messages}}
        result = await self._completions.create(**params)
        if params.get("stream") and isinstance(result, openai.AsyncStream):
            return DictChunkStream(result.response, self.coalesce)
        return result
