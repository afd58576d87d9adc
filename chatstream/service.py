"""The chat service: validated request in, a ready-to-run `ChainRun` out."""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from chains import ChainContext, ChainRegistry, default_registry
from chatstream import errors, telemetry
from chatstream.models import ConfigurationError, ModelTarget, build_model
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
    ) -> None:
        self.settings = settings
        self.target = target
        self.registry = registry or default_registry()
        self.config_error = config_error
        self.limits = Limits(
            max_messages=settings.max_messages,
            max_content_chars=settings.max_content_chars,
            max_tokens=settings.max_tokens_limit,
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
        return cls(settings, target)

    def run(self, request: ChatRequest, request_id: str) -> ChainRun:
        """Raises `ChatError` for an unknown chain or a misconfigured model."""
        chain_name = request.chain or self.settings.default_chain
        spec = self.registry.get(chain_name)
        if spec is None:
            raise errors.unknown_chain(chain_name, self.registry.names())
        if self.target is None:
            raise errors.not_configured(self.config_error or "unknown reason")
        options: dict[str, Any] = {}
        max_tokens = request.max_tokens or self.settings.default_max_tokens
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        if request.temperature is not None:
            options["temperature"] = request.temperature
        model = self.target.model.bind(**options) if options else self.target.model
        chain = spec.build(ChainContext(model=model, system_prompt=self.settings.system_prompt))
        conversation = request.conversation
        inputs = {"history": _history(conversation[:-1]), "question": conversation[-1].content}
        span = telemetry.start_span(
            f"chat {chain_name}",
            {
                "chat.request_id": request_id,
                "chat.chain": chain_name,
                "chat.deployment": self.target.deployment,
                "gen_ai.operation.name": "chat",
                "chat.stream": request.stream,
            },
        )
        return ChainRun(
            span=span,
            chain=chain,
            inputs=inputs,
            request_id=request_id,
            chain_name=chain_name,
            deployment=self.target.deployment,
            config={"run_name": f"chat:{chain_name}", "metadata": {"request_id": request_id}},
        )
