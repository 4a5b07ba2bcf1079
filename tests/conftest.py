"""Shared fixtures: hypothesis profiles, logged tracebacks, and real gateway daemons on loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, settings
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import FilteringLogObserver, LogEvent, PredicateResult, globalLogPublisher

from tests.support.daemon import Daemon, StartGateway, new_prefix, start_daemon
from wsgw.sessions import SessionTable
from wsgw.testing import IndexOnlyTable

# Properties without their own example count (the sanitizer's) run the profile's: `make test` the "dev" one,
# .ci/run sets HYPOTHESIS_PROFILE=ci, which tries ten times as many inputs.
_COMMON = dict(deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=3000, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("dev", max_examples=300, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _has_traceback(event: LogEvent) -> PredicateResult:
    return PredicateResult.yes if event.get("log_failure") is not None else PredicateResult.no


@pytest.fixture
def tracebacks() -> Iterator[EventLoggingObserver]:
    """Every log event carrying a traceback (``log_failure``) while the test runs, in order."""
    events = EventLoggingObserver()
    observer = FilteringLogObserver(events, [_has_traceback])
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


@pytest.fixture
def table() -> SessionTable:
    """An empty session table that fails the test if anything scans it instead of using its indexes."""
    return IndexOnlyTable()


@pytest_twisted.async_yield_fixture
async def gateway() -> AsyncIterator[StartGateway]:
    """Starts real gateway daemons on loopback: ``await gateway(**options)`` takes the options of
    ``tests.support.daemon.start_daemon`` (``prefix=daemon.prefix`` makes a second instance of the same
    deployment); each daemon is stopped, and its publisher closed, when the test ends, whatever happened."""
    started: list[Daemon] = []

    async def start(prefix: str | None = None, **options: Any) -> Daemon:
        daemon = await start_daemon(prefix or new_prefix(), **options)
        started.append(daemon)
        return daemon

    yield start
    for daemon in reversed(started):
        await daemon.stop()
