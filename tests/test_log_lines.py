"""What the daemon's log lines say, on the real daemon with Redis (issue 14, "Logs"): no object reprs, and the
operator listener's routine GETs (``/healthz``, ``/metrics``) at debug level in the access log."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import Logger, LogLevel, formatEventAsClassicLogText, globalLogPublisher

from tests.support.daemon import StartGateway, healthz, scrape, token, workspace
from tests.support.redis_server import RedisServer
from tests.support.wsclient import connect
from wsgw import logs
from wsgw.logs import LiveLogs, writes

HOME = workspace("w-home", "home", "ds/home")
ADMIN = "tcp:0:interface=127.0.0.1"
REPR = re.compile(r"object at 0x|<[A-Za-z_.]+ (instance|object)\b|<[A-Za-z_.]+ at 0x")  # the last: twisted.web requests


@pytest_twisted.ensureDeferred
async def test_no_log_line_holds_an_object_repr_from_start_to_stop_with_a_redis_reconnect(
        gateway: StartGateway) -> None:
    """Start, connects and closes (clean, refused, dropped), HTTP requests, Redis lost and back, stop: every
    line the daemon's observer (``LiveLogs``) writes at level debug, as text and as JSON, names no object by its
    repr (test clients' lines of the same process included)."""
    text, json_lines = io.StringIO(), io.StringIO()
    observers = [LiveLogs(text, "text", "debug"), LiveLogs(json_lines, "json", "debug")]
    events: list[dict[str, Any]] = []
    for observer in [events.append, *observers]:
        globalLogPublisher.addObserver(observer)
    try:
        with RedisServer() as redis:
            daemon = await gateway(redis=redis.endpoint, admin=ADMIN, overrides={"log.access_log": "yes"})
            alice = await connect(daemon.port)
            assert (await alice.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
            mallory = await connect(daemon.port)
            await mallory.subscribe("not-a-token")
            await mallory.wait_closed()
            chat = await connect(daemon.port, "/chat")
            chat.transport.abortConnection()
            await chat.wait_closed()
            assert await healthz(daemon.port) == 200
            await scrape(daemon)
            await (await treq.get(f"http://127.0.0.1:{daemon.port}/nowhere", timeout=5)).content()
            redis.kill()
            commands = daemon.service.redis_commands
            for _ in range(3000):
                if await healthz(daemon.port) == 503 and not commands.connected:
                    break
            else:
                raise AssertionError("the daemon never noticed the Redis outage")
            redis.start()
            for back in (commands.whenConnected(), daemon.service.bus.whenConnected()):
                await back.addTimeout(20, reactor)
            alice.sendClose()
            await alice.wait_closed()
            await daemon.stop()
    finally:
        for observer in [events.append, *observers]:
            globalLogPublisher.removeObserver(observer)
    raw = [formatEventAsClassicLogText(e) or "" for e in events]
    assert [t for t in raw if REPR.search(t)] != []  # Twisted's own lines, as they come
    texts = text.getvalue().splitlines() + json_lines.getvalue().splitlines()
    assert len(texts) == 2 * len(events) > 40
    assert any("Scheduling retry" in t for t in texts) and any("lost its connection" in t for t in texts)
    assert [t for t in texts if REPR.search(t)] == [], "\n".join(t for t in texts if REPR.search(t))


@pytest_twisted.ensureDeferred
async def test_probes_and_scrapes_are_logged_at_debug_and_other_requests_at_info(gateway: StartGateway) -> None:
    """With the access log on: GET /healthz (either listener) and every GET the operator listener answers (its
    /metrics) are debug lines; other requests (the live page, a 404, a POST) are info lines."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        daemon = await gateway(redis=None, admin=ADMIN, overrides={"log.access_log": "yes", "web.live_page": "yes"})
        assert await healthz(daemon.admin_port) == 200
        await scrape(daemon)
        assert await healthz(daemon.port) == 200
        for url in (f"http://127.0.0.1:{daemon.port}/", f"http://127.0.0.1:{daemon.admin_port}/nowhere"):
            await (await treq.get(url, timeout=5)).content()
        await (await treq.post(f"http://127.0.0.1:{daemon.admin_port}/publish/tree", data=b"{}", timeout=5)).content()
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = sorted((e["listener"], e["line"].split('"')[3], e["log_level"].name)
                    for e in events if "listener" in e and "line" in e)
    assert logged == [
        ("operator", "GET /healthz HTTP/1.1", "debug"),
        ("operator", "GET /metrics HTTP/1.1", "debug"),
        ("operator", "GET /nowhere HTTP/1.1", "info"),
        ("operator", "POST /publish/tree HTTP/1.1", "info"),
        ("public", "GET / HTTP/1.1", "info"),
        ("public", "GET /healthz HTTP/1.1", "debug"),
    ]
    assert not any(REPR.search(formatEventAsClassicLogText(e) or "") for e in events)


@pytest_twisted.ensureDeferred
async def test_probes_not_written_at_level_info_spend_no_budget(gateway: StartGateway) -> None:
    """Under the daemon's observer at level info, with a budget of one access line a minute: 5 scrapes and probes
    write nothing and leave the budget to the request after them."""
    out = io.StringIO()
    saved, logs.live_logs = logs.live_logs, LiveLogs(out, "text", "info")
    globalLogPublisher.addObserver(logs.live_logs)
    try:
        daemon = await gateway(redis=None, admin=ADMIN, overrides={"log.access_log": "yes",
                                                                  "log.peer_lines_per_minute": "1"})
        for _ in range(5):
            assert await healthz(daemon.admin_port) == 200
            await scrape(daemon)
        await (await treq.get(f"http://127.0.0.1:{daemon.admin_port}/nowhere", timeout=5)).content()
    finally:
        globalLogPublisher.removeObserver(logs.live_logs)
        logs.live_logs = saved
    access = [line for line in out.getvalue().splitlines() if "HTTP/1.1" in line]
    assert len(access) == 1 and '"GET /nowhere HTTP/1.1" 404' in access[0]


@pytest_twisted.ensureDeferred
async def test_head_requests_answer_like_get_without_a_body_and_log_nothing(gateway: StartGateway,
                                                                            tmp_path: Path) -> None:
    """HEAD /healthz (a load balancer's probe), of the live page, the operator page, /metrics, /info, /ws, a
    404 (and /info's 405): GET's status and headers with its Content-Length, no body, and no line. Twisted logged each, from any
    peer and outside the line budget, at info as ``Warning: HEAD request <BoundedRequest at 0x7f...> ...
    returning a message body. I think I'll eat it.``, an object repr."""
    out = io.StringIO()
    observer = LiveLogs(out, "text", "debug")
    globalLogPublisher.addObserver(observer)
    try:
        (tmp_path / "operator.token").write_text("operator-token-of-the-head-test-0123456789\n")
        daemon = await gateway(redis=None, admin=ADMIN, overrides={
            "web.live_page": "yes", "operator.page": "yes", "admin.publish_token_file": str(tmp_path / "operator.token")})
        for port, path, code in ((daemon.port, "/healthz", 200), (daemon.admin_port, "/healthz", 200),
                                 (daemon.port, "/", 200), (daemon.admin_port, "/", 200),
                                 (daemon.admin_port, "/operator.js", 200), (daemon.admin_port, "/metrics", 200),
                                 (daemon.port, "/ws", 426)):
            url = f"http://127.0.0.1:{port}{path}"
            got = await treq.get(url, timeout=5)
            body = await got.content()
            head = await treq.head(url, timeout=5)
            assert (head.code, got.code) == (code, code) and await head.content() == b"", path
            for header in ("content-type", "content-security-policy", "cache-control"):
                assert head.headers.getRawHeaders(header) == got.headers.getRawHeaders(header)
            length = head.headers.getRawHeaders("content-length")  # (treq drops GET's)
            assert length == [str(len(body))] or (path == "/metrics" and length)  # /metrics changes in between
        for port, path, code in ((daemon.admin_port, "/info", 405), (daemon.port, "/nowhere", 404)):
            head = await treq.head(f"http://127.0.0.1:{port}{path}", timeout=5)
            assert head.code == code and await head.content() == b""
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = out.getvalue().splitlines()
    assert [t for t in lines if "HEAD" in t or REPR.search(t)] == []


def test_the_level_filters_text_and_json_alike_and_factory_lines_are_debug_naming_a_class() -> None:
    """``[log] level`` applies to both formats; Twisted's "Starting factory" line is a debug line naming the
    factory's class, and any field holding an object with the default repr is written as its class name."""

    class Thing:
        pass

    for log_format in ("text", "json"):
        out = io.StringIO()
        observer = LiveLogs(out, log_format, "info")
        log = Logger(namespace="t", observer=observer)
        log.debug("quiet {n}", n=1)
        log.info("loud {n} with {thing}", n=2, thing=Thing())
        observer({"log_format": "Starting factory {factory!r}", "factory": Thing(), "log_level": LogLevel.info,
                  "log_time": 0.0, "log_namespace": "twisted"})
        assert writes(LogLevel.debug)  # not under twistd: no observer filters
        observer.level = "debug"
        observer({"log_format": "Starting factory {factory!r}", "factory": Thing(), "log_level": LogLevel.info,
                  "log_time": 0.0, "log_namespace": "twisted"})
        written = out.getvalue()
        assert "quiet" not in written and "loud 2 with Thing" in written, written
        assert written.count("Starting factory Thing") == 1 and "object at 0x" not in written, written


@pytest_twisted.ensureDeferred
async def test_the_listening_lines_name_host_and_port(gateway: StartGateway) -> None:
    """"listening on 127.0.0.1:PORT", not the address object's repr."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        daemon = await gateway(redis=None, admin=ADMIN)
    finally:
        globalLogPublisher.removeObserver(events.append)
    texts = [formatEventAsClassicLogText(e) or "" for e in events]
    assert any(t.endswith(f"] listening on 127.0.0.1:{daemon.port}\n") for t in texts), texts
    assert any(t.endswith(f"on 127.0.0.1:{daemon.admin_port}\n") and "operator listener" in t for t in texts)
    assert not any("IPv4Address" in t for t in texts)
