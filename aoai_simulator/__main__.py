"""`python -m aoai_simulator`: a standalone simulated Azure OpenAI deployment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from .config import SimulatorConfig
from .placement import ALLOW_SETTING, allowed_by_env, azure_marker
from .server import serve


def _csv(value: str) -> frozenset[str]:
    return frozenset(p.strip() for p in value.split(",") if p.strip())


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, SimulatorConfig]:
    """Flags override SIMULATOR_* environment variables, which override defaults."""
    env = SimulatorConfig.from_env()
    parser = argparse.ArgumentParser(prog="python -m aoai_simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ttft-ms", type=float, default=env.ttft_ms)
    parser.add_argument("--token-delay-ms", type=float, default=env.token_delay_ms)
    parser.add_argument("--answer-tokens", type=int, default=env.answer_tokens)
    parser.add_argument("--model", default=env.model)
    parser.add_argument("--api-keys", type=_csv, default=env.api_keys, help="comma-separated; empty = any")
    parser.add_argument(
        "--deployments", type=_csv, default=env.deployments, help="comma-separated; empty = any"
    )
    parser.add_argument(
        "--reasoning-deployments",
        type=_csv,
        default=env.reasoning_deployments,
        help="comma-separated deployments that behave like reasoning models (gpt-5 family, o-series)",
    )
    parser.add_argument("--rpm", type=int, default=env.requests_per_minute)
    parser.add_argument("--tpm", type=int, default=env.tokens_per_minute)
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="DEPLOYMENT=SPEC",
        help="bind a fault spec to a deployment, e.g. flaky=503;times=1 (repeatable)",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--allow-in-azure",
        action="store_true",
        default=allowed_by_env(),
        help=f"start even inside Azure (WEBSITE_SITE_NAME etc. set); also {ALLOW_SETTING}=true",
    )
    args = parser.parse_args(argv)
    faults = dict(item.split("=", 1) for item in args.fault if "=" in item)
    config = env.with_overrides(
        ttft_ms=args.ttft_ms,
        token_delay_ms=args.token_delay_ms,
        answer_tokens=args.answer_tokens,
        model=args.model,
        api_keys=args.api_keys,
        deployments=args.deployments,
        reasoning_deployments=args.reasoning_deployments,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        deployment_faults=faults,
    )
    return args, config


def main(argv: Sequence[str] | None = None) -> None:
    args, config = parse_args(argv)
    marker = azure_marker()
    if marker and not args.allow_in_azure:
        print(
            f"aoai_simulator: refusing to start: {marker} is set, so this runs in Azure, where simulated "
            f"answers would pass for a real model; use --allow-in-azure or {ALLOW_SETTING}=true to force it",
            file=sys.stderr,
        )
        sys.exit(2)

    def ready(url: str) -> None:
        print(f"aoai_simulator listening on {url}", flush=True)
        print(f"  AZURE_OPENAI_ENDPOINT={url}  OPENAI_BASE_URL={url}/v1", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host=args.host, port=args.port, log_level=args.log_level, on_ready=ready))
    sys.exit(0)


if __name__ == "__main__":
    main()
