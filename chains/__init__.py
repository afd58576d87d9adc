"""The chains this app can run, by name."""

from chains.chat import CHAT
from chains.registry import ChainContext, ChainRegistry, ChainSpec, ChatInput

__all__ = ["ChainContext", "ChainRegistry", "ChainSpec", "ChatInput", "default_registry"]


def default_registry() -> ChainRegistry:
    return ChainRegistry([CHAT])
