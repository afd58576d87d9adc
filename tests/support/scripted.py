"""A chat model whose every call streams the next scripted list of chunks, for agent tests in process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr


class ScriptedChatModel(BaseChatModel):
    """`calls` records the messages of each call; tools bound to it are accepted and ignored."""

    rounds: list[list[AIMessageChunk]]
    _next: int = PrivateAttr(0)
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def calls(self) -> list[list[BaseMessage]]:
        return self._calls

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self

    def _script(self, messages: list[BaseMessage]) -> list[AIMessageChunk]:
        self._calls.append(list(messages))
        chunks = self.rounds[self._next]
        self._next += 1
        return chunks

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        merged = self._script(messages)
        total = merged[0]
        for item in merged[1:]:
            total = total + item
        return ChatResult(generations=[ChatGeneration(message=total)])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Iterator[ChatGenerationChunk]:
        for item in self._script(messages):
            yield ChatGenerationChunk(message=item)

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        for item in self._script(messages):
            chunk = ChatGenerationChunk(message=item)
            if run_manager is not None:
                await run_manager.on_llm_new_token(item.text, chunk=chunk)
            yield chunk
