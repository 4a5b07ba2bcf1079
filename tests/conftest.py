"""Shared fixtures: hypothesis profiles, logged tracebacks, and real gateway daemons on loopback; the suite's
preconditions (tests/support/preconditions.py), checked after collection, before any test; Ctrl-C."""

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
from tests.support.preconditions import Missing, ensure_redis, interrupt_the_tests
from tests.support.redis_server import RedisServer
from wsgw.sessions import SessionTable
from wsgw.testing import IndexOnlyTable

# Properties without their own example count (the sanitizer's) run the profile's: `make test` the "dev" one,
# .ci/run sets HYPOTHESIS_PROFILE=ci, which tries ten times as many inputs.
_COMMON = dict(deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=3000, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("dev", max_examples=300, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# Modules whose tests need neither Redis nor the network (`make test-unit`, `pytest -m unit`): marked ``unit``;
# tests/test_fresh_machine.py checks they import none of the network support modules.
UNIT_MODULES = frozenset({
    "test_bus_memory", "test_chat_races", "test_chat_rooms", "test_chat_sanitize", "test_config", "test_control",
    "test_dispatch", "test_session_timer", "test_events_activity", "test_events_batching", "test_events_idm", "test_events_nodes",
    "test_events_tasks", "test_events_usermeta", "test_flow", "test_frames", "test_fresh_machine", "test_gateway",
    "test_instances", "test_interfaces", "test_layout", "test_properties", "test_reactor_loop", "test_reauthorizer",
    "test_revocations", "test_sessions",
    "test_workers_metrics",
})
_private_redis: list[RedisServer] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: needs neither Redis nor the network (tests/conftest.py UNIT_MODULES)")


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    interrupt_the_tests()  # after pytest-twisted set its SIGINT handler up (its pytest_configure)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.rpartition(".")[2] in UNIT_MODULES:
            item.add_marker(pytest.mark.unit)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before the first test: when a selected test is not a unit test, the Redis preconditions hold, or the run
    stops here with one line saying what is missing."""
    if session.config.option.collectonly or all(item.get_closest_marker("unit") for item in session.items):
        return
    try:
        server, note = ensure_redis()
    except Missing as e:
        raise pytest.UsageError(f"wsgw tests: {e}") from None
    if server is not None:
        _private_redis.append(server)
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(note)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _private_redis:
        _private_redis.pop().stop()


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
