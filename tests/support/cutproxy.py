"""A loopback TCP proxy that cuts connections mid-response: a real dropped connection, not a mock.

Everything is forwarded byte for byte to the target (so a browser page loads through it as from the
app), except that a request whose first line starts with a prefix in `cut` gets at most that many
bytes of its response (headers included; default: `POST /api/chat ` gets `after_bytes`) before both
sockets are closed (or reset, with `reset=True`).
A cut may fall anywhere: inside the chunked framing, inside an SSE event. `cuts` bounds how many
requests are cut; `cut_log` records the request lines that were.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    #: Response bytes left before the cut; None while the current request is not one to cut.
    budget: int | None = None
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class CutProxy:
    def __init__(
        self,
        target: str,
        *,
        cut: Mapping[bytes, int] | None = None,
        after_bytes: int = 1200,
        cuts: int | None = 1,
        reset: bool = False,
    ) -> None:
        host, _, port = target.removeprefix("http://").rstrip("/").partition(":")
        self.target = (host, int(port))
        self.cut = dict(cut) if cut is not None else {b"POST /api/chat ": after_bytes}
        self.after_bytes = after_bytes
        self.cuts_left = cuts
        self.reset = reset
        self.cut_log: list[str] = []
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._accept, name="cut-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._requests, args=(pair,), daemon=True).start()
            threading.Thread(target=self._responses, args=(pair,), daemon=True).start()

    def _budget(self, data: bytes) -> int | None:
        """The response bytes this request may get, or None when it is not cut."""
        budget = next((n for prefix, n in self.cut.items() if data.startswith(prefix)), None)
        if budget is None:
            return None
        with self._lock:
            if self.cuts_left is not None:
                if self.cuts_left <= 0:
                    return None
                self.cuts_left -= 1
            self.cut_log.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
        return budget

    def _requests(self, pair: _Pair) -> None:
        """Client -> app. A request to cut arms the response side before it is forwarded."""
        while True:
            try:
                data = pair.client.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._close(pair)
                return
            budget = self._budget(data)
            if budget is not None:
                with pair.lock:
                    pair.budget = budget
            try:
                pair.upstream.sendall(data)
            except OSError:
                self._close(pair)
                return

    def _responses(self, pair: _Pair) -> None:
        """App -> client, until an armed request's budget runs out: then the cut."""
        while True:
            try:
                data = pair.upstream.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._close(pair)
                return
            with pair.lock:
                budget = pair.budget
                if budget is not None:
                    data = data[:budget]
                    pair.budget = budget - len(data)
            try:
                if data:
                    pair.client.sendall(data)
            except OSError:
                self._close(pair)
                return
            if budget is not None and pair.budget <= 0:
                self._close(pair, cut=True)
                return

    def _close(self, pair: _Pair, cut: bool = False) -> None:
        with pair.lock:
            if pair.closed:
                return
            pair.closed = True
        for sock in (pair.client, pair.upstream):
            try:
                if cut and self.reset:
                    # A zero linger makes the close send RST instead of FIN; SHUT_RD (which sends
                    # nothing) wakes the other thread's recv, or the close would wait for it.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)
                else:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def stop(self) -> None:
        self._running = False
        self._server.close()
        self._thread.join(5)
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close(pair)


@contextmanager
def cut_proxy(target: str, **options: object) -> Iterator[CutProxy]:
    """A `CutProxy` in front of `target` (`http://127.0.0.1:PORT`) for the block."""
    proxy = CutProxy(target, **options)  # type: ignore[arg-type]
    try:
        yield proxy
    finally:
        proxy.stop()
