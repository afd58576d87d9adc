"""BM25 keyword retrieval over the documents shipped in `chains/data/docs` (a LangChain retriever).

rank-bm25 does the scoring; the index is built once per process on first use (off the event loop:
its numpy import alone takes ~0.1 s), so the `chat` chain's cold start does not pay for it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

DOCS_DIR = Path(__file__).parent / "data" / "docs"

_WORD_RE = re.compile(r"[a-z0-9_]+")
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i in is it its of on or so that the this to "
    "what when where which who why with you your".split()
)


def tokenize(text: str) -> list[str]:
    return [word for word in _WORD_RE.findall(text.lower()) if word not in _STOPWORDS]


@dataclass(frozen=True)
class Corpus:
    documents: tuple[Document, ...]

    @classmethod
    def load(cls, folder: Path = DOCS_DIR) -> Corpus:
        """Text files (not .md: .funcignore keeps *.md out of the package): the first `# ` line is the
        title, the file name without .txt the id."""
        documents = []
        for path in sorted(folder.glob("*.txt")):
            text = path.read_text(encoding="utf-8")
            first, _, body = text.partition("\n")
            title = first.removeprefix("# ").strip()
            documents.append(
                Document(
                    page_content=body.strip(),
                    metadata={"id": path.stem, "title": title, "source": f"docs/{path.name}"},
                    id=path.stem,
                )
            )
        if not documents:
            raise FileNotFoundError(f"no documents in {folder}")
        return cls(tuple(documents))

    @cached_property
    def index(self):  # noqa: ANN201 - rank_bm25 has no type hints
        from rank_bm25 import BM25Okapi

        return BM25Okapi([tokenize(f"{d.metadata['title']} {d.page_content}") for d in self.documents])

    def search(self, query: str, k: int) -> list[Document]:
        """The k best passages with a positive score, best first; each a copy carrying its `score`."""
        terms = tokenize(query)
        if not terms:
            return []
        scores = self.index.get_scores(terms)
        ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        return [
            Document(
                page_content=self.documents[i].page_content,
                metadata={**self.documents[i].metadata, "score": round(float(scores[i]), 4)},
                id=self.documents[i].id,
            )
            for i in ranked
            if scores[i] > 0
        ]


_lock = threading.Lock()
_default: Corpus | None = None


def default_corpus() -> Corpus:
    global _default
    with _lock:
        if _default is None:
            corpus = Corpus.load()
            _ = corpus.index
            _default = corpus
        return _default


class BM25Retriever(BaseRetriever):
    """`ainvoke` runs the (sync, CPU-bound, sub-millisecond once built) search in the default executor."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    k: int = 4
    corpus: Corpus | None = None

    def size(self) -> int:
        """Number of documents searched (loads the corpus on first use: call off the event loop)."""
        return len((self.corpus or default_corpus()).documents)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        corpus = self.corpus or default_corpus()
        return corpus.search(query, self.k)
