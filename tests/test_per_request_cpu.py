"""The per-request paths of issue 17 part 2 (round 2) keep their guarantees while doing less.

- Azure's text chunks (they carry `"usage": null`) take the decoder's inline path, decoded as before.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatstream import chunk_stream
from tests.support.hostile import chunk

AZURE_TEXT = {
    **chunk("Hello"),
    "system_fingerprint": "fp_1",
    "usage": None,
}
AZURE_TEXT["choices"][0]["content_filter_results"] = {"hate": {"filtered": False, "severity": "safe"}}


def test_azure_text_chunks_take_the_inline_decoder_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`"usage": null` on every Azure chunk sent each token through the full shape checks."""
    payload = json.dumps(AZURE_TEXT).encode()
    decoder = chunk_stream._Decoder(None)  # type: ignore[arg-type]
    slow: list[Any] = []
    original = chunk_stream._Decoder._decode_rest

    def counted(self: Any, value: Any, raw: bytes) -> Any:
        slow.append(raw)
        return original(self, value, raw)

    monkeypatch.setattr(chunk_stream._Decoder, "_decode_rest", counted)
    assert decoder.decode(payload) == AZURE_TEXT
    assert slow == [] and decoder.answered and not decoder.finished
    # Usage, errors and finishes still take the checked path.
    for other in ({**AZURE_TEXT, "usage": {"prompt_tokens": 1}}, chunk(finish_reason="stop")):
        decoder.decode(json.dumps(other).encode())
    assert len(slow) == 2
