"""The simulated Azure OpenAI deployment, started inside this process when no endpoint is set.

Never inside Azure unless forced (`SIMULATOR_ALLOW_IN_AZURE`): see `aoai_simulator.placement`.
"""

from __future__ import annotations

import logging
import threading

from chatstream.models import ConfigurationError
from chatstream.settings import Settings

log = logging.getLogger("chatstream.simulator")

_lock = threading.Lock()
_url: str | None = None


def ensure_simulator(settings: Settings) -> str:
    """Starts it once per process on a loopback port and returns its base URL."""
    global _url
    with _lock:
        if _url is None:
            try:
                from aoai_simulator.config import SimulatorConfig
                from aoai_simulator.placement import azure_marker
                from aoai_simulator.server import start_in_thread
            except ImportError as exc:
                raise ConfigurationError("the simulated deployment is not installed") from exc
            marker = azure_marker()
            if marker and not settings.simulator_allow_in_azure:
                log.error(
                    "not starting the simulated deployment: %s is set, so this runs in Azure; set "
                    "AZURE_OPENAI_ENDPOINT (or SIMULATOR_ALLOW_IN_AZURE=true to serve simulated answers)",
                    marker,
                )
                raise ConfigurationError("AZURE_OPENAI_ENDPOINT is not set")
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
                log.error(
                    "the simulated deployment could not start on port %d: %s", settings.simulator_port, exc
                )
                raise ConfigurationError(
                    "the simulated deployment could not start; check SIMULATOR_PORT"
                ) from exc
            _url = handle.url
        return _url
