"""Where one request's CPU goes: the product served in this process, profiled over sequential requests.

`python -m bench.profile_request [--requests 500] [--profiler cprofile|pyinstrument|none] [--sort tottime]`

The simulated upstream (`bench.upstream`, zero delay, 20-token answers) is its own process; the app is
served here by funchost's uvicorn on plain asyncio (as `python -m funchost` would, on the main thread),
and a client thread sends the requests one after another. Only the server thread is profiled, and its
CPU time (`time.thread_time`) per request is printed, so the figure is the app's and the client's work
is not in it. Compare with `python -m bench.probe` (whole-process CPU, a separate client process).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import contenders as cs
from bench.procs import Child, free_port
from bench.run import _env


def _client(port: int, requests: int, warm: int) -> None:
    """Sequential short answers over real sockets, in a process of its own (so neither its CPU nor its
    hold on the GIL is in the server's profile); prints `start` and `stop` around the measured part."""
    import httpx

    body = cs.PRODUCT.body("[bench:short] How are you?")
    url = f"http://127.0.0.1:{port}/api/chat"
    with httpx.Client(timeout=30) as client:
        for i in range(warm + requests):
            if i == warm:
                print("start", flush=True)
            with client.stream("POST", url, content=body) as response:
                data = response.read()
            if response.status_code != 200 or b'"type":"end"' not in data:
                raise RuntimeError(f"request failed: {response.status_code} {data[:300]!r}")
    print("stop", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--profiler", choices=["cprofile", "pyinstrument", "none"], default="cprofile")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument(
        "--cpu-timer",
        action="store_true",
        help="cProfile times with the thread's CPU clock (slower, but waits and preemption are not counted)",
    )
    parser.add_argument("--lines", type=int, default=45)
    parser.add_argument("--out", default="")
    parser.add_argument("--client", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        _client(args.client, args.requests, args.warm)
        return

    upstream_port = free_port()
    upstream = Child(
        "upstream",
        ["-m", "bench.upstream", "--port", str(upstream_port)],
        {**_env(""), "PYTHONPATH": str(cs.REPO)},
        None,
        Path(tempfile.gettempdir()) / "profile_request.upstream.log",
    )
    try:
        upstream.wait_port(upstream_port)
        os.environ.update(_env(f"http://127.0.0.1:{upstream_port}"))
        sys.path.insert(0, str(cs.REPO))
        _serve(args)
    finally:
        upstream.stop()


def _serve(args: argparse.Namespace) -> None:
    from funchost.asgi import build_asgi_app
    from funchost.registry import import_function_app
    from funchost.server import ReadyServer, make_config

    function_app = import_function_app(cs.REPO)
    port = free_port()
    config = make_config(build_asgi_app(function_app, "api", cs.REPO), port=port, log_level="warning")
    ready = threading.Event()
    server = ReadyServer(config, lambda _host, _port: ready.set())
    profiler: Any = None
    if args.profiler == "cprofile":
        profiler = cProfile.Profile(time.thread_time) if args.cpu_timer else cProfile.Profile()
    elif args.profiler == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002, async_mode="disabled")
    cpu: list[float] = []
    usage: list[resource.struct_rusage] = []
    loop_box: list[asyncio.AbstractEventLoop] = []

    def on_loop(fn: Any) -> Any:
        return lambda: loop_box[0].call_soon_threadsafe(fn)

    def begin() -> None:
        usage.append(resource.getrusage(resource.RUSAGE_THREAD))
        cpu.append(time.thread_time())
        if profiler is not None:
            profiler.enable() if args.profiler == "cprofile" else profiler.start()

    def end() -> None:
        if profiler is not None:
            profiler.disable() if args.profiler == "cprofile" else profiler.stop()
        cpu.append(time.thread_time())
        usage.append(resource.getrusage(resource.RUSAGE_THREAD))
        server.should_exit = True

    async def run() -> None:
        loop_box.append(asyncio.get_running_loop())
        await server.serve()

    failure: list[str] = []

    def client() -> None:
        ready.wait(60)
        argv = ["-m", "bench.profile_request", "--client", str(port), "--requests", str(args.requests)]
        argv += ["--warm", str(args.warm)]
        child = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, cwd=cs.REPO)
        assert child.stdout is not None
        for line in child.stdout:
            if line.strip() == b"start":
                on_loop(begin)()
            elif line.strip() == b"stop":
                on_loop(end)()
        if child.wait() != 0:
            failure.append(f"client exited with {child.returncode}")
            server.should_exit = True

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    asyncio.run(run())
    thread.join(10)
    if failure:
        raise SystemExit(failure[0])
    per_request_ms = (cpu[1] - cpu[0]) / args.requests * 1000
    user_ms = (usage[1].ru_utime - usage[0].ru_utime) / args.requests * 1000
    system_ms = (usage[1].ru_stime - usage[0].ru_stime) / args.requests * 1000
    print(
        f"server thread CPU per request: {per_request_ms:.3f} ms "
        f"(user {user_ms:.3f}, system {system_ms:.3f}; {args.profiler} on)"
    )
    if args.profiler == "cprofile":
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats(args.sort).print_stats(args.lines)
        print(text.getvalue())
        if args.out:
            stats.dump_stats(args.out)
    elif args.profiler == "pyinstrument":
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        if args.out:
            with open(args.out, "w") as f:
                f.write(profiler.output_html())


if __name__ == "__main__":
    main()
