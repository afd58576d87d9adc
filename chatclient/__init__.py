"""A small client for the chat endpoint: `async for event in stream_chat(...)`, or `python -m chatclient`."""

from chatclient.metrics import StreamMetrics
from chatclient.stream import ChatHttpError, ask, chat_url, stream_chat

__all__ = ["ChatHttpError", "StreamMetrics", "ask", "chat_url", "stream_chat"]
