"""A stand-in for a service, to exercise the supervisor: `python -m devstack.standin NAME`.

Serves `GET /healthz` (200) on `$HTTP_PORT`, logs a line now and then, exits 0 on
SIGTERM. `STANDIN_EXIT_AFTER=S` makes it exit with code 3 after S seconds (a crash);
`STANDIN_IGNORE_TERM=1` makes it ignore SIGTERM (a hung service).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok\n" if code == 200 else b"")

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "standin"
    port = int(os.environ.get("HTTP_PORT", "8081"))
    if os.environ.get("STANDIN_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", port), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    keys = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "CM_CLOCK", "HTTP_PORT", "LOG_FORMAT")
    print(f"{name} up: " + " ".join(f"{k}={os.environ.get(k)}" for k in keys), flush=True)
    exit_after = float(os.environ.get("STANDIN_EXIT_AFTER", "0") or 0)
    started = time.monotonic()
    while True:
        time.sleep(0.2)
        if exit_after and time.monotonic() - started > exit_after:
            print(f"{name} crashing on purpose", file=sys.stderr, flush=True)
            return 3


if __name__ == "__main__":
    sys.exit(main())
