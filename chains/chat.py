"""`chat`: system prompt + conversation history + the new question, into the chat model."""

from __future__ import annotations

from langchain_core.messages import SystemMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable

from chains.lean import LeanSequence
from chains.registry import ChainContext, ChainSpec


def build_chat_chain(context: ChainContext) -> Runnable:
    # The system prompt is a message object, not a template string, so braces in it stay literal.
    prompt = ChatPromptTemplate.from_messages(
        [
            SystemMessage(content=context.system_prompt),
            MessagesPlaceholder("history"),
            ("human", "{question}"),
        ]
    )
    return LeanSequence(prompt, context.model)


CHAT = ChainSpec(
    name="chat",
    description="System prompt, history and question straight into the chat model.",
    build=build_chat_chain,
)
