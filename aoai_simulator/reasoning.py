"""What a reasoning deployment (gpt-5 family, o-series) accepts, as Azure enforces it.

Sources: Microsoft's reasoning-models page ("Not supported: temperature, top_p, presence_penalty,
frequency_penalty, logprobs, top_logprobs, logit_bias, max_tokens"; `max_completion_tokens` only) and
the 400 bodies Azure returns for them (`unsupported_parameter` / `unsupported_value`, naming `param`).
A gpt-5 family deployment takes `temperature` at its default (1) and rejects any other value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import errors
from .config import SimulatorConfig

#: Sampling and log-probability parameters reasoning models reject outright.
UNSUPPORTED = ("top_p", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias")


def _number(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _choices(values: list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 1 else "".join(quoted)


def rejection(body: Mapping[str, Any], config: SimulatorConfig, reasoning: bool) -> bytes | None:
    """Azure's 400 body for the first parameter this kind of deployment does not take, else None."""
    if not reasoning:
        if body.get("reasoning_effort") is not None:
            return errors.unsupported_parameter("reasoning_effort")
        return None
    if body.get("max_tokens") is not None:
        return errors.unsupported_parameter("max_tokens", "Use 'max_completion_tokens' instead.")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return errors.unsupported(
            f"Unsupported value: 'temperature' does not support {_number(temperature)} with this model. "
            "Only the default (1) value is supported.",
            "temperature",
            "unsupported_value",
        )
    for name in UNSUPPORTED:
        if body.get(name) is not None:
            return errors.unsupported_parameter(name)
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in config.reasoning_effort_tokens:
        return errors.unsupported(
            f"Unsupported value: '{effort}' is not supported with the '{config.reasoning_model}' model. "
            f"Supported values are: {_choices(list(config.reasoning_effort_tokens))}.",
            "reasoning_effort",
            "unsupported_value",
        )
    return None


def hidden_tokens(body: Mapping[str, Any], config: SimulatorConfig, budget: int | None) -> int:
    """Reasoning tokens for this request; they count against `max_completion_tokens` first."""
    effort = body.get("reasoning_effort") or config.default_reasoning_effort
    tokens = config.reasoning_effort_tokens.get(effort, 0)
    return tokens if budget is None else min(tokens, budget)
