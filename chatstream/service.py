"""The chat service: validated request in, a ready-to-run `run.Run` out."""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from chains import ChainContext, ChainRegistry, ChainSpec, default_registry
from chains.graph import GraphChain, as_chain
from chains.threads import thread_store
from chatstream import errors, telemetry
from chatstream.diagnostics import live_runs
from chatstream.fallback import FallbackRun
from chatstream.fanout import MultiRun
from chatstream.models import ConfigurationError, ModelTarget, build_model
from chatstream.outcome import RunRecord
from chatstream.retry import RetryPolicy
from chatstream.runner import ChainRun
from chatstream.schema import ChatRequest, Limits, Message
from chatstream.settings import Settings

log = logging.getLogger("chatstream.service")

_MESSAGE_TYPES: dict[str, type[BaseMessage]] = {
    "system": SystemMessage,
    "user": HumanMessage,
    "assistant": AIMessage,
}


def _history(messages: list[Message]) -> list[BaseMessage]:
    return [_MESSAGE_TYPES[m.role](content=m.content) for m in messages]


class ChatService:
    def __init__(
        self,
        settings: Settings,
        target: ModelTarget | None,
        registry: ChainRegistry | None = None,
        config_error: str | None = None,
        simulator_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.target = target
        self.simulator_url = simulator_url
        #: One model per deployment named in requests, built on first use and kept (its HTTP pool too).
        self.targets: dict[str, ModelTarget] = {target.deployment: target} if target else {}
        self.registry = registry or default_registry()
        self.config_error = config_error
        #: Conversation threads of graph chains (`thread_id`): this instance's memory, or PostgreSQL shared
        #: by every instance (`CHAT_THREADS_STORE`). A store that cannot be built from the settings makes
        #: threaded requests a 503 `not_configured` (the reason is logged now), nothing else.
        self.threads_error: str | None = None
        try:
            url = settings.threads_postgres_url
            self.checkpointer: Any = thread_store(
                settings.threads_store,
                url.get_secret_value() if url is not None else None,
                timeout=settings.threads_timeout_seconds,
                ttl_days=settings.threads_ttl_days,
                client_id=settings.azure_client_id,
            )
        except ValueError as exc:
            log.error("thread store misconfigured: %s", exc)
            self.threads_error, self.checkpointer = str(exc), None
        #: Retries before the first chunk only, and only while they fit in the first-event wait.
        self.retry = RetryPolicy(settings.upstream_max_retries, settings.first_event_wait_seconds)
        self.limits = Limits(
            max_messages=settings.max_messages,
            max_content_chars=settings.max_content_chars,
            max_tokens=settings.max_tokens_limit,
            max_deployments=settings.max_request_deployments,
            reasoning_efforts=settings.reasoning_effort_set,
        )
        #: Which deployments are reasoning models: configuration (CHAT_REASONING_DEPLOYMENTS), never
        #: guessed from a name.
        self.reasoning = settings.reasoning_deployment_set
        #: CHAT_FALLBACK_DEPLOYMENTS: only allowed deployments, else every request gets a 503.
        self.fallbacks = settings.fallback_deployment_list
        self.fallback_error: str | None = None
        unknown = [n for n in self.fallbacks if n not in settings.allowed_deployments]
        if unknown:
            log.error("CHAT_FALLBACK_DEPLOYMENTS names deployments outside the allow-list: %s", unknown)
            self.fallback_error = (
                "CHAT_FALLBACK_DEPLOYMENTS names a deployment outside the allow-list "
                "(AZURE_OPENAI_DEPLOYMENT + CHAT_DEPLOYMENTS)"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatService:
        """Never raises for bad settings: the reason is logged now and answered as 503 per request."""
        try:
            simulator_url = None
            if settings.provider == "simulator":
                from chatstream.embedded_simulator import ensure_simulator

                simulator_url = ensure_simulator(settings)
            target = build_model(settings, simulator_url)
        except ConfigurationError as exc:
            log.error("chat model misconfigured: %s", exc)
            return cls(settings, None, config_error=str(exc))
        log.info(
            "chat model: provider=%s deployment=%s endpoint=%s",
            target.provider,
            target.deployment,
            target.endpoint,
        )
        return cls(settings, target, simulator_url=simulator_url)

    def catalog(self) -> dict[str, Any]:
        """What a client may choose (`GET /api/chains`): chain names and the deployment allow-list.

        Names only, no endpoints or keys, so it can be served without a function key.
        """
        return {
            "chains": [{"name": s.name, "description": s.description} for s in self.registry.specs()],
            "default_chain": self.settings.default_chain,
            "deployments": self.settings.allowed_deployments,
            "default_deployment": self.settings.default_deployment or None,
            "max_request_deployments": self.settings.max_request_deployments,
        }

    def _target(self, deployment: str) -> ModelTarget:
        target = self.targets.get(deployment)
        if target is None:
            try:
                target = build_model(self.settings, self.simulator_url, deployment)
            except ConfigurationError as exc:
                raise errors.not_configured(str(exc)) from None
            self.targets[deployment] = target
        return target

    def _deployments(self, request: ChatRequest) -> list[str]:
        assert self.target is not None
        if not request.deployments:
            return [self.target.deployment]
        allowed = self.settings.allowed_deployments
        unknown = [name for name in request.deployments if name not in allowed]
        if unknown:
            raise errors.unknown_deployment(unknown, allowed)
        return request.deployments

    def _fallbacks(self, request: ChatRequest, deployments: list[str]) -> list[str]:
        """The deployments that stand in, in order, for a request's one deployment: the request's
        `fallback_deployments` (`[]`: none), else CHAT_FALLBACK_DEPLOYMENTS less those whose kind
        does not take the request's options (an option they refuse would turn the fallback into a 400).
        """
        named = request.fallback_deployments
        if named is not None:
            if len(deployments) > 1 and named:
                raise errors.fallback_with_deployments()
            allowed = self.settings.allowed_deployments
            unknown = [name for name in named if name not in allowed]
            if unknown:
                raise errors.unknown_deployment(unknown, allowed, param="fallback_deployments")
            return [name for name in named if name not in deployments]
        if len(deployments) > 1:
            return []
        return [name for name in self.fallbacks if name not in deployments and self._takes(request, name)]

    def _takes(self, request: ChatRequest, deployment: str) -> bool:
        """Whether `deployment` accepts the request's options (see `_check_options`)."""
        reasoning = deployment in self.reasoning
        if request.temperature is not None and reasoning:
            return False
        return request.reasoning_effort is None or reasoning

    def run(self, request: ChatRequest, request_id: str) -> ChainRun | MultiRun | FallbackRun:
        """Raises `ChatError` for an unknown chain or deployment, or a misconfigured model.

        One deployment gives a `ChainRun` (a `FallbackRun` when it has fallbacks); several give a
        `MultiRun` that streams them all at once.
        """
        chain_name = request.chain or self.settings.default_chain
        spec = self.registry.get(chain_name)
        if spec is None:
            raise errors.unknown_chain(chain_name, self.registry.names())
        if self.target is None:
            raise errors.not_configured(self.config_error or "unknown reason")
        if self.fallback_error is not None:
            raise errors.not_configured(self.fallback_error)
        deployments = self._deployments(request)
        fallbacks = self._fallbacks(request, deployments)
        self._check_options(request, [*deployments, *fallbacks])
        for name in fallbacks:
            self._target(name)  # a misconfigured fallback is a 503 now, not after the first failure
        runs = [self._run_one(spec, chain_name, request, request_id, name) for name in deployments]
        if len(runs) == 1:
            if not fallbacks:
                return runs[0]
            return FallbackRun(
                runs[0],
                fallbacks,
                lambda name: self._run_one(spec, chain_name, request, request_id, name),
                first_event_wait=self.settings.first_event_wait_seconds,
                deadline_seconds=self.settings.deadline_seconds,
            )
        return MultiRun(runs, request_id=request_id, chain_name=chain_name)

    def _check_options(self, request: ChatRequest, deployments: list[str]) -> None:
        """A 400 before any model call for an option a named deployment does not take.

        Rule: `temperature` on a reasoning deployment, or `reasoning_effort` on any other, is refused
        (never dropped): the caller asked for something the model cannot do, and silently ignoring it
        would change the answer's character unannounced. With several deployments, one is enough.
        """
        if request.temperature is not None:
            reasoning = [name for name in deployments if name in self.reasoning]
            if reasoning:
                raise errors.unsupported_parameter("temperature", reasoning, reasoning=True)
        if request.reasoning_effort is not None:
            others = [name for name in deployments if name not in self.reasoning]
            if others:
                raise errors.unsupported_parameter("reasoning_effort", others, reasoning=False)

    def _options(self, request: ChatRequest, deployment: str) -> dict[str, Any]:
        """What this deployment's kind accepts: reasoning models take `max_completion_tokens` (which
        also covers their hidden reasoning tokens) and `reasoning_effort`; others `max_tokens` and
        `temperature`. `_check_options` has already refused the rest."""
        options: dict[str, Any] = {}
        max_tokens = request.max_tokens or self.settings.default_max_tokens
        if deployment in self.reasoning:
            if max_tokens is not None:
                options["max_completion_tokens"] = max_tokens
            if request.reasoning_effort is not None:
                options["reasoning_effort"] = request.reasoning_effort
            return options
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        if request.temperature is not None:
            options["temperature"] = request.temperature
        return options

    def _run_one(
        self, spec: ChainSpec, chain_name: str, request: ChatRequest, request_id: str, deployment: str
    ) -> ChainRun:
        target = self._target(deployment)
        options = self._options(request, target.deployment)
        model = target.model.bind(**options) if options else target.model
        context = ChainContext(
            model=model,
            system_prompt=self.settings.system_prompt,
            chat_model=target.model,
            model_options=options,
            tool_max_rounds=self.settings.tool_max_rounds,
            rag_top_k=self.settings.rag_top_k,
            checkpointer=self.checkpointer,
        )
        chain = as_chain(spec.build(context), checkpointer=self.checkpointer)
        run_config: dict[str, Any] = {
            "run_name": f"chat:{chain_name}",
            "metadata": {"request_id": request_id, "deployment": target.deployment},
        }
        if request.thread_id is not None:
            if not isinstance(chain, GraphChain):
                raise errors.threads_unsupported(chain_name)
            if self.threads_error is not None:
                raise errors.not_configured(self.threads_error)
            # Per chain: another chain's graph would not read this one's state.
            run_config["configurable"] = {"thread_id": f"{chain_name}:{request.thread_id}"}
        conversation = request.conversation
        inputs = {"history": _history(conversation[:-1]), "question": conversation[-1].content}
        span = telemetry.start_span(
            f"chat {chain_name}",
            {
                "chat.request_id": request_id,
                "chat.chain": chain_name,
                "chat.deployment": target.deployment,
                "gen_ai.operation.name": "chat",
                "chat.stream": request.stream,
            },
        )
        record = RunRecord(request_id, chain_name, target.deployment, span=span)
        record.prompt_chars = len(self.settings.system_prompt) + sum(len(m.content) for m in conversation)
        if self.settings.log_content:
            record.question, record.answer = conversation[-1].content, []
        run = ChainRun(
            chain=chain,
            inputs=inputs,
            record=record,
            config=run_config,  # type: ignore[arg-type]
            retry=self.retry,
        )
        live_runs.add(run)
        return run
