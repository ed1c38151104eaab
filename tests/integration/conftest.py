"""Fixtures shared by the integration tests: the notifier's outside world on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.notifier import HttpSink, SmtpSink


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) that keeps what it receives, one per test module."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def endpoint() -> Iterator[HttpSink]:
    """A merchant's webhook endpoint on loopback, one per test module."""
    with HttpSink() as sink:
        yield sink
