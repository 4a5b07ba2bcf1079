"""Logs: one valid JSON object per line under twistd with ``[log] format = json``, and never a token or secret."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger, formatEventAsClassicLogText, globalLogPublisher

from tests.support.daemon import SECRET, StartGateway, token, workspace
from tests.support.redis_server import free_port
from tests.support.twistd import spawn
from tests.support.wsclient import TIMEOUT, connect
from wsgw.logs import REDACTED, event_as_json, use_json_for_twistd

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
    assert use_json_for_twistd(plain) and plain["logger"] == "wsgw.logs.twistd_observer"
    explicit = {"logger": "my.observer", "nodaemon": True}
    assert not use_json_for_twistd(explicit) and explicit["logger"] == "my.observer"
    assert not use_json_for_twistd({"logger": None, "syslog": True})
    assert not use_json_for_twistd(None)


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
