"""Logs: one valid JSON object per line under twistd with ``[log] format = json``, never a token or secret, and
no more lines than the budget about what peers do (issue 11 §4)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, formatEventAsClassicLogText, globalLogPublisher

from tests.support.daemon import SECRET, StartGateway, healthz, scrape, token, value, workspace
from tests.support.redis_server import free_port
from tests.support.twistd import spawn
from tests.support.waiting import wait_until
from tests.support.wsclient import TIMEOUT, connect
from wsgw import logs
from wsgw.logs import REDACTED, LineBudget, event_as_json, use_json_for_twistd

HOME = workspace("w-home", "home", "ds/home")
PUBLISH_TOKEN = "publish-token-that-must-never-be-logged-42"
REDIS_PASSWORD = "redis-password-that-must-never-be-logged-42"


def captured(events: list[dict[str, Any]]) -> Any:
    def observe(event: dict[str, Any]) -> None:
        events.append(event)
    return observe


def test_an_event_becomes_one_json_line_with_its_named_fields() -> None:
    """A structured event renders as one JSON line: time, level, namespace, message and each named field."""
    events: list[dict[str, Any]] = []
    log = Logger(namespace="wsgw.test", observer=captured(events))
    log.info("session {sid} subscribed as {login}", sid=7, login="alice", where=("a", 1))
    line = event_as_json(events[0])
    assert line.endswith("\n") and "\n" not in line[:-1]
    record = json.loads(line)
    assert record["level"] == "info" and record["namespace"] == "wsgw.test"
    assert record["message"] == "session 7 subscribed as alice"
    assert record["sid"] == 7 and record["login"] == "alice" and record["where"] == ["a", 1]
    assert record["time"].endswith("Z") and record["time"][:2] == "20"


def test_a_failure_carries_its_error_and_traceback() -> None:
    """A logged failure adds ``error`` and the full ``traceback`` to the same single line."""
    events: list[dict[str, Any]] = []
    log = Logger(namespace="wsgw.test", observer=captured(events))
    try:
        raise ValueError("boom")
    except ValueError:
        log.failure("the {topic} handler failed", topic="tree")
    record = json.loads(event_as_json(events[0]))
    assert record["level"] == "critical" and record["message"] == "the tree handler failed"
    assert record["error"] == "ValueError: boom" and "Traceback" in record["traceback"]
    assert record["topic"] == "tree"


def test_credential_fields_are_redacted_in_fields_and_message() -> None:
    """A field named like a credential is written as [redacted], also where the message text uses it."""
    events: list[dict[str, Any]] = []
    log = Logger(namespace="wsgw.test", observer=captured(events))
    log.warn("auth with {token} and {redis_password}", token="eyJ.secret.jwt", redis_password="hunter2",
             Authorization="Bearer x")
    line = event_as_json(events[0])
    for secret in ("eyJ.secret.jwt", "hunter2", "Bearer x"):
        assert secret not in line
    record = json.loads(line)
    assert record["message"] == f"auth with {REDACTED} and {REDACTED}"
    assert record["token"] == record["redis_password"] == record["Authorization"] == REDACTED


def test_the_twistd_hook_respects_an_explicit_logger() -> None:
    """JSON becomes twistd's logger only when --logger and --syslog were not given, and never outside twistd."""
    plain: dict[str, Any] = {"logger": None, "nodaemon": True, "logfile": None}
    assert use_json_for_twistd(plain) and plain["logger"] == "wsgw.tap.twistd_observer"
    explicit = {"logger": "my.observer", "nodaemon": True}
    assert not use_json_for_twistd(explicit) and explicit["logger"] == "my.observer"
    assert not use_json_for_twistd({"logger": None, "syslog": True})
    assert not use_json_for_twistd(None)


class FromThreads:
    """A reactor's ``callFromThread``, recorded."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802 - IReactorFromThreads
        self.calls.append(f)


def test_the_log_file_is_reopened_on_sigusr1_through_the_reactor_it_is_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--logfile``, SIGUSR1 rotates the file as twistd's own: through the reactor passed in (its
    ``callFromThread``, at the next turn), the global reactor never imported by wsgw.logs."""
    log_file = tmp_path / "wsgw.log"
    monkeypatch.setattr(logs, "_twistd_destination", (str(log_file), False, "text", "info"))
    monkeypatch.setattr(logs, "live_logs", None)
    before = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        reactor_given = FromThreads()
        observer = logs.observer_for_twistd(reactor_given)  # type: ignore[arg-type]
        assert observer is logs.live_logs
        signal.raise_signal(signal.SIGUSR1)  # (the handler has run when it returns)
        assert [f.__self__.path for f in reactor_given.calls] == [str(log_file)]
        assert [f.__name__ for f in reactor_given.calls] == ["rotate"]
    finally:
        signal.signal(signal.SIGUSR1, before)


def secrets_in(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


async def try_every_credential(port: int, admin_port: int | None, good: str) -> list[str]:
    """Subscribe with a good, an expired, a badly signed and a garbage token, and (when there is an operator
    listener) publish with the right and a wrong bearer token; returns every credential used."""
    expired = jwt.encode({"name": "eve", "exp": int(time.time()) - 3600}, SECRET, algorithm="HS256")
    forged = jwt.encode({"name": "eve", "exp": int(time.time()) + 3600}, "another-secret-of-32-bytes-or-more!",
                        algorithm="HS256")
    garbage = "garbage-token-that-must-never-be-logged"
    client = await connect(port)
    assert (await client.subscribe(good))["@type"] == "subscribed"
    for bad in (expired, forged, garbage):
        other = await connect(port)
        assert (await other.subscribe(bad))["@type"] == "error"
        await other.wait_closed()
    chat = await connect(port, "/chat")
    await chat.subscribe(good)
    chat.send_json({"@type": "JOIN", "Room": {"Type": "GLOBAL", "RoomTypeObject": "lobby"}, "jwt": good})
    await chat.next()
    used = [good, expired, forged, garbage, SECRET]
    if admin_port is not None:
        for bearer in (PUBLISH_TOKEN, "wrong-bearer-that-must-never-be-logged"):
            response = await treq.post(f"http://127.0.0.1:{admin_port}/publish/tree", data=b"[]",
                                       headers={"Authorization": f"Bearer {bearer}"}, timeout=5)
            await response.content()
            used.append(bearer)
    client.sendClose()
    chat.sendClose()
    await client.wait_closed()
    await chat.wait_closed()
    return used


@pytest_twisted.ensureDeferred
async def test_twistd_json_logs_are_one_object_per_line_without_secrets(tmp_path: Path) -> None:
    """``twistd -n wsgw --config x.ini`` with ``format = json`` writes only JSON objects, one per line, and no
    token, bearer or secret appears in them through subscribes (good and bad tokens), chat and /publish."""
    port, admin_port = free_port(), free_port()
    (tmp_path / "publish.token").write_text(PUBLISH_TOKEN)
    config = tmp_path / "wsgw.ini"
    config.write_text(f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\n"
                      f"[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
                      f"publish_token_file = {tmp_path / 'publish.token'}\n[log]\nformat = json\n")
    proto, transport = spawn(["--config", str(config), "--embedded"])
    try:
        await proto.logged(b"operator listener")
        used = await try_every_credential(port, admin_port, token("alice", [HOME]))
        transport.signalProcess("TERM")  # type: ignore[attr-defined]
        proto.ended.addTimeout(TIMEOUT * 3, reactor)
        assert await proto.ended == (0, None)
    finally:
        if not proto.ended.called:
            transport.signalProcess("KILL")  # type: ignore[attr-defined]
    text = proto.output.decode()
    lines = text.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) and {"time", "level", "namespace", "message"} <= set(r) for r in records)
    messages = [r["message"] for r in records]
    assert any(m.startswith("session ") and "subscribed as alice on /ws" in m for m in messages)
    assert any("refused: subscribe: token expired" in m for m in messages)
    assert "shutdown complete" in messages
    assert secrets_in(text, used) == []


@pytest_twisted.ensureDeferred
async def test_no_secret_reaches_any_log_observer_in_process(tmp_path: Path, gateway: StartGateway) -> None:
    """Every log event of an in-process daemon, rendered as text and as JSON, is free of tokens and secrets,
    including the Redis password when Redis refuses it."""
    from tests.support.redis_server import RedisServer

    events: list[dict[str, Any]] = []
    observer = captured(events)
    globalLogPublisher.addObserver(observer)
    try:
        with RedisServer(password="the-real-redis-password-123") as redis:
            (tmp_path / "publish.token").write_text(PUBLISH_TOKEN)
            daemon = await gateway(redis=None, admin="tcp:0:interface=127.0.0.1",
                                   overrides={"admin.publish_token_file": str(tmp_path / "publish.token")})
            used = await try_every_credential(daemon.port, daemon.admin_port, token("alice", [HOME]))
            await daemon.stop()  # while observed: what the shutdown logs is checked too
            from wsgw.redis.connection import RedisCommands

            refused: Deferred[None] = Deferred()

            def watch(event: dict[str, Any]) -> None:
                if not refused.called and "connection setup failed" in (formatEventAsClassicLogText(event) or ""):
                    refused.callback(None)

            globalLogPublisher.addObserver(watch)
            wrong = RedisCommands(reactor, redis.endpoint, password=REDIS_PASSWORD)
            wrong.startService()
            try:
                refused.addTimeout(10, reactor)
                await refused
            finally:
                globalLogPublisher.removeObserver(watch)
                await wrong.stopService()
    finally:
        globalLogPublisher.removeObserver(observer)
    text = "".join((formatEventAsClassicLogText(e) or "") + event_as_json(e) for e in events)
    assert "connection setup failed" in text
    assert "subscribed as alice" in text
    assert secrets_in(text, [*used, REDIS_PASSWORD, "the-real-redis-password-123"]) == []


# --- the budget of lines peers can cause


def test_the_budget_writes_per_minute_lines_of_a_kind_then_counts_and_reports_the_rest() -> None:
    """Of 25 lines of one kind within a minute, a budget of 10 writes 10 (the 10th with a notice) and counts 15;
    another kind has its own budget; the first line after the minute comes after "left out 15"; 0 = no limit."""
    clock = Clock()
    events: list[dict[str, Any]] = []
    budget = LineBudget(clock, per_minute=10)
    budget._log = Logger(namespace="wsgw.logs", observer=captured(events))
    log = Logger(namespace="wsgw.test", observer=captured(events))
    for i in range(25):
        budget.info(log, "refused", "refusal {i}", i=i)
        clock.advance(1)
    budget.warn(log, "too_slow", "slow")
    assert [formatEvent(e) for e in events] == [
        *(f"refusal {i}" for i in range(9)),
        "10 log lines of kind refused this minute: the next ones are left out for 51 s (counted in "
        "wsgw_log_lines_suppressed_total)", "refusal 9", "slow"]
    assert budget.suppressed == {"refused": 15}
    del events[:]
    clock.advance(35)
    budget.info(log, "refused", "refusal again")
    assert [formatEvent(e) for e in events] == ["left out 15 log lines of kind refused (over 10 a minute)",
                                                "refusal again"]
    unlimited = LineBudget(clock, per_minute=0)
    assert all(unlimited.admit("http") for _ in range(1000)) and not unlimited.suppressed


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [formatEventAsClassicLogText(e) or "" for e in events]


@pytest_twisted.ensureDeferred
async def test_http_requests_are_not_logged_unless_asked_and_then_within_the_budget(gateway: StartGateway) -> None:
    """By default no HTTP request is logged, on either listener; with [log] access_log = yes and a budget of 5
    lines a minute, 20 requests write 5 access lines and 15 are counted as left out."""
    events: list[dict[str, Any]] = []
    observer = captured(events)
    globalLogPublisher.addObserver(observer)
    try:
        quiet = await gateway(redis=None, admin="tcp:0:interface=127.0.0.1")
        assert quiet.service.config.access_log is False
        for _ in range(20):
            assert await healthz(quiet.port) == 200
            assert await healthz(quiet.admin_port) == 200
        assert [t for t in texts(events) if "GET /healthz" in t] == []
        sampled = await gateway(redis=None, admin="tcp:0:interface=127.0.0.1",
                                overrides={"log.access_log": "yes", "log.peer_lines_per_minute": "5"})
        for _ in range(20):
            assert await healthz(sampled.port) == 200
    finally:
        globalLogPublisher.removeObserver(observer)
    assert len([t for t in texts(events) if '"GET /healthz HTTP/1.1" 200' in t]) == 5
    assert value(await scrape(sampled), "wsgw_log_lines_suppressed_total", kind="http") == 15


@pytest_twisted.ensureDeferred
async def test_a_peer_writes_at_most_60_lines_a_minute_of_refusals_or_websocket_errors(gateway: StartGateway) -> None:
    """By default at most 60 lines a minute of each kind: 70 refused subscribes log 60 refusals, and 50
    handshakes refused for their Origin (Autobahn writes 2 lines each) log 60 lines; the rest are counted by
    kind."""
    events: list[dict[str, Any]] = []
    observer = captured(events)
    globalLogPublisher.addObserver(observer)
    try:
        daemon = await gateway(redis=None, admin="tcp:0:interface=127.0.0.1",
                               overrides={"websocket.allowed_origins": "https://cells.example.org"})
        assert daemon.service.config.peer_lines_per_minute == 60
        for _ in range(70):
            client = await connect(daemon.port)
            client.send_json({"@type": "subscribe", "jwt": "not-a-token"})
            await client.wait_closed()
        for _ in range(50):
            with pytest.raises(ConnectionError):
                await connect(daemon.port, origin="https://evil.example.com")
        await wait_until(lambda: daemon.service.public_guard.open == 0, "the refused sockets closed")
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = [t for t in texts(events) if "WebSocketClientProtocol" not in t]  # the test's own client
    assert len([t for t in lines if "refused: subscribe: malformed token" in t]) == 60
    assert len([t for t in lines if "origin not allowed" in t]) == 60
    assert len([t for t in lines if "the next ones are left out" in t]) == 2
    samples = await scrape(daemon)
    assert value(samples, "wsgw_log_lines_suppressed_total", kind="refused") == 10
    assert value(samples, "wsgw_log_lines_suppressed_total", kind="websocket") == 40


def test_a_frame_failing_unexpectedly_logs_its_traceback_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat frame that fails unexpectedly (a bug a peer can repeat) is answered "internal error" every time,
    but its traceback is logged within the budget of kind internal_error, the rest counted."""
    from wsgw.chat.service import ChatService
    from wsgw.testing import ChatHarness, join

    events: list[dict[str, Any]] = []
    chat = ChatHarness(log_budget=LineBudget(Clock(), per_minute=5))
    monkeypatch.setattr(ChatService, "_log", Logger(namespace="wsgw.chat", observer=captured(events)))
    alice = chat.connect("alice")
    chat.store.find_or_create_room = lambda *a: 1 / 0  # type: ignore[method-assign]
    for _ in range(50):
        chat.send(alice, join())
    answers = [json.loads(payload) for payload in alice.connection.sent]
    assert answers == [{"@type": "error", "error": "JOIN: internal error"}] * 50
    tracebacks = [e for e in events if e.get("log_failure") is not None]
    assert len(tracebacks) == 5 and chat.service._budget.suppressed == {"internal_error": 45}
