"""Streamed chat completions sent without the openai SDK's request path, failing exactly as it would.

For one client and one model the SDK builds the same request every time, except for the credential and
the body: options copied through pydantic, headers merged case-insensitively, the URL parsed twice by
httpx2, a Request object, the body transformed recursively (together about 0.8 ms per request, half of
the per-request budget). So the SDK builds the request once per model (`_Template`), and each streamed
`create()` sends that URL and those headers, the credential of the moment (the api key, or the awaited
Entra token provider, as the SDK would add it) and the JSON body (serialized as the SDK does) straight
through the aiohttp transport. A non-2xx answer becomes the SDK's own exception
(`client._make_status_error_from_response`), a transport failure its `APITimeoutError` or
`APIConnectionError`: callers see the same errors as through the SDK.

Only what this app configures takes it: an Azure api key or Entra token provider, an OpenAI api key or key
provider, the SDK's retries off, on `AiohttpTransport`, after the client's first request (which goes
through the SDK and looks up the platform headers). Anything else (SDK retries, idempotency keys,
workload identity, provider runtimes, custom auth, client cookies, event hooks, request-level headers,
query or timeout, a parameter `create` does not take) keeps the SDK path, unchanged.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import openai
import openai.lib.azure
from openai._models import FinalRequestOptions
from openai._types import NotGiven, Omit
from openai._utils._json import openapi_dumps
from openai.lib.azure import API_KEY_SENTINEL
from yarl import URL

from chatstream.aiohttp_transport import BODY_READER, AiohttpTransport, BodyReader, client_timeout

log = logging.getLogger("chatstream.direct")

#: `create()` parameters that change how the request is built, not its body: the SDK handles those.
_REQUEST_OPTIONS = frozenset({"extra_headers", "extra_query", "timeout"})
#: Headers the transport never forwards (aiohttp sets them), and the credentials (set per request).
_DROPPED = frozenset({b"accept-encoding", b"content-length", b"authorization", b"api-key"})
_AUTH_NAMES = frozenset({"authorization", "api-key"})
#: Request hooks the SDK installs that do nothing to a request sent once to its own URL (the Azure client
#: strips the api key from a redirected request; redirects are never followed here).
_NO_OP_HOOKS = tuple(
    hook for hook in (getattr(openai.lib.azure, "_async_strip_azure_api_key_on_redirect", None),) if hook
)


@dataclass(frozen=True, slots=True)
class _Template:
    url: URL
    headers: list[tuple[str, str]]
    timeout: aiohttp.ClientTimeout


class DirectResponse:
    """A streamed answer opened without the SDK: what `chunk_stream.DictChunkStream` reads. The httpx2
    request is only built if an error needs one (as the SDK's exceptions carry it)."""

    __slots__ = ("_request", "_url", "data", "headers", "reader", "request_headers")

    def __init__(
        self,
        reader: BodyReader,
        headers: Mapping[str, str],
        url: URL,
        request_headers: list[tuple[str, str]],
        data: bytes,
    ) -> None:
        self.reader = reader
        self.headers = headers
        self._url = url
        self.request_headers = request_headers
        self.data = data
        self._request: httpx2.Request | None = None

    @property
    def request(self) -> httpx2.Request:
        if self._request is None:
            self._request = _request(self._url, self.request_headers, self.data)
        return self._request

    @property
    def extensions(self) -> dict[str, Any]:
        return {BODY_READER: self.reader}

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while data := await self.reader.read():
            yield data

    async def aclose(self) -> None:
        await self.reader.close()


class _Captured(Exception):
    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body


async def _capture_post(path: str, *, body: Mapping[str, Any] | None = None, **_: Any) -> Any:
    raise _Captured(body or {})


def _request(url: URL, headers: list[tuple[str, str]], data: bytes) -> httpx2.Request:
    return httpx2.Request("POST", str(url), headers=headers, content=data)


def _transport(client: Any) -> AiohttpTransport | None:
    """The client's aiohttp transport, if nothing of the SDK's or httpx2's would act on a request."""
    http = getattr(client, "_client", None)
    if not isinstance(http, httpx2.AsyncClient):
        return None
    transport = getattr(http, "_transport", None)
    if not isinstance(transport, AiohttpTransport) or getattr(http, "_mounts", None):
        return None
    hooks = http.event_hooks
    request_hooks = [hook for hook in hooks.get("request", ()) if hook not in _NO_OP_HOOKS]
    if request_hooks or hooks.get("response") or http.auth is not None or http.cookies:
        return None
    if client.max_retries != 0 or client._idempotency_header or client.custom_auth is not None:
        return None
    if getattr(client, "_workload_identity_auth", None) is not None:
        return None
    if getattr(client, "_provider_runtime", None) is not None:
        return None
    if any(str(name).lower() in _AUTH_NAMES for name in client.default_headers):
        return None
    if isinstance(client, openai.AsyncAzureOpenAI) and client._api_key_provider is not None:
        return None
    return transport


class DirectChat:
    """One client's direct path: whether it applies, its templates per model, its credentials."""

    def __init__(self, completions: Any) -> None:
        self.completions = completions
        self.client = client = completions._client
        self.azure = isinstance(client, openai.AsyncAzureOpenAI)
        self.transport = _transport(client)
        self.accepted = frozenset(inspect.signature(completions.create).parameters) - _REQUEST_OPTIONS
        self.templates: dict[Any, _Template] = {}
        #: The SDK's order of the body's keys (`ready`).
        self.order: tuple[str, ...] | None = None

    async def ready(self) -> bool:
        """Learn, once, the order in which the SDK writes the body's keys: a retried request must be the
        same bytes whichever path sent it (servers may key on them, as the simulator's `times=N` does).
        False when the SDK's `create` cannot be run that way (then it always sends)."""
        if self.order is None:
            resource = copy.copy(self.completions)
            resource._post = _capture_post
            try:
                await resource.create(**{**dict.fromkeys(self.accepted - {"extra_body"}), "stream": True})
            except _Captured as captured:
                self.order = tuple(captured.body)
            except Exception as exc:
                log.warning("direct requests disabled: the SDK's create() could not be probed (%r)", exc)
                self.order, self.transport = (), None
        return self.transport is not None

    def takes(self, params: Mapping[str, Any]) -> bool:
        """Whether these `create()` arguments can go direct (else the SDK sends them)."""
        if self.transport is None or params.get("stream") is not True:
            return False
        if self.client._platform is None:  # the SDK looks it up (off the loop) on its first request
            return False
        if "messages" not in params or "model" not in params or "response_format" in params:
            return False  # the SDK's own checks answer those
        accepted = self.accepted
        return all(name in accepted for name in params)

    def _template(self, model: Any) -> _Template:
        template = self.templates.get(model)
        if template is None:
            # A placeholder credential satisfies the SDK's check that one is set; it is dropped below.
            options = FinalRequestOptions.construct(
                method="post",
                url="/chat/completions",
                json_data={"model": model},
                headers={"Authorization": "Bearer -"},
                security={"bearer_auth": True},
            )
            request = self.client._build_request(options)
            headers = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in request.headers.raw
                if k.lower() not in _DROPPED
            ]
            url = URL(str(request.url), encoded=True)
            template = _Template(url, headers, client_timeout(request.extensions.get("timeout", {})))
            self.templates[model] = template
        return template

    async def _credential(self) -> list[tuple[str, str]] | None:
        """The header the SDK would add for this request (None: let the SDK decide)."""
        client = self.client
        if self.azure:
            token = await client._get_azure_ad_token()
            if token is not None:
                return [("Authorization", f"Bearer {token}")]
            key = client.api_key
            if key and key != API_KEY_SENTINEL and isinstance(key, str):
                return [("api-key", key)]
            return None
        key = await client._refresh_api_key() if client._api_key_provider is not None else client.api_key
        return [("Authorization", f"Bearer {key}")] if key and isinstance(key, str) else None

    async def open(self, params: Mapping[str, Any]) -> DirectResponse | None:
        """Send the request; None when the SDK must (a credential this path does not know)."""
        credential = await self._credential()
        if credential is None:
            return None
        extra = params.get("extra_body")
        assert self.order is not None
        body = {
            name: params[name]
            for name in self.order
            if name in params and not isinstance(params[name], NotGiven | Omit)
        }
        if extra:
            body = {name: value for name, value in {**body, **extra}.items() if not isinstance(value, Omit)}
        template = self._template(body.get("model"))
        data = openapi_dumps(body)
        headers = [*template.headers, *credential]
        assert self.transport is not None
        try:
            response, raw_headers, reader = await self.transport.open(
                "POST", template.url, headers, data, template.timeout
            )
        except httpx2.TimeoutException as exc:
            raise openai.APITimeoutError(request=_request(template.url, headers, data)) from exc
        except httpx2.RequestError as exc:
            raise openai.APIConnectionError(request=_request(template.url, headers, data)) from exc
        if 200 <= response.status < 300:
            return DirectResponse(reader, response.headers, template.url, headers, data)
        # As the SDK: the whole body read, then its status error (a read failure propagates as is).
        parts: list[bytes] = []
        try:
            while part := await reader.read():
                parts.append(part)
        finally:
            await reader.close()
        answer = httpx2.Response(
            response.status,
            headers=raw_headers,
            content=b"".join(parts),
            request=_request(template.url, headers, data),
        )
        raise self.client._make_status_error_from_response(answer) from None
