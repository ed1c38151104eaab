"""The e2e suite's trust-boundary check (issue 11): no personal data the tests sent may
appear in a log line of the services or in the errors of a CommandRejected. The scan piggybacks on the tests (tests/support/pii.py) and runs once, after
the last e2e test; a hit fails that test's teardown with a report of what leaked where.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.support.pii import Recorder, report

_SUMMARY = pytest.StashKey[str]()


@pytest_asyncio.fixture(scope="package", loop_scope="session", autouse=True)
async def personal_data_scan(request: pytest.FixtureRequest) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    recorder.install()
    try:
        yield recorder
    finally:
        recorder.uninstall()
    started = time.monotonic()
    findings, summary = await recorder.findings()
    summary += f"; {len(findings)} found, in {time.monotonic() - started:.1f} s"
    request.config.stash[_SUMMARY] = summary
    if recorder.services and not (recorder.lines and recorder.topics):
        pytest.fail(
            f"{recorder.services} services ran, but the scan saw {len(recorder.lines)} log "
            f"lines and {len(recorder.topics)} brokers' topics: its capture is broken "
            "(tests/support/pii.py wraps configure_logging and ensure_topics)"
        )
    if findings:
        pytest.fail(report(findings, summary), pytrace=False)


@pytest.fixture(autouse=True)
def _personal_data_of_this_test(
    request: pytest.FixtureRequest, personal_data_scan: Recorder
) -> Iterator[None]:
    """Names the running test in what is captured; after it, takes the output of any
    subprocess runner it held (an object with `lines: list[str]`, as `make run`'s)."""
    personal_data_scan.test = request.node.nodeid
    yield
    for name, value in request.node.funcargs.items():
        lines = getattr(value, "lines", None)
        if isinstance(lines, list) and all(isinstance(line, str) for line in lines):
            personal_data_scan.add_output(f"the output of {name}", list(lines))
    personal_data_scan.test = "(between tests)"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    summary = config.stash.get(_SUMMARY, None)
    if summary is not None:
        terminalreporter.write_line(f"personal data scan of tests/e2e: {summary}")
