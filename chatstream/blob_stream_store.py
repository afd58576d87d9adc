"""`BlobStreamStore`: resumable streams shared by every instance through Azure Blob Storage.

Layout in one container (`CHAT_STREAM_STORE_CONTAINER`, default `chat-streams`):

- `streams/<id>/events`: an append blob, written only by the producing instance. It starts with one
  newline; every event is one line of JSON. A cursor is a byte offset just after a newline, so one
  ranged GET from `cursor - 1` returns the new lines *and* the blob's metadata (`protocol`, `created`,
  `finished`, `truncated`) from the same version of the blob: a reader that sees `finished` has seen
  every event before it. Appends are conditional on the expected offset, so a retried append is never
  written twice, and on a size limit, so a stream never outgrows `max_bytes`.
- Liveness: `StoredEvents.beat` is the events blob's ETag, which every write changes. A producer with
  nothing to append for a while rewrites the blob's metadata (`beat`: a counter), so the ETag changes
  at a steady pace while it lives; readers time the changes on their own clock.
- `streams/<id>/stop`, `streams/<id>/reader` and `streams/<id>/lost`: empty blobs other instances write (a
  stop request; a reader's heartbeat time in metadata; a reader saw the producer's beat stop). They never
  touch the events blob, so no write races the producer's; the producer lists `streams/<id>/` (one
  request) to poll them.
- `aliases/<alias>`: a small block blob holding the id of the stream an alias (an AI SDK chat id) names.

Ids and aliases that are not plain `[A-Za-z0-9_-]{1,128}` are stored under a SHA-256 of themselves.
A stream is unknown once `created` (the producer's wall clock) + TTL has passed; whoever notices deletes
its blobs, and the container's lifecycle rule (infra) deletes anything a day old. Nothing but the events
the caller was sent, the protocol and times is stored.

azure.storage and azure.identity are imported only by `open_stream_store` and in error paths, so an app
on the in-memory store never pays for them at cold start.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from chatstream.stream_store import (
    SharedStreamStore,
    StoredEvents,
    StreamControl,
    StreamNotFound,
    StreamStoreError,
    StreamTooLarge,
)

if TYPE_CHECKING:
    from azure.storage.blob.aio import ContainerClient

    from chatstream.settings import Settings

log = logging.getLogger("chatstream.blob_stream_store")

#: Largest append block the service takes (API versions before 2022-11-02, and Azurite).
MAX_BLOCK_BYTES = 4 * 1024 * 1024
#: Largest read in one GET; a longer stream is read in several (`StoredEvents.finished` only at the end).
MAX_READ_BYTES = 8 * 1024 * 1024
#: Streams whose next append offset this instance remembers (a forgotten one costs one extra request).
_MAX_REMEMBERED = 10_000
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CONTAINER_NAME = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_LAYOUT = "1"


def blob_key(name: str) -> str:
    """A blob-name-safe key for a stream id or alias (ids from headers or clients can be anything)."""
    if _PLAIN_KEY.fullmatch(name):
        return name
    return "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


def _expired(metadata: dict[str, str], now: float, ttl: float) -> bool:
    try:
        return now >= float(metadata["created"]) + ttl
    except (KeyError, ValueError):
        return True  # not ours, or damaged: treat as unknown


class BlobStreamStore(SharedStreamStore):
    """A `SharedStreamStore` in one blob container (see the module docstring for the layout).

    Raises (all from `chatstream.stream_store`): `StreamStoreError` when the service cannot be reached or
    refuses (network, auth, throttling, timeouts, after the SDK's own short retries); `StreamNotFound`
    (a `StreamStoreError`) from `append`/`finish` on a stream that does not exist (never created, or
    expired and deleted); `StreamTooLarge` (a `StreamStoreError`) from `append` when the events would
    pass `max_bytes` or the append-blob limits: whole blocks written before it stay, and the caller
    should `finish(truncated=True)`. `ValueError` for a negative cursor or one this store did not give.
    Messages name the operation and the service's error code, never the account URL or a credential.
    """

    def __init__(
        self,
        container: ContainerClient,
        *,
        ttl_seconds: float,
        max_bytes: int,
        credential: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._container = container
        self._credential = credential
        self._ttl = ttl_seconds
        self._max_bytes = max_bytes
        self._clock = clock
        self._container_ready = False
        #: stream id -> offset its next append starts at (only streams this instance produces).
        self._offsets: OrderedDict[str, int] = OrderedDict()
        #: stream id -> the events blob's metadata as this instance last wrote it (streams it produces), so a
        #: beat is one request.
        self._metadata: OrderedDict[str, dict[str, str]] = OrderedDict()

    # -- names ------------------------------------------------------------------------------------

    def _events(self, stream_id: str) -> Any:
        return self._container.get_blob_client(f"streams/{blob_key(stream_id)}/events")

    def _control_prefix(self, stream_id: str) -> str:
        return f"streams/{blob_key(stream_id)}/"

    def _alias(self, alias: str) -> Any:
        return self._container.get_blob_client(f"aliases/{blob_key(alias)}")

    # -- writing (the producing instance) ---------------------------------------------------------

    async def create(self, stream_id: str, *, protocol: str, alias: str | None = None) -> None:
        created = repr(self._clock())
        metadata = {"protocol": protocol, "created": created, "layout": _LAYOUT}
        events = self._events(stream_id)
        try:
            await self._with_container(
                lambda: events.create_append_blob(content_settings=_ndjson_settings(), metadata=metadata)
            )
            await self._append_block(stream_id, events, b"\n", 0)
            if alias is not None:
                await self._alias(alias).upload_blob(
                    stream_id.encode("utf-8", "surrogatepass"),
                    overwrite=True,
                    metadata={"created": created, "layout": _LAYOUT},
                )
        except StreamStoreError:
            raise
        except Exception as exc:
            raise _store_error("create", exc) from exc
        self._remember(stream_id, 1)
        self._metadata[stream_id] = metadata
        while len(self._metadata) > _MAX_REMEMBERED:
            self._metadata.popitem(last=False)

    async def append(self, stream_id: str, events: Sequence[bytes]) -> None:
        if not events:
            return
        blob = self._events(stream_id)
        try:
            offset = self._offsets.get(stream_id)
            if offset is None:
                offset = (await blob.get_blob_properties()).size
            for block in _blocks(events):
                if offset + len(block) > self._max_bytes + 1:  # + the leading newline
                    raise StreamTooLarge(
                        f"stream store append: the stream would pass {self._max_bytes} bytes"
                    )
                await self._append_block(stream_id, blob, block, offset)
                offset += len(block)
                self._remember(stream_id, offset)
        except StreamStoreError:
            raise
        except Exception as exc:
            raise _store_error("append", exc) from exc

    async def finish(self, stream_id: str, *, truncated: bool = False) -> None:
        blob = self._events(stream_id)
        try:
            metadata = dict((await blob.get_blob_properties()).metadata)
            metadata.update(finished="1", truncated="1" if truncated else "0")
            await blob.set_blob_metadata(metadata)
        except Exception as exc:
            raise _store_error("finish", exc) from exc
        finally:
            self._offsets.pop(stream_id, None)
            self._metadata.pop(stream_id, None)

    async def beat(self, stream_id: str) -> None:
        blob = self._events(stream_id)
        try:
            metadata = self._metadata.get(stream_id)
            if metadata is None:
                metadata = dict((await blob.get_blob_properties()).metadata)
            beats = metadata.get("beat", "0")
            metadata = {**metadata, "beat": str(int(beats) + 1 if beats.isdigit() else 1)}
            await blob.set_blob_metadata(metadata)
        except Exception as exc:
            self._metadata.pop(stream_id, None)
            raise _store_error("beat", exc) from exc
        self._metadata[stream_id] = metadata
        self._metadata.move_to_end(stream_id)
        while len(self._metadata) > _MAX_REMEMBERED:
            self._metadata.popitem(last=False)

    async def _append_block(self, stream_id: str, blob: Any, block: bytes, offset: int) -> None:
        """Append at exactly `offset`: a retry of an append that did land is recognised, not repeated."""
        try:
            await blob.append_block(block, appendpos_condition=offset, maxsize_condition=self._max_bytes + 1)
        except Exception as exc:
            code = _error_code(exc)
            if code == "AppendPositionConditionNotMet":
                size = (await blob.get_blob_properties()).size
                if size == offset + len(block):
                    return  # an earlier attempt of this very append landed
                self._offsets.pop(stream_id, None)
                raise StreamStoreError(
                    f"stream store append: the stream is at {size}, expected {offset}"
                ) from exc
            if code in ("MaxBlobSizeConditionNotMet", "BlockCountExceedsLimit"):
                raise StreamTooLarge(f"stream store append: {code}") from exc
            raise

    def _remember(self, stream_id: str, offset: int) -> None:
        self._offsets[stream_id] = offset
        self._offsets.move_to_end(stream_id)
        while len(self._offsets) > _MAX_REMEMBERED:
            self._offsets.popitem(last=False)

    async def _with_container(self, operation: Callable[[], Any]) -> Any:
        """Run `operation`, creating the container first if the service says it is missing."""
        try:
            return await operation()
        except Exception as exc:
            if self._container_ready or _error_code(exc) != "ContainerNotFound":
                raise
        try:
            await self._container.create_container()
        except Exception as exc:
            if _error_code(exc) != "ContainerAlreadyExists":
                raise
        self._container_ready = True
        return await operation()

    # -- reading (any instance) -------------------------------------------------------------------

    async def read(self, stream_id: str, cursor: int = 0) -> StoredEvents | None:
        if cursor < 0:
            raise ValueError("cursor must be >= 0")
        start = max(cursor, 1) - 1
        blob = self._events(stream_id)
        try:
            for _ in range(3):  # an empty blob exists only between create's two requests
                try:
                    download = await blob.download_blob(offset=start, length=MAX_READ_BYTES)
                    data = await download.readall()
                except Exception as exc:
                    code = _error_code(exc)
                    if code in ("BlobNotFound", "ContainerNotFound"):
                        return None
                    if code != "InvalidRange":
                        raise
                    props = await blob.get_blob_properties()
                    if _expired(props.metadata, self._clock(), self._ttl):
                        await self._forget(stream_id)
                        return None
                    if props.size > start:
                        continue
                    if start > 0:
                        raise ValueError("cursor is past the end of the stream") from exc
                    return StoredEvents([], 1, False, False, props.metadata.get("protocol", ""), _etag(props))
                metadata = download.properties.metadata
                if _expired(metadata, self._clock(), self._ttl):
                    await self._forget(stream_id)
                    return None
                return self._parse(data, start, _total_size(download), metadata, _etag(download.properties))
        except (StreamStoreError, ValueError):
            raise
        except Exception as exc:
            raise _store_error("read", exc) from exc
        raise StreamStoreError("stream store read: the stream stayed empty")

    @staticmethod
    def _parse(data: bytes, start: int, total: int, metadata: dict[str, str], beat: str) -> StoredEvents:
        if not data.startswith(b"\n"):
            raise ValueError("cursor is not one this store returned for the stream")
        end = data.rfind(b"\n")  # a read cut by MAX_READ_BYTES ends mid-line: keep whole lines only
        lines = [line for line in data[1:end].split(b"\n") if line]
        cursor = start + end + 1
        at_end = cursor >= total
        return StoredEvents(
            events=lines,
            cursor=cursor,
            finished=at_end and metadata.get("finished") == "1",
            truncated=metadata.get("truncated") == "1",
            protocol=metadata.get("protocol", ""),
            beat=beat,
        )

    async def resolve(self, alias: str) -> str | None:
        blob = self._alias(alias)
        try:
            download = await blob.download_blob()
            data = await download.readall()
        except Exception as exc:
            if _error_code(exc) in ("BlobNotFound", "ContainerNotFound"):
                return None
            raise _store_error("resolve", exc) from exc
        if _expired(download.properties.metadata, self._clock(), self._ttl):
            await _delete_quietly(blob)
            return None
        return data.decode("utf-8", "surrogatepass")

    # -- control (other instances write, the producer polls) --------------------------------------

    async def _listing(self, stream_id: str) -> dict[str, dict[str, str]] | None:
        """`events`/`stop`/`reader` -> metadata, in one request; None if the stream is unknown."""
        prefix = self._control_prefix(stream_id)
        found: dict[str, dict[str, str]] = {}
        try:
            async for item in self._container.list_blobs(name_starts_with=prefix, include=["metadata"]):
                found[item.name[len(prefix) :]] = dict(item.metadata or {})
        except Exception as exc:
            if _error_code(exc) == "ContainerNotFound":
                return None
            raise _store_error("control", exc) from exc
        events = found.get("events")
        if events is None:
            return None
        if _expired(events, self._clock(), self._ttl):
            await self._forget(stream_id)
            return None
        return found

    async def request_stop(self, stream_id: str) -> bool:
        found = await self._listing(stream_id)
        if found is None or found["events"].get("finished") == "1":
            return False
        blob = self._container.get_blob_client(self._control_prefix(stream_id) + "stop")
        try:
            await blob.upload_blob(b"", overwrite=True, metadata={"at": repr(self._clock())})
        except Exception as exc:
            raise _store_error("request_stop", exc) from exc
        return True

    async def touch_reader(self, stream_id: str) -> None:
        blob = self._container.get_blob_client(self._control_prefix(stream_id) + "reader")
        try:
            await blob.upload_blob(b"", overwrite=True, metadata={"seen": repr(self._clock())})
        except Exception as exc:
            if _error_code(exc) == "ContainerNotFound":
                return  # no stream can exist
            raise _store_error("touch_reader", exc) from exc

    async def report_lost(self, stream_id: str) -> None:
        blob = self._container.get_blob_client(self._control_prefix(stream_id) + "lost")
        try:
            await blob.upload_blob(b"", overwrite=True)
        except Exception as exc:
            if _error_code(exc) == "ContainerNotFound":
                return  # no stream can exist
            raise _store_error("report_lost", exc) from exc

    async def control(self, stream_id: str) -> StreamControl:
        found = await self._listing(stream_id)
        if found is None:
            return StreamControl(stop_requested=False, reader_seen_at=None)
        seen: float | None = None
        if "reader" in found:
            try:
                seen = float(found["reader"]["seen"])
            except (KeyError, ValueError):
                seen = None
        lost = "lost" in found
        return StreamControl(stop_requested="stop" in found, reader_seen_at=seen, producer_lost=lost)

    # -- housekeeping -----------------------------------------------------------------------------

    async def _forget(self, stream_id: str) -> None:
        """Delete an expired stream's blobs (best effort: the lifecycle rule is the backstop)."""
        self._offsets.pop(stream_id, None)
        self._metadata.pop(stream_id, None)
        prefix = self._control_prefix(stream_id)
        for name in ("events", "stop", "reader", "lost"):
            await _delete_quietly(self._container.get_blob_client(prefix + name))

    async def aclose(self) -> None:
        await self._container.close()
        if self._credential is not None:
            await self._credential.close()


def _blocks(events: Sequence[bytes]) -> list[bytes]:
    """Newline-terminated lines packed into append blocks of at most MAX_BLOCK_BYTES."""
    blocks: list[bytes] = []
    current = bytearray()
    for event in events:
        # A raw CR/LF in JSON can only be whitespace between tokens: a space means the same.
        line = event.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n"
        if len(line) > MAX_BLOCK_BYTES:
            raise StreamTooLarge(f"stream store append: one event is over {MAX_BLOCK_BYTES} bytes")
        if len(current) + len(line) > MAX_BLOCK_BYTES:
            blocks.append(bytes(current))
            current.clear()
        current += line
    if current:
        blocks.append(bytes(current))
    return blocks


def _ndjson_settings() -> Any:
    from azure.storage.blob import ContentSettings

    return ContentSettings(content_type="application/x-ndjson")


def _total_size(download: Any) -> int:
    """The blob's whole size from a ranged download (`bytes a-b/total`)."""
    content_range = download.properties.content_range or ""
    _, _, total = content_range.rpartition("/")
    return int(total) if total.isdigit() else download.size


def _etag(properties: Any) -> str:
    """The blob version's ETag: every write (append, metadata) changes it."""
    return str(getattr(properties, "etag", "") or "")


def _error_code(exc: BaseException) -> str | None:
    """The service's error code (e.g. `BlobNotFound`) of an SDK error, else None."""
    from azure.core.exceptions import HttpResponseError

    if isinstance(exc, HttpResponseError):
        code = getattr(exc, "error_code", None)  # set by azure.storage on the errors it raises
        return str(code.value if hasattr(code, "value") else code) if code is not None else None
    return None


def _store_error(operation: str, exc: BaseException) -> StreamStoreError:
    """A `StreamStoreError` naming the operation and the service's code, never an URL or a key.

    Only failures of the service or the network are translated; anything else is a bug and re-raised.
    """
    from azure.core.exceptions import AzureError

    if not isinstance(exc, AzureError | OSError | TimeoutError):
        raise exc
    code = _error_code(exc)
    status = getattr(exc, "status_code", None)
    if code in ("BlobNotFound", "ContainerNotFound"):
        return StreamNotFound(f"stream store {operation}: the stream does not exist")
    detail = code or (f"HTTP {status}" if status else type(exc).__name__)
    log.debug("stream store %s failed: %s", operation, detail)
    return StreamStoreError(f"stream store {operation} failed: {detail}")


async def _delete_quietly(blob: Any) -> None:
    try:
        await blob.delete_blob()
    except Exception as exc:
        log.debug(
            "stream store cleanup of an expired blob failed: %s", _error_code(exc) or type(exc).__name__
        )


def open_stream_store(settings: Settings) -> SharedStreamStore | None:
    """The shared store the settings name; None for `memory` (streams stay on their instance).

    `blob` takes `CHAT_STREAM_STORE_CONNECTION_STRING` when set (Azurite; never in Azure), else
    `CHAT_STREAM_STORE_URL` with the app's managed identity (`AZURE_CLIENT_ID` picks a user-assigned
    one). Raises `chatstream.models.ConfigurationError` naming the setting to fix, never its value.
    """
    from chatstream.models import ConfigurationError

    if settings.stream_store == "memory":
        return None
    container_name = settings.stream_store_container
    if not _CONTAINER_NAME.fullmatch(container_name):
        raise ConfigurationError(
            "CHAT_STREAM_STORE_CONTAINER must be 3-63 lowercase letters, digits and single hyphens"
        )
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.storage.blob.aio import ContainerClient, LinearRetry

    # A store polled every fraction of a second must fail in seconds, not minutes (SDK: 20 s / 60 s
    # timeouts, three retries 15 s apart).
    options: dict[str, Any] = {
        "transport": AioHttpTransport(connection_timeout=5, read_timeout=10),
        # The SDK annotates these as int; it computes with floats.
        "retry_policy": LinearRetry(backoff=0.5, random_jitter_range=0.25, retry_total=2),  # type: ignore[arg-type]
        # The SDK logs every request and response at INFO (forwarded to Application Insights in Azure):
        # about 14 a second per running stream. Failures reach the log as the store's own warnings.
        "http_logging_level": logging.DEBUG,
    }
    credential = None
    if settings.stream_store_connection_string:
        try:
            container = ContainerClient.from_connection_string(
                settings.stream_store_connection_string, container_name, **options
            )
        except ValueError:
            raise ConfigurationError(
                "CHAT_STREAM_STORE_CONNECTION_STRING is not a valid connection string"
            ) from None
    elif settings.stream_store_url:
        from azure.identity.aio import DefaultAzureCredential

        url = settings.stream_store_url
        try:
            parsed = urlparse(url)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            raise ConfigurationError("CHAT_STREAM_STORE_URL must be an http(s) URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigurationError("CHAT_STREAM_STORE_URL must be an http(s) URL")
        credential = DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)
        container = ContainerClient(url, container_name, credential=credential, **options)
    else:
        raise ConfigurationError(
            "CHAT_STREAM_STORE=blob needs CHAT_STREAM_STORE_URL (or CHAT_STREAM_STORE_CONNECTION_STRING)"
        )
    return BlobStreamStore(
        container,
        ttl_seconds=settings.resume_ttl_seconds,
        max_bytes=settings.resume_max_bytes,
        credential=credential,
    )
