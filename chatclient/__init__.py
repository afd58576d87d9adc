"""A small client for the chat endpoint: `async for event in stream_chat(...)`, or `python -m chatclient`."""

from chatclient.metrics import StreamMetrics
from chatclient.result import ChatResult
from chatclient.stream import ChatHttpError, ChatStream, StreamCut, ask, chat_url, stream_chat

__all__ = [
    "ChatHttpError",
    "ChatResult",
    "ChatStream",
    "StreamCut",
    "StreamMetrics",
    "ask",
    "chat_url",
    "stream_chat",
]
