"""Every environment variable the app reads, in one place.

The settings contract tests in tests/test_infra.py check each name here against
`local.settings.json.example` and the Bicep app settings, so add new ones here first.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The newest dated data-plane inference version (the `/openai/deployments/...` surface): the first
#: dated versions with `reasoning_effort` are 2024-12-01-preview and later (2024-10-21, the last dated GA,
#: has none), and Microsoft lists 2025-04-01-preview for the o-series. `v1` instead selects the
#: versionless v1 API (`/openai/v1/`), GA since August 2025 and the one listed for the gpt-5 family.
DEFAULT_AZURE_API_VERSION = "2025-04-01-preview"
#: The `AZURE_OPENAI_API_VERSION` value that selects the v1 API.
AZURE_V1_API = "v1"
#: Every `reasoning_effort` value some reasoning model accepts (which ones a model takes varies).
KNOWN_REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})


class Settings(BaseSettings):
    """Read once per process; tests build their own instances."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # Azure OpenAI (keyless unless an API key is set).
    azure_openai_endpoint: str | None = Field(None, alias="AZURE_OPENAI_ENDPOINT")
    azure_openai_deployment: str = Field("gpt-4o-mini", alias="AZURE_OPENAI_DEPLOYMENT")
    azure_openai_api_version: str = Field(DEFAULT_AZURE_API_VERSION, alias="AZURE_OPENAI_API_VERSION")
    azure_openai_api_key: str | None = Field(None, alias="AZURE_OPENAI_API_KEY")
    azure_client_id: str | None = Field(None, alias="AZURE_CLIENT_ID")

    # Any OpenAI-compatible server (Ollama, vLLM, ...).
    openai_base_url: str | None = Field(None, alias="OPENAI_BASE_URL")
    openai_api_key: str | None = Field(None, alias="OPENAI_API_KEY")
    openai_model: str | None = Field(None, alias="OPENAI_MODEL")

    # Chat behaviour and limits.
    system_prompt: str = Field(
        "You are a helpful assistant. Answer clearly and concisely.", alias="CHAT_SYSTEM_PROMPT"
    )
    default_chain: str = Field("chat", alias="CHAT_DEFAULT_CHAIN")
    max_body_bytes: int = Field(64 * 1024, ge=1024, alias="CHAT_MAX_BODY_BYTES")
    max_messages: int = Field(50, ge=1, alias="CHAT_MAX_MESSAGES")
    max_content_chars: int = Field(16_000, ge=1, alias="CHAT_MAX_CONTENT_CHARS")
    max_tokens_limit: int = Field(4096, ge=1, alias="CHAT_MAX_TOKENS_LIMIT")
    default_max_tokens: int | None = Field(None, ge=1, alias="CHAT_DEFAULT_MAX_TOKENS")
    #: Connect, write and connection-pool timeout of model calls.
    request_timeout_seconds: float = Field(60.0, gt=0, alias="CHAT_UPSTREAM_TIMEOUT_SECONDS")
    #: Longest silence tolerated from the model (before headers, or between chunks): a stalled
    #: stream ends with `upstream_timeout` after this, without any per-chunk work of ours.
    upstream_read_timeout_seconds: float = Field(30.0, gt=0, alias="CHAT_UPSTREAM_READ_TIMEOUT_SECONDS")
    #: Retries before the first chunk only, and only while they fit in the first-event wait.
    upstream_max_retries: int = Field(2, ge=0, le=10, alias="CHAT_UPSTREAM_MAX_RETRIES")
    first_event_wait_seconds: float = Field(5.0, ge=0, alias="CHAT_FIRST_EVENT_WAIT_SECONDS")
    heartbeat_seconds: float = Field(15.0, ge=0, alias="CHAT_HEARTBEAT_SECONDS")
    #: Forward tokens that arrived together in one network read as one delta (never waits for more).
    coalesce_deltas: bool = Field(True, alias="CHAT_COALESCE_DELTAS")
    #: The fast streaming path (aiohttp transport, dict chunks, LangChain bookkeeping skipped when nobody
    #: listens). `false`: LangChain's stock model on the SDK's stock transport, e.g. to rule it out.
    lean_streaming: bool = Field(True, alias="CHAT_LEAN_STREAMING")
    deadline_seconds: float = Field(220.0, gt=0, alias="CHAT_DEADLINE_SECONDS")
    #: Deployments a request may name in `deployments` (comma-separated); the configured one always is.
    deployments: str = Field("", alias="CHAT_DEPLOYMENTS")
    max_request_deployments: int = Field(4, ge=1, le=16, alias="CHAT_MAX_REQUEST_DEPLOYMENTS")
    #: Deployments (comma-separated, in order) that answer when a one-deployment request's deployment
    #: fails before its first token (rate limited, overloaded, down, timed out); each must be allowed.
    fallback_deployments: str = Field("", alias="CHAT_FALLBACK_DEPLOYMENTS")
    tool_max_rounds: int = Field(4, ge=1, le=16, alias="CHAT_TOOL_MAX_ROUNDS")
    rag_top_k: int = Field(4, ge=1, le=20, alias="CHAT_RAG_TOP_K")
    #: Deployments (comma-separated) that are reasoning models (gpt-5 family, o-series): they get
    #: `max_completion_tokens` and `reasoning_effort`, and a request with `temperature` gets a 400.
    reasoning_deployments: str = Field("", alias="CHAT_REASONING_DEPLOYMENTS")
    #: `reasoning_effort` values a request may send (comma-separated); the default is what every
    #: reasoning model takes. Add `minimal` (gpt-5, gpt-5-mini), `none`/`xhigh` (gpt-5.1 and later).
    reasoning_efforts: str = Field("low,medium,high", alias="CHAT_REASONING_EFFORTS")

    # Resumable streams (docs/protocol.md "Resuming a stream").
    #: Every stream is resumable unless the request says `"resumable": false` (default: only those that
    #: ask with `"resumable": true`).
    resumable: bool = Field(False, alias="CHAT_RESUMABLE")
    #: How long a resumable run goes on with nobody reading it (the client left), waiting for a resume.
    resume_grace_seconds: float = Field(30.0, ge=0, alias="CHAT_RESUME_GRACE_SECONDS")
    #: How long a stream's events stay readable, counted from its start (memory and the shared store).
    resume_ttl_seconds: float = Field(600.0, gt=0, alias="CHAT_RESUME_TTL_SECONDS")
    #: Events kept per stream; past this the stream goes on but can no longer be resumed (410).
    resume_max_bytes: int = Field(1024 * 1024, ge=1024, alias="CHAT_RESUME_MAX_BYTES")
    #: Resumable streams one instance keeps in memory; the oldest finished ones go first.
    resume_max_streams: int = Field(1000, ge=1, alias="CHAT_RESUME_MAX_STREAMS")
    #: `memory` (one instance) or `blob`: Azure Blob Storage shared by every instance, so a resume or a
    #: stop reaches a stream running on another one.
    stream_store: Literal["memory", "blob"] = Field("memory", alias="CHAT_STREAM_STORE")
    #: The blob service URL (keyless: the app's managed identity), e.g. https://<account>.blob.core.windows.net
    stream_store_url: str | None = Field(None, alias="CHAT_STREAM_STORE_URL")
    #: Instead of the URL, a connection string (Azurite locally); never logged.
    stream_store_connection_string: str | None = Field(None, alias="CHAT_STREAM_STORE_CONNECTION_STRING")
    stream_store_container: str = Field("chat-streams", alias="CHAT_STREAM_STORE_CONTAINER")
    #: How often a stream on another instance is checked for new events, a stop or a reader.
    stream_store_poll_seconds: float = Field(0.25, gt=0, le=5, alias="CHAT_STREAM_STORE_POLL_SECONDS")

    # Conversation threads of graph chains (`thread_id`, docs/chains.md).
    #: `memory` (this instance, bounded) or `postgres`: shared by every instance (LangGraph's Postgres
    #: checkpointer; imported only then).
    threads_store: Literal["memory", "postgres"] = Field("memory", alias="CHAT_THREADS_STORE")
    #: libpq URL or conninfo; a secret when it carries a password (never logged). Without a password and
    #: with AZURE_CLIENT_ID set, each new connection signs in with an Entra token (keyless).
    threads_postgres_url: SecretStr | None = Field(None, alias="CHAT_THREADS_POSTGRES_URL")
    #: Longest wait for the store per operation (connecting included); below the first-event wait, so a
    #: store that is down is a 503 rather than an error event after the headers.
    threads_timeout_seconds: float = Field(4.0, gt=0, le=60, alias="CHAT_THREADS_TIMEOUT_SECONDS")
    #: Threads nobody continued for this many days are deleted from the shared store (0: kept forever).
    threads_ttl_days: float = Field(30.0, ge=0, alias="CHAT_THREADS_TTL_DAYS")

    # The embedded simulated deployment, used when no model endpoint is configured.
    simulator_ttft_ms: float = Field(150.0, ge=0, alias="SIMULATOR_TTFT_MS")
    simulator_token_delay_ms: float = Field(30.0, ge=0, alias="SIMULATOR_TOKEN_DELAY_MS")
    #: 0 picks a free port; a fixed one lets you read the simulator's /_sim/stats.
    simulator_port: int = Field(0, ge=0, le=65535, alias="SIMULATOR_PORT")
    #: The simulator refuses to stand in for the model inside Azure (WEBSITE_SITE_NAME etc. set) unless this.
    simulator_allow_in_azure: bool = Field(False, alias="SIMULATOR_ALLOW_IN_AZURE")

    # Security and operations.
    #: Anonymous HTTP access to the chat function; default FUNCTION auth level (a key is required).
    allow_anonymous: bool = Field(False, alias="CHAT_ALLOW_ANONYMOUS")
    #: Comma-separated origins allowed by CORS (exact match, `*` allowed but not advised); empty: no CORS.
    cors_origins: str = Field("", alias="CHAT_CORS_ORIGINS")
    #: Log prompts and answers (they are personal data): off unless explicitly enabled.
    log_content: bool = Field(False, alias="CHAT_LOG_CONTENT")
    #: Serve `GET /api/_diag` (task count, RSS, open streams) for soak tests; off in production.
    diagnostics: bool = Field(False, alias="CHAT_DIAGNOSTICS")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="CHAT_LOG_LEVEL")

    @field_validator(
        "azure_openai_endpoint",
        "openai_base_url",
        "azure_openai_api_key",
        "openai_api_key",
        "stream_store_url",
        "stream_store_connection_string",
    )
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        """`func start` and app settings often carry empty strings for 'not set'."""
        return value.strip() or None if value is not None else None

    @field_validator("threads_postgres_url", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("default_max_tokens", mode="before")
    @classmethod
    def _blank_number_is_unset(cls, value: object) -> object:
        """An empty CHAT_DEFAULT_MAX_TOKENS (as in local.settings.json.example) means 'not set'."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("reasoning_efforts")
    @classmethod
    def _known_efforts(cls, value: str) -> str:
        unknown = {e.strip() for e in value.split(",") if e.strip()} - KNOWN_REASONING_EFFORTS
        if unknown:
            raise ValueError(
                f"unknown reasoning efforts {sorted(unknown)}; known: {sorted(KNOWN_REASONING_EFFORTS)}"
            )
        return value

    @property
    def azure_v1(self) -> bool:
        """Call Azure OpenAI's v1 API (`{endpoint}/openai/v1/`, no api-version) instead of a dated one."""
        return self.azure_openai_api_version.strip().lower() == AZURE_V1_API

    @property
    def reasoning_deployment_set(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.reasoning_deployments.split(",") if n.strip())

    @property
    def reasoning_effort_set(self) -> frozenset[str]:
        return frozenset(e.strip() for e in self.reasoning_efforts.split(",") if e.strip())

    @property
    def fallback_deployment_list(self) -> list[str]:
        return list(dict.fromkeys(n.strip() for n in self.fallback_deployments.split(",") if n.strip()))

    @property
    def cors_origin_list(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())

    @property
    def default_deployment(self) -> str:
        """The deployment (or, on an OpenAI-compatible server, the model) requests use by default."""
        if not self.azure_openai_endpoint and self.openai_base_url:
            return self.openai_model or ""
        return self.azure_openai_deployment

    @property
    def allowed_deployments(self) -> list[str]:
        names = [self.default_deployment, *(n.strip() for n in self.deployments.split(","))]
        return list(dict.fromkeys(n for n in names if n))

    @property
    def provider(self) -> Literal["azure", "openai", "simulator"]:
        if self.azure_openai_endpoint:
            return "azure"
        if self.openai_base_url:
            return "openai"
        return "simulator"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
