"""`tools`: the model may call the example tools (calculator, utc_time); they run server-side.

The chain is a LangChain v1 `create_agent` agent (`chains/tools_agent.py`, which says what it
promises), imported when the chain is first built, so a cold start that serves no tool request does not
pay for LangChain's agent stack.
"""

from __future__ import annotations

from langchain_core.runnables import Runnable

from chains.registry import ChainContext, ChainSpec


def build_tools_chain(context: ChainContext) -> Runnable:
    from chains.tools_agent import build_tools_chain as build_agent

    return build_agent(context)


TOOLS = ChainSpec(
    name="tools",
    description="The model may call the example tools (calculator, utc_time); they run server-side.",
    build=build_tools_chain,
)
