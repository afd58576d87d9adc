"""`chat`: system prompt + conversation history + the new question, into the chat model."""

from __future__ import annotations

from functools import lru_cache

from langchain_core.messages import SystemMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable

from chains.lean import LeanSequence
from chains.registry import ChainContext, ChainSpec


@lru_cache(maxsize=8)
def _prompt(system_prompt: str) -> ChatPromptTemplate:
    """Built once per system prompt: prompts are immutable, and a new one per request costs its
    construction plus its serialization for callbacks (LangChain computes it on every first use)."""
    # The system prompt is a message object, not a template string, so braces in it stay literal.
    return ChatPromptTemplate.from_messages(
        [
            SystemMessage(content=system_prompt),
            MessagesPlaceholder("history"),
            ("human", "{question}"),
        ]
    )


def build_chat_chain(context: ChainContext) -> Runnable:
    return LeanSequence(_prompt(context.system_prompt), context.model)  # type: ignore[call-arg]


CHAT = ChainSpec(
    name="chat",
    description="System prompt, history and question straight into the chat model.",
    build=build_chat_chain,
)
