"""Where `cm` finds the platform: the environment, else what the running devstack recorded."""

from __future__ import annotations

import os


def setting(name: str) -> str | None:
    """$`name`, else the value the running `python -m devstack run|up` recorded in
    .devstack/ (None: neither gives one)."""
    env = os.environ.get(name)
    if env:
        return env
    try:
        from devstack.runner import state_file  # noqa: PLC0415

        recorded = state_file().info().get("env", {}).get(name)
    except Exception:
        recorded = None
    return str(recorded) if recorded else None
