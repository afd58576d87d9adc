"""What every LangChain baseline shares: the same chain as the product's `chat` chain, same upstream."""

from __future__ import annotations

import os

from langchain_core.messages import SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langchain_openai import AzureChatOpenAI

SYSTEM_PROMPT = "You are a helpful assistant. Answer clearly and concisely."


def chain() -> Runnable:
    """`prompt | AzureChatOpenAI`, configured the way the tutorials do it (usage on, defaults otherwise)."""
    model = AzureChatOpenAI(
        azure_endpoint=os.environ["AZURE_OPENAI_ENDPOINT"],
        azure_deployment=os.environ.get("AZURE_OPENAI_DEPLOYMENT", "gpt-4o-mini"),
        api_version="2024-10-21",
        api_key=os.environ.get("AZURE_OPENAI_API_KEY", "bench-key"),
        stream_usage=True,
    )
    prompt = ChatPromptTemplate.from_messages([SystemMessage(content=SYSTEM_PROMPT), ("human", "{question}")])
    return prompt | model
