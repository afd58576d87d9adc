"""Process health numbers for soak tests: is everything a stream created gone again afterwards?

Served only with CHAT_DIAGNOSTICS=true; never on by default, because it describes the process.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import weakref
from typing import Any

#: Every ChainRun still alive (one per request until its response is garbage).
live_runs: weakref.WeakSet[Any] = weakref.WeakSet()


def _rss_bytes() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: peak RSS is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _open_sockets() -> int | None:
    """Sockets this process holds (listening, client and upstream connections); None off Linux."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    count = 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed in the meantime
            continue
    return count


def snapshot() -> dict[str, Any]:
    from chatstream.response import active_streams, closing_tasks

    gc.collect()
    return {
        "tasks": len(asyncio.all_tasks()),
        "active_streams": active_streams(),
        "closing_tasks": closing_tasks(),
        "live_runs": len(live_runs),
        "open_sockets": _open_sockets(),
        "rss_bytes": _rss_bytes(),
    }
