"""`rag`: answer from the product documents shipped with the app, with progress and citations.

Before the model is called the chain yields `progress` events (searching, found, generating) and a
`citations` event, so a client can show what is happening during retrieval; then the model's chunks.
The passages are numbered in the prompt so the model can cite them as [1], [2], ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator

from chains.registry import ChainContext, ChainSpec, ChatInput
from chains.retrieval import BM25Retriever

INSTRUCTIONS = (
    "Answer the question using only the numbered passages below. Cite the passages you used as [1], [2]. "
    "If the passages do not contain the answer, say so."
)


def progress(stage: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "progress", "stage": stage, "message": message, **extra}


def citation(number: int, document: Document) -> dict[str, Any]:
    meta = document.metadata
    return {
        "number": number,
        "id": meta["id"],
        "title": meta["title"],
        "source": meta["source"],
        "score": meta.get("score"),
    }


def context_block(documents: list[Document]) -> str:
    return "\n\n".join(
        f"[{n}] {d.metadata['title']}\n{d.page_content}" for n, d in enumerate(documents, start=1)
    )


def build_rag_loop(context: ChainContext, retriever: BaseRetriever) -> Runnable:
    model = context.model

    async def rag(inputs: AsyncIterator[ChatInput], config: RunnableConfig) -> AsyncIterator[Any]:
        request = [item async for item in inputs][-1]
        question = request["question"]
        size = await asyncio.to_thread(retriever.size) if isinstance(retriever, BM25Retriever) else None
        scope = f"{size} documents" if size else "the documents"
        yield progress("searching", f"Searching {scope}")
        documents = await retriever.ainvoke(question, config)
        yield progress("found", f"Found {len(documents)} passages", count=len(documents))
        yield {"type": "citations", "citations": [citation(n, d) for n, d in enumerate(documents, start=1)]}
        yield progress("generating", "Generating the answer")
        passages = context_block(documents) if documents else "(no passages matched)"
        messages = [
            SystemMessage(content=f"{context.system_prompt}\n\n{INSTRUCTIONS}\n\n{passages}"),
            *request["history"],
            HumanMessage(content=question),
        ]
        async for chunk in model.astream(messages, config):
            yield chunk

    # RunnableGenerator passes the config to a function that takes one; its stubs do not say so.
    return RunnableGenerator(rag, name="rag")  # type: ignore[arg-type]


def build_rag_chain(context: ChainContext) -> Runnable:
    return build_rag_loop(context, BM25Retriever(k=context.rag_top_k))


RAG = ChainSpec(
    name="rag",
    description="Answers from the product documents (BM25 retrieval) with progress and citation events.",
    build=build_rag_chain,
)
