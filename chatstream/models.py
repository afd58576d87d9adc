"""Building the chat model from settings: Azure OpenAI, an OpenAI-compatible server, or the simulator.

A bad configuration is reported once at start-up and kept as a reason, so each request can be
answered with a JSON 503 instead of the app failing to load.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlparse

import openai
from langchain_core.language_models import BaseChatModel
from langchain_openai import AzureChatOpenAI, ChatOpenAI

from chatstream.settings import Settings

log = logging.getLogger("chatstream.models")

#: Scope of Microsoft Entra ID tokens for Azure OpenAI.
COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"


class ConfigurationError(Exception):
    """The settings cannot produce a working model; the message says which setting to fix.

    Callers get the message in a 503 body, so it names settings but never their values (an endpoint
    tells an attacker where the model lives); a bad value goes to the server log where it is raised.
    """


@dataclass(frozen=True)
class ModelTarget:
    provider: Literal["azure", "openai", "simulator"]
    #: The name every delta is tagged with: the Azure deployment, or the model on other servers.
    deployment: str
    model: BaseChatModel
    endpoint: str


def _check_url(name: str, value: str) -> str:
    try:
        parsed = urlparse(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        log.error("%s is not an http(s) URL: %r", name, value)
        raise ConfigurationError(f"{name} must be an http(s) URL")
    return value.rstrip("/")


def client_options(settings: Settings) -> dict[str, object]:
    """The SDK never retries: `ChainRun` does, before the first chunk only and within the first-event
    wait (the SDK would sleep on any Retry-After up to 60 s). The read timeout bounds every silence
    from the model, which is how a stall after the first chunk ends without per-chunk work."""
    base = settings.request_timeout_seconds
    return {
        "max_retries": 0,
        "timeout": openai.Timeout(base, read=settings.upstream_read_timeout_seconds),
    }


@lru_cache(maxsize=4)
def _token_provider(client_id: str | None) -> Callable[[], Awaitable[str]]:
    """One credential per identity, shared by every deployment's model (one token cache)."""
    from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

    credential = DefaultAzureCredential(managed_identity_client_id=client_id)
    return get_bearer_token_provider(credential, COGNITIVE_SERVICES_SCOPE)


@dataclass(frozen=True)
class FastPath:
    """The lean model classes and the aiohttp transport they stream through."""

    azure: type[AzureChatOpenAI]
    openai: type[ChatOpenAI]
    transport: type[Any]


@lru_cache(maxsize=1)
def fast_path() -> FastPath | None:
    """The fast path, or None when a private LangChain or aiohttp name it relies on is missing from the
    installed versions: the app then streams through LangChain's stock path (one warning) instead of
    failing to load."""
    try:
        from chatstream.aiohttp_transport import AiohttpTransport
        from chatstream.lean_model import LeanAzureChatOpenAI, LeanChatOpenAI
    except ImportError as exc:
        log.warning(
            "fast streaming path unavailable with the installed LangChain/aiohttp (%s); "
            "using LangChain's stock streaming path",
            exc,
        )
        return None
    return FastPath(LeanAzureChatOpenAI, LeanChatOpenAI, AiohttpTransport)


def _fast(settings: Settings) -> FastPath | None:
    return fast_path() if settings.lean_streaming else None


def _transport_options(settings: Settings, fast: FastPath | None) -> dict[str, Any]:
    """What every model gets: `client_options`, aiohttp under the SDK, no per-chunk timeout wrapper.

    Stalls stay bounded without the wrapper: the HTTP read timeout applies between any two reads of
    the stream (see `client_options`). See docs/benchmarks.md for why these choices. Without the fast
    path the SDK keeps its own httpx transport and nothing is coalesced.
    """
    options: dict[str, Any] = {**client_options(settings), "stream_chunk_timeout": None, "stream_usage": True}
    if fast is not None:
        # Its aiohttp session is created on first use, in the loop that serves requests.
        options["http_async_client"] = openai.DefaultAsyncHttpxClient(transport=fast.transport())
        options["coalesce_deltas"] = settings.coalesce_deltas
    return options


def _azure_v1(settings: Settings, endpoint: str, api_key: str | None, deployment: str) -> ChatOpenAI:
    """Azure OpenAI's v1 API (AZURE_OPENAI_API_VERSION=v1): the plain OpenAI client on
    `{endpoint}/openai/v1/`, the deployment as `model`, no api-version. Keyless, the async token
    provider is the client's `api_key`: the SDK awaits it before each request (the credential caches
    the token) and sends it as `Authorization: Bearer`."""
    fast = _fast(settings)
    model_class = fast.openai if fast is not None else ChatOpenAI
    return model_class(
        base_url=f"{endpoint}/openai/v1",
        api_key=api_key or _token_provider(settings.azure_client_id),
        model=deployment,
        # Chat Completions always: langchain-openai would move some model names to the Responses API.
        use_responses_api=False,
        **_transport_options(settings, fast),
    )


def _azure(
    settings: Settings, endpoint: str, api_key: str | None, deployment: str
) -> AzureChatOpenAI | ChatOpenAI:
    if settings.azure_v1:
        return _azure_v1(settings, endpoint, api_key, deployment)
    fast = _fast(settings)
    model_class = fast.azure if fast is not None else AzureChatOpenAI
    common = {
        "azure_endpoint": endpoint,
        "azure_deployment": deployment,
        "api_version": settings.azure_openai_api_version,
        **_transport_options(settings, fast),
    }
    if api_key:
        return model_class(api_key=api_key, **common)
    # Keyless: the async credential keeps token refreshes off the event loop's critical path.
    return model_class(azure_ad_async_token_provider=_token_provider(settings.azure_client_id), **common)


def build_model(
    settings: Settings, simulator_url: str | None = None, deployment: str | None = None
) -> ModelTarget:
    """`simulator_url` is where the simulated deployment listens when no real endpoint is set;
    `deployment` picks another deployment (or model) on the same endpoint with the same credentials."""
    if settings.azure_openai_endpoint:
        endpoint = _check_url("AZURE_OPENAI_ENDPOINT", settings.azure_openai_endpoint)
        name = deployment or settings.azure_openai_deployment
        if not name:
            raise ConfigurationError("AZURE_OPENAI_DEPLOYMENT is empty")
        model = _azure(settings, endpoint, settings.azure_openai_api_key, name)
        return ModelTarget("azure", name, model, endpoint)
    if settings.openai_base_url:
        endpoint = _check_url("OPENAI_BASE_URL", settings.openai_base_url)
        if not settings.openai_model:
            raise ConfigurationError("OPENAI_BASE_URL is set but OPENAI_MODEL is not")
        fast = _fast(settings)
        model = (fast.openai if fast is not None else ChatOpenAI)(
            base_url=endpoint,
            api_key=settings.openai_api_key or "not-needed",
            model=deployment or settings.openai_model,
            **_transport_options(settings, fast),
        )
        return ModelTarget("openai", deployment or settings.openai_model, model, endpoint)
    if simulator_url is None:
        raise ConfigurationError("no model endpoint is configured (AZURE_OPENAI_ENDPOINT or OPENAI_BASE_URL)")
    name = deployment or settings.azure_openai_deployment
    model = _azure(settings, simulator_url, "simulated-key", name)
    return ModelTarget("simulator", name, model, simulator_url)
