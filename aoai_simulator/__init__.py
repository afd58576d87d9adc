"""A simulated Azure OpenAI chat-completions deployment for local runs, tests and benchmarks."""

from .app import SimulatorApp
from .config import SimulatorConfig
from .faults import FaultPlan, FaultSpecError, parse_fault
from .server import SimulatorHandle, serve, start_in_thread

__all__ = [
    "FaultPlan",
    "FaultSpecError",
    "SimulatorApp",
    "SimulatorConfig",
    "SimulatorHandle",
    "parse_fault",
    "serve",
    "start_in_thread",
]
