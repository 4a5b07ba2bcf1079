"""SIGHUP reloads, never kills (issue 14): the config file re-read and applied live (wsgw.reload), in-process and
under twistd with sockets open while the HMAC secret is rotated."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from tests.support.daemon import workspace
from tests.support.redis_server import free_port
from tests.support.twistd import spawn
from tests.support.waiting import wait_until
from tests.support.wsclient import TIMEOUT, Client, connect
from wsgw import logs
from wsgw.config import config_from_file
from wsgw.frames import CLOSE_AUTH
from wsgw.service import DaemonService

OLD_SECRET = "the-first-secret-of-the-reload-tests-0123"
NEW_SECRET = "the-second-secret-of-the-reload-tests-4567"
OLD_OPERATOR = "operator-token-before-the-reload-0123456"
NEW_OPERATOR = "operator-token-after-the-reload-89abcdef"
WS = workspace("w1", "files", "ds/files")


def token(login: str, secret: str) -> str:
    claims = {"name": login, "sub": f"uuid-{login}", "workspaces": [WS], "exp": int(time.time() + 3600)}
    return jwt.encode(claims, secret, algorithm="HS256")


def node(n: int) -> dict[str, Any]:
    return {"Target": {"Uuid": f"n{n}", "Path": f"ds/files/f{n}.txt", "Type": "LEAF"}}


class Files:
    """The config file and the secret files of a daemon under test, rewritten by the tests."""

    def __init__(self, directory: Path) -> None:
        self.ini, self.secret, self.operator = directory / "wsgw.ini", directory / "secret", directory / "operator"
        self.secret.write_text(OLD_SECRET)
        self.operator.write_text(OLD_OPERATOR)

    def write(self, extra: str = "", delivery: str = "") -> None:
        """The file: the secret files, ``delivery`` lines in [delivery], then ``extra`` sections."""
        self.ini.write_text(f"[auth]\nhmac_secret_file = {self.secret}\n[admin]\npublish_token_file = {self.operator}\n"
                            f"[delivery]\nbatch_window = 0\n{delivery}{extra}")


Lines = list[tuple[LogLevel, str]]


@pytest_twisted.async_yield_fixture
async def hup(tmp_path: Path) -> AsyncIterator[tuple[Files, Callable[[], DaemonService], Lines]]:
    """A DaemonService started in-process from a file (embedded bus, loopback ports), the file's writer, and
    every log line it writes; ``start()`` starts it. Stopped, and the SIGHUP handler restored, at the end."""
    files = Files(tmp_path)
    files.write()
    lines: Lines = []

    def observe(event: LogEvent) -> None:
        if str(event.get("log_namespace", "")).startswith("wsgw."):
            lines.append((event["log_level"], formatEvent(event)))

    # (gc_freeze off: the test process's heap is not the daemon's to freeze)
    overrides = {"server.listen": "tcp:0:interface=127.0.0.1", "admin.listen": "tcp:0:interface=127.0.0.1",
                 "server.gc_freeze": "no"}
    services: list[DaemonService] = []

    def start() -> DaemonService:
        service = DaemonService(config_from_file(str(files.ini), overrides), reactor,
                                reread=lambda: config_from_file(str(files.ini), overrides))
        service.startService()
        services.append(service)
        return service

    previous = signal.getsignal(signal.SIGHUP)
    globalLogPublisher.addObserver(observe)
    try:
        yield files, start, lines
    finally:
        globalLogPublisher.removeObserver(observe)
        for service in services:
            if service.running:
                await service.stopService()
        signal.signal(signal.SIGHUP, previous)


def port(service: DaemonService, admin: bool = False) -> int:
    return (service.admin_ports if admin else service.ports)[0].getHost().port  # type: ignore[no-any-return]


async def refused(port_: int, secret: str) -> tuple[int | None, str | None]:
    client = await connect(port_)
    client.send_json({"@type": "subscribe", "jwt": token("mallory", secret)})
    return await client.wait_closed()


async def publish(admin_port: int, operator_token: str, event: dict[str, Any]) -> int:
    response = await treq.post(f"http://127.0.0.1:{admin_port}/publish/tree", json.dumps(event).encode(),
                               headers={"authorization": f"Bearer {operator_token}"}, timeout=TIMEOUT)
    await response.content()
    return response.code  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_a_rotated_hmac_secret_applies_at_once_and_the_open_sockets_stay(hup: Any) -> None:
    """The secret file rewritten, the reload: the socket subscribed before still gets events; a token signed with
    the new secret is accepted, one with the old refused (no grace period); one line says so, none the secret."""
    files, start, lines = hup
    service = start()
    before = await connect(port(service))
    assert (await before.subscribe(token("alice", OLD_SECRET)))["@type"] == "subscribed"
    files.secret.write_text(NEW_SECRET)
    service.hangup()
    service.bus.publish("tree", json.dumps(node(1)).encode())
    assert (await before.next())["Target"]["Path"] == "files/f1.txt"
    after = await connect(port(service))
    assert (await after.subscribe(token("bob", NEW_SECRET)))["@type"] == "subscribed"
    assert await refused(port(service), OLD_SECRET) == (CLOSE_AUTH, "subscribe: invalid token signature")
    applied = [text for _, text in lines if "[auth] hmac_secret_file (the file's content) applied" in text]
    assert len(applied) == 1 and "[redacted]" in applied[0]
    assert not any(NEW_SECRET in text or OLD_SECRET in text for _, text in lines)


@pytest_twisted.ensureDeferred
async def test_a_file_that_does_not_validate_is_one_error_line_and_the_config_in_force_stays(hup: Any) -> None:
    """A broken file on SIGHUP: one error line naming the key, the configuration in force kept (the old secret
    still verifies), the daemon still serving."""
    files, start, lines = hup
    service = start()
    in_force = service.config
    files.secret.write_text(NEW_SECRET)
    files.write("[websocket]\ninbound_rate = fast\n")
    del lines[:]
    service.hangup()
    errors = [text for level, text in lines if level >= LogLevel.warn]
    assert errors == [f"reload refused, the configuration in force is kept: {files.ini}: [websocket] inbound_rate = "
                      "'fast': could not convert string to float: 'fast'"]
    assert service.config is in_force and service.running
    client = await connect(port(service))
    assert (await client.subscribe(token("alice", OLD_SECRET)))["@type"] == "subscribed"


@pytest_twisted.ensureDeferred
async def test_a_file_that_is_not_text_is_one_error_line_too(hup: Any) -> None:
    """A config file that is not UTF-8 on SIGHUP: one error line, no traceback, the daemon still running."""
    files, start, lines = hup
    service = start()
    files.ini.write_bytes(b"[log]\nlevel = \xff\n")
    del lines[:]
    service.hangup()
    assert [text for level, text in lines if level >= LogLevel.warn] == [
        f"reload refused, the configuration in force is kept: cannot read config file {files.ini}: not UTF-8 text "
        "(byte 14)"]
    assert service.running


@pytest_twisted.ensureDeferred
async def test_settings_that_need_a_restart_are_logged_one_line_each_and_not_applied(hup: Any) -> None:
    """Listen addresses and a topic changed: a warning each, not applied (the config in force keeps them), while
    a live setting in the same file is applied."""
    files, start, lines = hup
    service = start()
    files.write("[server]\nredis_db = 3\n[topics]\ntree = another.channel\n[log]\npeer_lines_per_minute = 7\n")
    service.hangup()
    warnings = sorted(text for level, text in lines if level == LogLevel.warn)
    assert warnings == ["reload: [server] redis_db changed to 3: needs a restart, NOT applied",
                        "reload: [topics] tree changed to 'another.channel': needs a restart, NOT applied"]
    assert service.config.redis_db == 0 and service.config.topic_tree != "another.channel"
    assert service.config.peer_lines_per_minute == 7 and service.log_budget.per_minute == 7
    assert service.running


@pytest_twisted.ensureDeferred
async def test_a_rotated_operator_token_is_required_at_once(hup: Any) -> None:
    """The publish token file rewritten: /publish refuses the old token 401 and takes the new one."""
    files, start, _ = hup
    service = start()
    assert await publish(port(service, admin=True), OLD_OPERATOR, node(1)) == 200
    files.operator.write_text(NEW_OPERATOR)
    service.hangup()
    assert await publish(port(service, admin=True), OLD_OPERATOR, node(2)) == 401
    assert await publish(port(service, admin=True), NEW_OPERATOR, node(3)) == 200


@pytest_twisted.ensureDeferred
async def test_origins_and_per_address_caps_apply_to_the_next_handshakes(hup: Any) -> None:
    """allowed_origins and max_connections_per_ip changed: the next handshake from another origin is refused while
    the socket already open from it stays; the address's third socket is refused (429) while two are open."""
    files, start, _ = hup
    service = start()
    first = await connect(port(service), origin="https://elsewhere.example")
    files.write("[websocket]\nallowed_origins = https://cells.example.org\nmax_connections_per_ip = 2\n")
    service.hangup()
    with pytest.raises(ConnectionError, match="closed before open"):
        await connect(port(service), origin="https://elsewhere.example")
    await wait_until(lambda: service.public_guard.open == 1, "the refused socket closed")
    assert await connect(port(service), origin="https://cells.example.org")
    with pytest.raises(ConnectionError, match="closed before open"):
        await connect(port(service), origin="https://cells.example.org")
    assert service.public_guard.refused["per_ip"] == 1 and service.public_guard.refused["origin"] == 1
    assert not first.closed.called


@pytest_twisted.ensureDeferred
async def test_pacing_applies_to_the_sockets_opened_after_the_reload(hup: Any) -> None:
    """Strict pacing at start (one frame, then one a minute, a held frame sent after 1 s), off after the reload:
    a socket opened after it gets two node events at once; one opened before keeps its pacing and gets the
    second only after the 1 s of pacing_max_delay."""
    files, start, _ = hup
    files.write(delivery="pacing_rate = 0.01\npacing_burst = 1\npacing_max_delay = 1\n")
    service = start()
    paced = await connect(port(service))
    assert (await paced.subscribe(token("alice", OLD_SECRET)))["@type"] == "subscribed"
    files.write(delivery="pacing_rate = 0\n")
    service.hangup()
    free = await connect(port(service))
    assert (await free.subscribe(token("bob", OLD_SECRET)))["@type"] == "subscribed"
    published = time.monotonic()
    for n in (1, 2):
        service.bus.publish("tree", json.dumps(node(n)).encode())
    assert [(await free.next())["Target"]["Path"] for _ in range(2)] == ["files/f1.txt", "files/f2.txt"]
    assert time.monotonic() - published < 0.9
    assert [(await paced.next())["Target"]["Path"] for _ in range(2)] == ["files/f1.txt", "files/f2.txt"]
    assert time.monotonic() - published >= 0.9


def test_the_log_format_and_level_change_live() -> None:
    """LiveLogs writes text at or above its level; set_live_logs switches it to JSON and debug (and says when
    there is no LiveLogs to switch)."""
    out = io.StringIO()
    live = logs.LiveLogs(out, "text", "info")
    saved, logs.live_logs = logs.live_logs, None
    try:
        assert not logs.set_live_logs("json", "debug")  # twistd logs elsewhere (--logger, --syslog), or no twistd
        logs.live_logs = live
        live({"log_level": LogLevel.debug, "log_format": "hidden", "log_time": 0.0, "log_namespace": "t"})
        live({"log_level": LogLevel.info, "log_format": "shown as text", "log_time": 0.0, "log_namespace": "t"})
        assert "hidden" not in out.getvalue() and "shown as text" in out.getvalue()
        assert logs.set_live_logs("json", "debug")
        live({"log_level": LogLevel.debug, "log_format": "now {x}", "x": 1, "log_time": 0.0, "log_namespace": "t"})
        last = json.loads(out.getvalue().splitlines()[-1])
        assert last["message"] == "now 1" and last["level"] == "debug"
    finally:
        logs.live_logs = saved


@pytest_twisted.ensureDeferred
async def test_twistd_rotates_the_hmac_secret_on_sighup_without_dropping_a_socket(tmp_path: Path) -> None:
    """twistd as operators run it: two sockets subscribed, the secret file rewritten, SIGHUP: the process keeps
    running, the sockets still get the events published on /publish, a new-secret token is accepted and an
    old-secret one refused."""
    files = Files(tmp_path)
    files.write("[log]\nlevel = info\n")
    public, admin = free_port(), free_port()
    proto, transport = spawn(["--config", str(files.ini), "--listen", f"tcp:{public}:interface=127.0.0.1",
                              "--admin-listen", f"tcp:{admin}:interface=127.0.0.1"])
    try:
        await proto.logged(b"operator listener")
        clients: list[Client] = [await connect(public) for _ in range(2)]
        for n, client in enumerate(clients):
            assert (await client.subscribe(token(f"user{n}", OLD_SECRET)))["@type"] == "subscribed"
        files.secret.write_text(NEW_SECRET)
        transport.signalProcess("HUP")  # type: ignore[attr-defined]
        await proto.logged(b"reloaded " + str(files.ini).encode())
        assert await publish(admin, OLD_OPERATOR, node(1)) == 200
        for client in clients:
            assert (await client.next())["Target"]["Path"] == "files/f1.txt"
        fresh = await connect(public)
        assert (await fresh.subscribe(token("carol", NEW_SECRET)))["@type"] == "subscribed"
        assert await refused(public, OLD_SECRET) == (CLOSE_AUTH, "subscribe: invalid token signature")
        assert not proto.ended.called
        transport.signalProcess("TERM")  # type: ignore[attr-defined]
        proto.ended.addTimeout(TIMEOUT * 3, reactor)
        assert await proto.ended == (0, None)
    finally:
        if not proto.ended.called:
            os.kill(transport.pid, signal.SIGKILL)  # type: ignore[attr-defined]
