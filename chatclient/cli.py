"""`python -m chatclient "question"`: print the answer as it streams, then the metrics.

The answer goes to stdout, everything else (metrics, errors, "cancelled") to stderr, so
`python -m chatclient "..." > answer.txt` captures just the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import httpx

from chatclient.metrics import StreamMetrics
from chatclient.render import TextPrinter, fallback_note
from chatclient.stream import STOP_END_WAIT, ChatHttpError, ChatStream, Message, StreamCut, ask

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
ROLES = {"system", "user", "assistant"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chatclient",
        description="Ask the chat app a question and print the answer as it streams.",
        epilog='Conversation files are JSON: a list of {role, content} messages, or {"messages": [...]}.',
    )
    parser.add_argument("question", nargs="?", help="the question; '-' or omitted: read it from stdin")
    parser.add_argument(
        "--url",
        default=os.environ.get("CHAT_URL", "http://127.0.0.1:7071"),
        help="the app's base URL or full /api/chat URL (env CHAT_URL; default %(default)s)",
    )
    parser.add_argument(
        "--key", default=os.environ.get("CHAT_FUNCTION_KEY"), help="function key (env CHAT_FUNCTION_KEY)"
    )
    parser.add_argument(
        "--format",
        choices=["sse", "ndjson", "json"],
        default="sse",
        help="sse or ndjson stream, or json: one answer, not streamed (default %(default)s)",
    )
    parser.add_argument("--messages", metavar="FILE", help="earlier conversation to continue ('-': stdin)")
    parser.add_argument("--save", metavar="FILE", help="write the conversation, with this answer, to FILE")
    parser.add_argument("--system", help="a system prompt, sent first")
    parser.add_argument("--chain", help="a registered chain name (chat, tools, rag: GET /api/chains)")
    parser.add_argument(
        "--deployments",
        type=_names,
        metavar="A,B",
        help="deployments that answer (comma-separated); several: each answer printed as a block",
    )
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="do not ask for a resumable stream: a dropped connection ends the answer",
    )
    parser.add_argument("--events", action="store_true", help="print every event as one JSON line instead")
    parser.add_argument("--no-metrics", action="store_true", help="do not print the metrics line")
    return parser.parse_args(argv)


def _names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one deployment name")
    return names


def _load_messages(source: str, stdin: TextIO) -> list[Message]:
    text = stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    data = json.loads(text)
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
    ):
        raise ValueError("expected a list of {role, content} messages with roles system, user or assistant")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def build_messages(args: argparse.Namespace, stdin: TextIO) -> list[Message]:
    messages = _load_messages(args.messages, stdin) if args.messages else []
    question = args.question
    if question in (None, "-") and args.messages != "-" and not stdin.isatty():
        question = stdin.read().strip() or None
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    if question:
        messages.append({"role": "user", "content": question})
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("nothing to ask: give a question, or a conversation that ends with a user message")
    return messages


async def run(
    args: argparse.Namespace,
    messages: list[Message],
    metrics: StreamMetrics,
    out: TextIO,
    answer: list[str],
    printer: TextPrinter | None = None,
) -> int:
    """Ask once; the answer's text (the first deployment's) is appended to `answer`."""
    options: dict[str, Any] = {
        "key": args.key,
        "chain": args.chain,
        "deployments": args.deployments,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
    }
    # With --events the printer only keeps score (and reports errors); the events are the output.
    printer = printer or TextPrinter(out, sys.stderr, metrics, not args.no_metrics, quiet=args.events)
    if args.format == "json":
        result = await ask(args.url, messages, **options)
        metrics.observe_answer(result)
        if args.events:
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
        else:
            for event in result.get("events", []):  # tool calls, progress, sources
                printer.handle({"deployment": result.get("deployment"), **event})
            out.write(result.get("content", "") + "\n")
        answer.append(result.get("content", ""))
        if note := fallback_note(result.get("deployment"), result.get("fallback_from")):
            print(note, file=sys.stderr)
        out.flush()
        return EXIT_OK
    stream = ChatStream(
        args.url,
        messages,
        format=args.format,
        resumable=not args.no_resume,
        on_resume=lambda n, _: print(f"\n(connection lost: reconnecting, {n})", file=sys.stderr, flush=True),
        **options,
    )
    async with stream, _stop_on_ctrl_c(stream):
        async for event in stream:
            metrics.observe(event)
            if args.events:
                out.write(json.dumps(event, ensure_ascii=False) + "\n")
                out.flush()
            printer.handle(event)
    printer.finish()
    answer.append(printer.answer)
    out.flush()
    if stream.result.stopped:
        print("stopped: the partial answer is kept", file=sys.stderr)
        return EXIT_CANCELLED
    if not printer.ended:
        print("error: the stream ended before its end event", file=sys.stderr)
    return EXIT_FAILED if printer.failed or not printer.ended else EXIT_OK


@contextlib.asynccontextmanager
async def _stop_on_ctrl_c(stream: ChatStream) -> AsyncIterator[None]:
    """The first Ctrl-C stops the answer (the stream then ends with its usage); a second one, one
    before the app named the stream, or a stop the app refuses, cancels at once. Without loop signal
    handlers (Windows), Ctrl-C cancels, and closing the stream still stops it."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping: list[asyncio.Task[None]] = []
    watchdog: list[asyncio.TimerHandle] = []

    async def request_stop() -> None:
        if not await stream.request_stop():
            task.cancel()

    def interrupted() -> None:
        if stopping or stream.result.id is None or stream.result.ended:
            task.cancel()
            return
        print("\n(stopping...)", file=sys.stderr, flush=True)
        stopping.append(loop.create_task(request_stop()))
        watchdog.append(loop.call_later(STOP_END_WAIT, task.cancel))  # the end must come

    try:
        loop.add_signal_handler(signal.SIGINT, interrupted)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        for handle in watchdog:
            handle.cancel()
        if stopping:  # the stop's answer comes right after the stream's end
            await asyncio.wait(stopping, timeout=2.0)
            stopping[0].cancel()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        messages = build_messages(args, sys.stdin)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    metrics = StreamMetrics()
    printer = TextPrinter(sys.stdout, sys.stderr, metrics, not args.no_metrics, quiet=args.events)
    code = EXIT_FAILED
    answer: list[str] = []
    try:
        # The first Ctrl-C stops the answer and the stream ends normally (see _stop_on_ctrl_c). A
        # cancelled run (a second Ctrl-C) closes the stream, which stops the answer on the app too.
        code = asyncio.run(run(args, messages, metrics, sys.stdout, answer, printer))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ncancelled", file=sys.stderr)
        code = EXIT_CANCELLED
    except StreamCut as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except ChatHttpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except httpx.HTTPError as exc:
        print(f"error: could not reach {args.url}: {exc!r}", file=sys.stderr)
        return EXIT_FAILED
    if args.save and answer and code != EXIT_CANCELLED:
        conversation = [*messages, {"role": "assistant", "content": "".join(answer)}]
        Path(args.save).write_text(json.dumps(conversation, ensure_ascii=False, indent=2) + "\n", "utf-8")
    if not args.no_metrics:
        print(printer.summary(), file=sys.stderr)
    return code
