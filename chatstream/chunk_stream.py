"""Chat-completion chunks as plain dicts, parsed straight from the upstream's SSE body.

langchain-openai accepts dict chunks from its client (it only calls `model_dump()` on SDK objects).
So the openai SDK still does everything up to the response (URL, api-key or Entra token, retries,
status errors), and this module reads the body itself with orjson: no per-chunk pydantic models.

Two fidelity fixes ride along: only choice 0 is forwarded (LangChain would read `choices[0]` of every
chunk whatever its index, mixing n>1 answers), and `delta.refusal` text is kept (LangChain drops it;
`lean_model` surfaces it as `additional_kwargs["refusal"]`).

Coalescing: content-only chunks of one answer that arrived in the same network read are merged into
one chunk (their text concatenated). Nothing is ever held back to wait for more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import httpx2
import openai
import orjson

from chatstream.aiohttp_transport import AIOHTTP_RESPONSE, read_body

Chunk = dict[str, Any]

_DATA = b"data:"
_DONE = b"[DONE]"


class SSEParser:
    """Incremental SSE parser (any of \\n, \\r\\n, \\r line ends): bytes in, `(event, data)` pairs out."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes | None, bytes]]:
        buffer = self._buffer + data
        if b"\r" in buffer:
            # A trailing \r may be half of a \r\n: keep it for the next read.
            keep_cr = buffer.endswith(b"\r")
            if keep_cr:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                buffer += b"\r"
        *complete, self._buffer = buffer.split(b"\n\n")
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
            if lines:
                events.append((name, b"\n".join(lines)))
        return events


def _choice_zero(chunk: Chunk) -> Chunk | None:
    """The chunk with only choice index 0 (which always has a `delta` key, as the SDK's models do);
    None when nothing is left worth forwarding."""
    choices = chunk.get("choices")
    if not choices:
        return chunk
    if len(choices) == 1 and choices[0].get("index", 0) == 0:
        if "delta" not in choices[0]:
            chunk["choices"] = [{**choices[0], "delta": None}]
        return chunk
    kept = [c if "delta" in c else {**c, "delta": None} for c in choices if c.get("index", 0) == 0]
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


def _error(chunk: Any, response: httpx2.Response) -> openai.APIError | None:
    """What the SDK raises for an `{"error": ...}` event in a stream."""
    if not isinstance(chunk, dict) or not chunk.get("error"):
        return None
    error = chunk["error"]
    message = error.get("message") if isinstance(error, dict) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return openai.APIError(message, response.request, body=error)


class DictChunkStream:
    """The response of a streamed `create()`: an async context manager iterating dict chunks."""

    def __init__(self, response: httpx2.Response, coalesce: bool = True) -> None:
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
        loads = orjson.loads
        coalesce = self.coalesce
        raw = response.extensions.get(AIOHTTP_RESPONSE)
        # Our aiohttp transport: read its body directly, past the httpx2 wrapper layers.
        body = read_body(raw) if raw is not None else response.aiter_bytes()
        try:
            async for data in body:
                pending: Chunk | None = None
                pending_text: list[str] = []
                for _event, payload in parser.feed(data):
                    if payload.startswith(_DONE):
                        if pending is not None:
                            yield _merged(pending, pending_text)
                        async for _ in body:  # to the end, so the HTTP/1.1 connection can be reused
                            pass
                        return
                    chunk = loads(payload)
                    error = _error(chunk, response)
                    if error is not None:
                        raise error
                    chunk = _choice_zero(chunk)
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
                if pending is not None:
                    yield _merged(pending, pending_text)
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

    def __getattr__(self, name: str) -> Any:
        return getattr(self._completions, name)

    async def create(self, **params: Any) -> Any:
        """The messages travel as `extra_body`: the same JSON body, but the SDK's recursive
        TypedDict transform (about half a millisecond per request for a short chat) skips them.
        LangChain hands over plain JSON-ready dicts, which that transform would leave unchanged."""
        messages = params.get("messages")
        if isinstance(messages, list):
            extra = params.get("extra_body") or {}
            if "messages" not in extra:
                params = {**params, "messages": [], "extra_body": {**extra, "messages": messages}}
        result = await self._completions.create(**params)
        if params.get("stream") and isinstance(result, openai.AsyncStream):
            return DictChunkStream(result.response, self.coalesce)
        return result
