"""Deterministic tool calling: which of the offered tools the simulated model calls, and with what.

Real models decide from the prompt; the simulator decides from simple, documented rules so tests
can predict the calls: an arithmetic expression in the last user message -> a tool with an
`expression` parameter; "time", "clock" or "date" -> a tool about time with no required
parameters; a tool named verbatim in the message -> that tool. Only the last message being a user
message can trigger calls (after `tool` messages the model answers in text, quoting the results).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .text import message_text

#: Numbers joined by arithmetic operators, optionally parenthesised: "12 * (3 + 4)", "2**10".
_EXPRESSION_RE = re.compile(r"[(\s]*-?\d+(?:\.\d+)?[)\s]*(?:(?:\*\*|[-+*/%])[(\s]*-?\d+(?:\.\d+)?[)\s]*)+")
_TIME_WORDS = re.compile(r"\b(time|clock|date|today|now)\b", re.IGNORECASE)
#: Arguments are streamed in fragments of this many characters (real services send 1-10).
FRAGMENT_CHARS = 5


@dataclass(frozen=True)
class PlannedCall:
    call_id: str
    name: str
    arguments: str

    def fragments(self) -> list[str]:
        text = self.arguments
        return [text[i : i + FRAGMENT_CHARS] for i in range(0, len(text), FRAGMENT_CHARS)] or [""]


def _functions(tools: Any) -> list[Mapping[str, Any]]:
    if not isinstance(tools, list):
        return []
    found = []
    for tool in tools:
        if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
            function = tool["function"]
            if isinstance(function.get("name"), str):
                found.append(function)
    return found


def _properties(function: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") or {}
    required = parameters.get("required") or []
    return dict(properties), list(required)


def _about_time(function: Mapping[str, Any]) -> bool:
    words = f"{function['name']} {function.get('description', '')}"
    return bool(_TIME_WORDS.search(words.replace("_", " ")))


def _forced_name(tool_choice: Any) -> str | None:
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return function["name"]
    return None


def plan_tool_calls(
    messages: Sequence[Mapping[str, Any]], tools: Any, tool_choice: Any, seed: str
) -> list[PlannedCall]:
    """The calls the model makes for this request; empty means it answers in text."""
    functions = _functions(tools)
    if not functions or tool_choice == "none" or not messages or messages[-1].get("role") != "user":
        return []
    text = message_text(messages[-1].get("content"))
    forced = _forced_name(tool_choice)
    if forced is not None:
        functions = [f for f in functions if f["name"] == forced]
    calls: list[tuple[str, dict[str, Any]]] = []
    for function in functions:
        properties, required = _properties(function)
        if "expression" in properties:
            for match in _EXPRESSION_RE.finditer(text):
                calls.append((function["name"], {"expression": match.group().strip()}))
        elif not required and _about_time(function) and _TIME_WORDS.search(text):
            calls.append((function["name"], {}))
        elif function["name"] in text:
            args = {name: text[:40] for name in required if properties.get(name, {}).get("type") == "string"}
            calls.append((function["name"], args))
    if not calls and (forced is not None or tool_choice == "required") and functions:
        calls.append((functions[0]["name"], {}))
    return [
        PlannedCall(f"call_{seed[:20]}{index:02d}", name, json.dumps(args))
        for index, (name, args) in enumerate(calls)
    ]
