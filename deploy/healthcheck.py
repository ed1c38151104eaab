"""Container HEALTHCHECK: GET /healthz on this container's service port (stdlib only).

The port is $HTTP_PORT, else the default of the service that PID 1 runs
(`python -m services.<name>`), as in services/runtime/settings.py.
"""

import os
import sys
import urllib.request

DEFAULT_HTTP_PORTS = {
    "invoice": 8081,
    "scheduler": 8082,
    "notifier": 8083,
    "subscription": 8084,
    "collection": 8085,
    "console": 8086,
}


def port() -> int:
    if os.environ.get("HTTP_PORT"):
        return int(os.environ["HTTP_PORT"])
    try:
        with open("/proc/1/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")
        module = next(a for a in argv if a.startswith("services."))
        return DEFAULT_HTTP_PORTS.get(module.split(".")[1], 8080)
    except (OSError, StopIteration, IndexError):
        return 8080


try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port()}/healthz", timeout=4) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except Exception:
    sys.exit(1)
