"""`LeanSequence` formats its prompts without a run of their own: same prompt value, same errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda

from chains.lean import LeanSequence

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Be {style}."), MessagesPlaceholder("history"), ("human", "{question}")]
).partial(style="brief")


def _stream(inputs: Any) -> list[Any]:
    seen: list[Any] = []
    chain = LeanSequence(PROMPT, RunnableLambda(lambda value: seen.append(value) or "ok"))

    async def run() -> list[Any]:
        return [chunk async for chunk in chain.astream(inputs)]

    assert asyncio.run(run()) == ["ok"]
    return seen


def test_the_model_gets_what_the_prompt_formats() -> None:
    inputs = {"history": [HumanMessage("earlier")], "question": "now?"}
    assert _stream(inputs) == [PROMPT.invoke(inputs)]


def test_a_missing_variable_is_reported_as_langchain_reports_it() -> None:
    with pytest.raises(KeyError) as expected:
        PROMPT.invoke({"history": []})
    with pytest.raises(KeyError) as got:
        _stream({"history": []})
    assert str(got.value) == str(expected.value)
