"""The chains this app can run, by name."""

from chains.chat import CHAT
from chains.errors import ChainFailure
from chains.rag import RAG
from chains.registry import ChainContext, ChainRegistry, ChainSpec, ChatInput
from chains.tools import TOOLS

__all__ = ["ChainContext", "ChainFailure", "ChainRegistry", "ChainSpec", "ChatInput", "default_registry"]


def default_registry() -> ChainRegistry:
    return ChainRegistry([CHAT, TOOLS, RAG])
