"""Named chains the caller picks with `"chain"`; each one is built around an injected chat model.

Chains know nothing of HTTP: they take `ChatInput` and stream `AIMessageChunk`s, so the caller's
usage and finish reason travel through unchanged. A chain may also yield plain dicts with a `type`
key (progress, citations, tool results): the runner forwards them as events of that type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable


class ChatInput(TypedDict):
    history: list[BaseMessage]
    question: str


@dataclass(frozen=True)
class ChainContext:
    """What a chain is built from: the model (already bound to the request's options) and its prompt."""

    model: Runnable | BaseChatModel
    system_prompt: str
    #: The unbound model and the request's options, for chains that bind more (tools) before the options.
    chat_model: BaseChatModel | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    #: Model calls the `tools` chain may make before it must have answered.
    tool_max_rounds: int = 4
    #: Passages the `rag` chain retrieves.
    rag_top_k: int = 4
    #: Where graph chains keep conversation threads (`thread_id`); shared by every request.
    checkpointer: Any = None

    def model_with_tools(self, tools: Sequence[Any]) -> Runnable:
        """`bind_tools` on the model itself, then the request's options: binding tools onto an already
        bound model would drop its options (max_tokens, temperature)."""
        base = self.chat_model
        if base is None:
            if not isinstance(self.model, BaseChatModel):
                raise TypeError("a chain that binds tools needs ChainContext.chat_model")
            base = self.model
        bound = base.bind_tools(list(tools))
        return bound.bind(**self.model_options) if self.model_options else bound


@dataclass(frozen=True)
class ChainSpec:
    name: str
    description: str
    build: Callable[[ChainContext], Runnable]


class ChainRegistry:
    def __init__(self, specs: list[ChainSpec] | None = None) -> None:
        self._specs: dict[str, ChainSpec] = {}
        for spec in specs or []:
            self.register(spec)

    def register(self, spec: ChainSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"chain {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ChainSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[ChainSpec]:
        """Every chain, by name."""
        return [self._specs[name] for name in self.names()]
