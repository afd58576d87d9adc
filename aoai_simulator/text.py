"""Deterministic answer text and a tiktoken-free token counter.

The tokenizer only has to be deterministic, cheap and round-trip (joining the tokens gives the text
back), so streamed chunks, usage numbers and the non-streaming answer always agree. It is not BPE:
counts are in the same ballpark as OpenAI's for English prose, which is all tests and benchmarks need.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

#: Optional leading space + letters | up to 3 digits | a punctuation run | whitespace. Covers every
#: character, so `"".join(tokenize(s)) == s`.
_TOKEN_RE = re.compile(r" ?[^\W\d]+| ?\d{1,3}| ?[^\s\w]+|\s+(?!\S)|\s+")

#: OpenAI's documented chat overhead: 3 tokens per message, 1 per name, 3 to prime the reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

_QUOTE_WORDS = 8

# Vocabulary for the filler sentences; "|"-separated to keep the module short.
_SUBJECTS = tuple(
    "The stream|Each chunk|A careful client|The gateway|This deployment|The retry policy|A good answer"
    "|The event loop|Every token|The simulator|Your function|The parser".split("|")
)
_VERBS = tuple(
    "arrives|settles|keeps|carries|reflects|measures|follows|returns|shapes|protects|tracks".split("|")
)
_OBJECTS = tuple(
    "the latency budget|a steady rhythm|the original question|clear boundaries|every delta in order"
    "|the usage totals|a predictable outcome|the connection state|small pieces of text|the final answer"
    "|the request context|a calm backpressure".split("|")
)
_TAILS = tuple(
    "without surprises|as expected|in a deterministic way|for the benchmark|under load|one token at a time"
    "|with little overhead|before the deadline|quite reliably|on time".split("|")
)


def tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN_RE.finditer(text))


def message_text(content: Any) -> str:
    """Plain text of a message `content`: a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping) and "text" in part
        )
    return str(content)


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt size with OpenAI-like per-message overhead."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += count_tokens(str(message.get("role", "")))
        total += count_tokens(message_text(message.get("content")))
        if message.get("name"):
            total += TOKENS_PER_NAME + count_tokens(str(message["name"]))
    return total


def messages_digest(messages: Sequence[Mapping[str, Any]]) -> str:
    """Stable hash of the conversation; the seed of the answer."""
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def _trailing_tool_results(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    results: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(message_text(message.get("content")))
    return results[::-1]


def acknowledgement(messages: Sequence[Mapping[str, Any]]) -> str:
    """Readable opening that proves which request the answer belongs to.

    After `tool` messages it quotes every tool result, so tests can see the results reached the model.
    """
    results = _trailing_tool_results(messages)
    if results:
        return "Tool results: " + "; ".join(f'"{r}"' for r in results) + "."
    words = _last_user_text(messages).split()
    count = len(messages)
    plural = "message" if count == 1 else "messages"
    if not words:
        return f"You sent no question ({count} {plural} received)."
    quote = " ".join(words[:_QUOTE_WORDS]) + ("..." if len(words) > _QUOTE_WORDS else "")
    return f'You asked: "{quote}" ({count} {plural} received).'


def _sentences(rng: random.Random) -> Iterator[str]:
    while True:
        yield (f" {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}.")


@lru_cache(maxsize=128)
def _answer_tokens_cached(digest: str, ack: str, n_tokens: int) -> tuple[str, ...]:
    tokens = tokenize(ack)
    rng = random.Random(digest)
    sentences = _sentences(rng)
    while len(tokens) < n_tokens:
        tokens.extend(tokenize(next(sentences)))
    del tokens[n_tokens:]
    # End on a full stop so a full-length answer reads as finished; the count stays exactly n. Only
    # after a word: "." right after punctuation would merge with it and re-tokenize differently.
    if tokens and tokens[-1][-1:].isalnum() and (len(tokens) == 1 or tokens[-2][-1:].isalnum()):
        tokens[-1] = "."
    return tuple(tokens)


def answer_tokens(messages: Sequence[Mapping[str, Any]], n_tokens: int) -> tuple[str, ...]:
    """The full answer as tokens: same messages and length -> same tokens, every time."""
    if n_tokens <= 0:
        return ()
    return _answer_tokens_cached(messages_digest(messages), acknowledgement(messages), n_tokens)
