"""What the README promises of `make run`, with every service as its own process.

`python -m devstack run` (what `make run` runs) with the manual clock: the README's
walkthrough plays DefaultCM1 out to the collection agency, the debtor's e-mails land in
the local mailbox, and Ctrl-C leaves nothing running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from contracts import topics
from tests.support.kafka import poll_until, publish, read_all
from tests.support.net import free_ports

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class Runner:
    """`python -m devstack run` in a process group of its own, its output collected."""

    def __init__(self, devstack_dir: Path) -> None:
        env = {
            **os.environ,
            "DEVSTACK_DIR": str(devstack_dir),
            "CM_CLOCK": "manual",
            "LOG_LEVEL": "WARNING",
        }
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SMTP_HOST"):
            env.pop(name, None)  # the runner's own stack, as on a fresh machine
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devstack",
                "run",
                "--kafka-port",
                "0",
                "--pg-port",
                "0",
                "--http-port-base",
                str(free_ports(5)),  # one HTTP port per service
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None:
                raise AssertionError("the runner exited:\n" + "".join(self.lines[-40:]))
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n" + "".join(self.lines[-40:]))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                raise
        return self.proc.returncode


@pytest.fixture
def runner(reachable_tmp_path: Path) -> Iterator[Runner]:
    # Not tmp_path: the runner's PostgreSQL must always reach its data dir (conftest.py).
    running = Runner(reachable_tmp_path / "devstack")
    try:
        yield running
    finally:
        running.stop()


def example(name: str) -> bytes:
    body = json.loads((EXAMPLES / name).read_text())
    body.setdefault("message_id", str(uuid.uuid4()))
    return json.dumps(body).encode()


async def test_make_run_plays_the_readme_walkthrough_and_stops_cleanly(
    runner: Runner, reachable_tmp_path: Path
) -> None:
    runner.wait_for(r"all 5 services healthy")
    bootstrap = runner.wait_for(r"kafka\s+(\S+)").group(1)
    children = psutil.Process(runner.proc.pid).children(recursive=True)
    assert len(children) >= 6  # five services and PostgreSQL (and its workers)

    await publish(
        bootstrap, topics.SCHEDULER_COMMANDS, [("clock", example("tick-2026-11-01.json"))]
    )
    await publish(
        bootstrap, topics.INVOICE_COMMANDS, [("shop-1:INV-0001", example("create-invoice.json"))]
    )
    await publish(
        bootstrap, topics.SCHEDULER_COMMANDS, [("clock", example("tick-2027-01-15.json"))]
    )

    async def all_steps() -> list[dict[str, object]] | None:
        events = [r.json() for r in await read_all(bootstrap, topics.INVOICE_EVENTS)]
        return events if len(events) >= 6 else None

    events = await poll_until(all_steps, timeout=90, interval=0.5, what="six invoice events")
    events.sort(key=lambda e: e["payload"]["sequence"])  # type: ignore[index]
    assert [(e["payload"]["event_code"], e["occurred_at"][:10]) for e in events] == [  # type: ignore[index]
        (2, "2026-11-01"),
        (10, "2026-11-01"),
        (4, "2026-11-22"),
        (4, "2026-12-06"),
        (7, "2026-12-23"),
        (8, "2027-01-06"),
    ]
    mails = list((reachable_tmp_path / "devstack" / "mail" / "new").iterdir())
    assert len(mails) == 3  # the invitation and both reminders

    assert runner.stop() == 0
    gone = psutil.wait_procs([p for p in children if p.is_running()], timeout=10)[1]
    assert gone == [], f"left running: {gone}"


async def test_make_run_serves_the_console_with_the_walkthroughs_invoice(runner: Runner) -> None:
    """The README's console walkthrough: the printed URL and demo login sign in, the
    walkthrough's invoice is listed, pausing it from the console's form changes its
    status, and the aging report shows what is open."""
    runner.wait_for(r"all 5 services healthy")
    bootstrap = runner.wait_for(r"kafka\s+(\S+)").group(1)
    url = runner.wait_for(r"console\s+(http://\S+?)/?\s*$").group(1)
    user, password = runner.wait_for(r"sign in as (\S+) / (\S+) \(merchant shop-1\)").groups()
    await publish(
        bootstrap, topics.SCHEDULER_COMMANDS, [("clock", example("tick-2026-11-01.json"))]
    )
    await publish(
        bootstrap, topics.INVOICE_COMMANDS, [("shop-1:INV-0001", example("create-invoice.json"))]
    )
    token = re.compile(r'name="csrf_token" value="([^"]+)"')
    async with httpx.AsyncClient(base_url=url, timeout=30) as web:
        login = await web.get("/login")
        signed_in = await web.post(
            "/login",
            data={
                "username": user,
                "password": password,
                "csrf_token": token.search(login.text).group(1),  # type: ignore[union-attr]
                "next": "/invoices",
            },
        )
        assert signed_in.status_code == 303

        async def listed() -> str | None:
            page = (await web.get("/invoices")).text
            return page if "INV-0001" in page else None

        page = await poll_until(listed, timeout=90, interval=0.5, what="INV-0001 in the console")
        detail_path = re.search(r'href="(/invoices/[^"]+)">INV-0001<', page).group(1)  # type: ignore[union-attr]
        detail = await web.get(detail_path)
        paused = await web.post(
            f"{detail_path}/actions/pause",
            data={"csrf_token": token.search(detail.text).group(1)},  # type: ignore[union-attr]
        )
        assert paused.status_code == 303

        async def shows_paused() -> bool:
            live = (await web.get(f"{detail_path}/live")).text
            return 'id="status">Paused' in live and "CommandAccepted" in live

        await poll_until(shows_paused, timeout=90, interval=0.5, what="INV-0001 paused")
        aging = (await web.get("/reports/aging", params={"as_of": "2026-12-31"})).text
        assert 'data-bucket="31-60"' in aging and 'data-amount="121.00"' in aging
