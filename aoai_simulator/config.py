"""Configuration of the simulated Azure OpenAI deployment.

A frozen dataclass rather than pydantic-settings so the simulator can be embedded (tests, the app's
local mode) without reading the process environment by accident; `from_env` is the explicit opt-in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

#: Matches dated data-plane versions such as 2024-10-21 and 2025-04-01-preview.
_API_VERSION_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(-preview)?$")
#: Dated versions older than this never had chat completions on Azure.
_OLDEST_API_VERSION = "2022-12-01"
#: Undated aliases of the v1 surface that Azure also accepts.
_UNDATED_API_VERSIONS = frozenset({"latest", "preview", "v1"})


@dataclass(frozen=True)
class SimulatorConfig:
    """Every knob of the simulator; `replace()` a default instance to change one."""

    #: Time to first content token, milliseconds (headers and the prompt-filter chunk go out at once).
    ttft_ms: float = 150.0
    #: Delay between content tokens, milliseconds.
    token_delay_ms: float = 30.0
    #: Completion length when the request does not cap it (tokens).
    answer_tokens: int = 60
    #: Hard ceiling for `x-sim-tokens`, protecting the process from absurd requests.
    max_answer_tokens: int = 1_000_000
    #: Reported model name; Azure reports the model version, not the deployment name.
    model: str = "gpt-4o-mini-2024-07-18"
    system_fingerprint: str = "fp_5f1b5e3a2c"
    #: Accepted api keys; empty means any non-empty key. Bearer tokens are always accepted if non-empty.
    api_keys: frozenset[str] = frozenset()
    #: Known deployments; empty means every deployment name exists.
    deployments: frozenset[str] = frozenset()
    #: Accepted api-version values; empty means any plausible dated version (see `api_version_ok`).
    api_versions: frozenset[str] = frozenset()
    #: Faults applied to every request for a deployment, e.g. {"flaky": "503;times=1"}.
    deployment_faults: Mapping[str, str] = field(default_factory=dict)
    #: Deployments named `<prefix><spec>` (e.g. `fault-429`) get fault `<spec>`; empty string disables.
    fault_deployment_prefix: str = "fault-"
    #: Read a `[sim:SPEC]` marker in the last message's content as that request's fault spec, for
    #: callers that forward the prompt but not our headers (the chat app in end-to-end tests).
    prompt_faults: bool = False
    #: Optional per-deployment limits over a sliding 60 s window; None means unlimited.
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    #: Number of request records kept for `/_sim/stats`.
    history_size: int = 1000
    #: How long `timeout` and `stall-after` faults hold a connection before giving up (seconds).
    hold_seconds: float = 600.0
    region: str = "Sweden Central"
    #: Deployments that behave like reasoning models (gpt-5 family, o-series): they reject sampling
    #: parameters and `max_tokens` with Azure's 400, accept `max_completion_tokens` and
    #: `reasoning_effort`, think before the first token and report `reasoning_tokens` in usage.
    reasoning_deployments: frozenset[str] = frozenset()
    #: Hidden tokens a reasoning deployment spends per `reasoning_effort`; the keys are the values it
    #: accepts (gpt-5 / gpt-5-mini's set: gpt-5.1 and later take `none` but not `minimal`).
    reasoning_effort_tokens: Mapping[str, int] = field(
        default_factory=lambda: {"minimal": 0, "low": 16, "medium": 48, "high": 128}
    )
    #: The effort used when the request names none (Azure: `medium` before gpt-5.1).
    default_reasoning_effort: str = "medium"
    #: Model version a reasoning deployment reports.
    reasoning_model: str = "gpt-5-mini-2025-08-07"
    #: Thinking time per reasoning token, spent before the first visible token (milliseconds).
    reasoning_token_ms: float = 2.0

    def api_version_ok(self, version: str) -> bool:
        """Azure rejects versions it does not know; we approximate 'known' by shape and date."""
        if self.api_versions:
            return version in self.api_versions
        if version in _UNDATED_API_VERSIONS:
            return True
        match = _API_VERSION_RE.match(version)
        return bool(match) and version[:10] >= _OLDEST_API_VERSION

    def deployment_known(self, deployment: str) -> bool:
        return not self.deployments or deployment in self.deployments

    def is_reasoning(self, deployment: str) -> bool:
        return deployment in self.reasoning_deployments

    def api_key_ok(self, key: str) -> bool:
        return bool(key) and (not self.api_keys or key in self.api_keys)

    def fault_for_deployment(self, deployment: str) -> str | None:
        """Deployment-bound fault spec, from the explicit mapping or the name prefix convention."""
        if deployment in self.deployment_faults:
            return self.deployment_faults[deployment]
        prefix = self.fault_deployment_prefix
        if prefix and deployment.startswith(prefix) and len(deployment) > len(prefix):
            return deployment[len(prefix) :]
        return None

    def with_overrides(self, **changes: Any) -> SimulatorConfig:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SimulatorConfig:
        """Read SIMULATOR_* variables (the app's settings contract names the timing ones)."""
        env = os.environ if env is None else env
        base = cls()

        def _num(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            return float(raw) if raw else default

        def _opt_int(name: str) -> int | None:
            raw = env.get(name, "").strip()
            return int(raw) if raw else None

        def _set(name: str) -> frozenset[str]:
            return frozenset(p.strip() for p in env.get(name, "").split(",") if p.strip())

        return cls(
            ttft_ms=_num("SIMULATOR_TTFT_MS", base.ttft_ms),
            token_delay_ms=_num("SIMULATOR_TOKEN_DELAY_MS", base.token_delay_ms),
            answer_tokens=int(_num("SIMULATOR_ANSWER_TOKENS", base.answer_tokens)),
            model=env.get("SIMULATOR_MODEL", "").strip() or base.model,
            api_keys=_set("SIMULATOR_API_KEYS"),
            deployments=_set("SIMULATOR_DEPLOYMENTS"),
            reasoning_deployments=_set("SIMULATOR_REASONING_DEPLOYMENTS"),
            requests_per_minute=_opt_int("SIMULATOR_RPM"),
            tokens_per_minute=_opt_int("SIMULATOR_TPM"),
        )
