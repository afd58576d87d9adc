"""Named chains the caller picks with `"chain"`; each one is built around an injected chat model.

Chains know nothing of HTTP: they take `ChatInput` and stream `AIMessageChunk`s, so the caller's
usage and finish reason travel through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

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
