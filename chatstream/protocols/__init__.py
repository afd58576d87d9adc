"""The wire protocols a caller may speak. Each maps the same request model and event stream
(`chatstream.events`) to its own request bodies, stream encoding, heartbeats and error shapes; the
endpoint, the runs and the response are shared. See docs/protocol.md for each one's mapping."""

from chatstream.protocols.ag_ui import AG_UI
from chatstream.protocols.ai_sdk import AI_SDK
from chatstream.protocols.base import ChatProtocol, StreamEncoder
from chatstream.protocols.native import NATIVE, NativeProtocol
from chatstream.protocols.openai import OpenAIProtocol

__all__ = ["AG_UI", "AI_SDK", "NATIVE", "ChatProtocol", "NativeProtocol", "OpenAIProtocol", "StreamEncoder"]
