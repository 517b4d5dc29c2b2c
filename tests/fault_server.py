"""A fault-injecting HTTP shard server for the tests: 127.0.0.1 only, threaded, stops by itself.

Each GET of a file under `root` is answered as `faults(path, n)` says (n: how many times that path was
asked for, from 1), or as `default` when it returns None:

  ok         200 and the whole file
  drop       200 with the real Content-Length, half the body, then the connection is cut
  500        Internal Server Error
  503        Service Unavailable with `Retry-After: <retry_after>` (seconds)
  404        Not Found
  stall      200 and its headers, then nothing (the connection stays open until the server stops)
  silent     the connection is accepted and nothing at all is sent
  truncated  200, half of the tar, with a Content-Length of that half (a complete-looking transfer)

`default` may be changed while the server runs (e.g. serve, then stall). Stalled handlers wait on an
event that `stop()` sets, so no thread outlives the server; a timer stops it after `lifetime` s.
"""
from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Optional

FAULTS = ("ok", "drop", "500", "503", "404", "stall", "silent", "truncated")


class FaultServer:
    def __init__(self, root: Path, default: str = "ok",
                 faults: Optional[Callable[[str, int], Optional[str]]] = None, retry_after: int = 1,
                 lifetime: float = 300.0) -> None:
        self.root, self.default, self.faults, self.retry_after = Path(root), default, faults, retry_after
        self.requests: dict[str, int] = {}
        self.answered: list[tuple[str, str]] = []  # (path, behaviour) in order
        self.stopped = threading.Event()
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                with lock:
                    n = outer.requests[self.path] = outer.requests.get(self.path, 0) + 1
                what = (outer.faults(self.path, n) if outer.faults else None) or outer.default
                assert what in FAULTS, what
                with lock:
                    outer.answered.append((self.path, what))
                path = outer.root / self.path.lstrip("/")
                if what == "silent":
                    outer.stopped.wait()
                    return
                if what == "404" or not path.is_file():
                    self.send_error(404)
                    return
                if what in ("500", "503"):
                    self.send_response(int(what))
                    if what == "503":
                        self.send_header("Retry-After", str(outer.retry_after))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                body = data[: len(data) // 2] if what in ("drop", "truncated") else data
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) if what == "truncated" else len(data)))
                self.end_headers()
                self.wfile.flush()
                if what == "stall":
                    outer.stopped.wait()
                    return
                self.wfile.write(body)
                self.wfile.flush()
                if what == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.timer = threading.Timer(lifetime, self.stop)
        self.timer.daemon = True

    def stop(self) -> None:
        self.stopped.set()  # releases stalled handlers first
        self.server.shutdown()

    def __enter__(self) -> FaultServer:
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        self.stop()
        self.server.server_close()
        self.thread.join(timeout=5)
