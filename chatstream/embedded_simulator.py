"""The simulated Azure OpenAI deployment, started inside this process when no endpoint is set."""

from __future__ import annotations

import threading

from chatstream.models import ConfigurationError
from chatstream.settings import Settings

_lock = threading.Lock()
_url: str | None = None


def ensure_simulator(settings: Settings) -> str:
    """Starts it once per process on a loopback port and returns its base URL."""
    global _url
    with _lock:
        if _url is None:
            try:
                from aoai_simulator.config import SimulatorConfig
                from aoai_simulator.server import start_in_thread
            except ImportError as exc:
                raise ConfigurationError("the simulated deployment is not installed") from exc
            # Prompt faults on: `[sim:SPEC]` in a message lets anyone try a failure from curl or the page.
            config = SimulatorConfig(
                ttft_ms=settings.simulator_ttft_ms,
                token_delay_ms=settings.simulator_token_delay_ms,
                prompt_faults=True,
                reasoning_deployments=settings.reasoning_deployment_set,
            )
            try:
                handle = start_in_thread(config, port=settings.simulator_port)
            except (OSError, RuntimeError) as exc:
                raise ConfigurationError(
                    f"the simulated deployment could not start on port {settings.simulator_port}: {exc}"
                ) from exc
            _url = handle.url
        return _url
