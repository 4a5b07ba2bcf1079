"""The Redis bus and command connection: against the shared Redis, a private redis-server, and in memory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from txredisapi import ConnectionError, ResponseError
from zope.interface.verify import verifyObject

from tests.support.redis_server import RedisServer, free_port, shared_endpoint
from tests.support.waiting import wait_until
from wsgw.bus.redis import RedisBus, _Subscriber
from wsgw.interfaces import IBus
from wsgw.redis.connection import RedisCommands

TIMEOUT = 10.0
CHANNELS = {
    "tree": "topic.pydio.tree.nodes.changes",
    "meta": "topic.pydio.meta.nodes.changes",
    "tasks": "topic.pydio.tasks.event",
    "idm": "topic.pydio.idm.event",
    "activity": "topic.pydio.activity.event",
    "chat": "topic.pydio.chat.event",
}


def fast_retry(attempt: int) -> float:
    return 0.05


class Inbox:
    """A bus listener that records messages and can be waited on."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def wait_for(self, count: int) -> Deferred[None]:
        return wait_until(lambda: len(self.messages) >= count, f"{count} messages")


def bounded(d: Deferred[Any]) -> Deferred[Any]:
    return d.addTimeout(TIMEOUT, reactor)


@pytest.fixture
def topics() -> dict[str, str]:
    """The production topic map under a channel prefix unique to this test."""
    prefix = f"wsgw-test-{uuid.uuid4().hex[:12]}"
    return {topic: f"{prefix}.{channel}" for topic, channel in CHANNELS.items()}


@pytest_twisted.async_yield_fixture()
async def running() -> Any:
    """Start services for a test; stop them all afterwards."""
    started: list[Any] = []

    def start(svc: Any) -> Any:
        svc.startService()
        started.append(svc)
        return svc

    yield start
    for svc in reversed(started):
        await maybeDeferred(svc.stopService)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def make_bus(endpoint: str, topics: dict[str, str], **kwargs: Any) -> RedisBus:
    return RedisBus(reactor, endpoint, topics, retry_policy=fast_retry, **kwargs)


@pytest_twisted.ensureDeferred
async def test_publish_and_receive_on_every_topic(running: Any, topics: dict[str, str]) -> None:
    """Every topic published is received once as (topic, payload bytes); PUBLISH reports one receiver."""
    bus = running(make_bus(shared_endpoint(), topics))
    assert verifyObject(IBus, bus)
    inbox = Inbox()
    bus.listen(inbox)
    await bounded(bus.whenConnected())
    assert bus.connected and bus.state == "connected"
    receivers = [await bus.publish(topic, b'{"topic":"%s"}' % topic.encode()) for topic in topics]
    assert receivers == [1] * len(topics)
    await inbox.wait_for(len(topics))
    assert inbox.messages == [(topic, b'{"topic":"%s"}' % topic.encode()) for topic in topics]


@pytest_twisted.ensureDeferred
async def test_two_instances_both_receive(running: Any, topics: dict[str, str]) -> None:
    """Two buses on the same channels (two gateway instances) both receive what one of them publishes."""
    first, second = running(make_bus(shared_endpoint(), topics)), running(make_bus(shared_endpoint(), topics))
    inboxes = Inbox(), Inbox()
    first.listen(inboxes[0])
    second.listen(inboxes[1])
    await bounded(first.whenConnected())
    await bounded(second.whenConnected())
    assert await first.publish("chat", b"hello") == 2
    await inboxes[0].wait_for(1)
    await inboxes[1].wait_for(1)
    assert inboxes[0].messages == inboxes[1].messages == [("chat", b"hello")]


def test_bad_publish_is_refused_and_disconnected_publish_fails_at_once(topics: dict[str, str]) -> None:
    """An unknown topic or str payload raises; a valid publish on a bus that is not connected fails at once."""
    bus = make_bus(shared_endpoint(), topics)
    with pytest.raises(ValueError, match="unknown bus topic"):
        bus.publish("nope", b"x")
    with pytest.raises(TypeError, match="bytes"):
        bus.publish("chat", "text")  # type: ignore[arg-type]
    d = bus.publish("chat", b"x")
    assert not bus.connected and bus.state == "stopped"
    failure = d.result
    d.addErrback(lambda _: None)
    assert failure.check(ConnectionError) and "not connected" in failure.getErrorMessage()


@pytest_twisted.ensureDeferred
async def test_payloads_arrive_as_exact_bytes(running: Any, topics: dict[str, str]) -> None:
    """Non-UTF-8, number-looking, empty and CRLF payloads all arrive byte for byte, as bytes."""
    bus = running(make_bus(shared_endpoint(), topics))
    inbox = Inbox()
    bus.listen(inbox)
    await bounded(bus.whenConnected())
    payloads = [b"\xff\xfe\x00not utf-8", b"123", b"-1.5", b"", "\u00e9t\u00e9".encode(), b"a\r\nb\r\n"]
    for payload in payloads:
        await bus.publish("tree", payload)
    await inbox.wait_for(len(payloads))
    assert inbox.messages == [("tree", p) for p in payloads]
    assert all(type(p) is bytes for _, p in inbox.messages)


@pytest_twisted.ensureDeferred
async def test_multi_megabyte_payload(running: Any, topics: dict[str, str]) -> None:
    """An 8 MB payload arrives intact, and the message after it too."""
    bus = running(make_bus(shared_endpoint(), topics))
    inbox = Inbox()
    bus.listen(inbox)
    await bounded(bus.whenConnected())
    big = os.urandom(8 * 1024 * 1024)
    await bus.publish("activity", big)
    await bus.publish("activity", b"after")
    await inbox.wait_for(2)
    assert len(inbox.messages[0][1]) == len(big) and inbox.messages[0][1] == big
    assert inbox.messages[1] == ("activity", b"after")


@pytest_twisted.ensureDeferred
async def test_listener_exception_is_logged_and_isolated(running: Any, topics: dict[str, str]) -> None:
    """A listener that raises is logged with its traceback; other listeners and the connection carry on."""
    bus = running(make_bus(shared_endpoint(), topics))

    def broken(topic: str, payload: bytes) -> None:
        raise RuntimeError("listener bug")

    inbox = Inbox()
    bus.listen(broken)
    bus.listen(inbox)
    await bounded(bus.whenConnected())
    with capturedLogs() as events:
        await bus.publish("idm", b"1")
        await bus.publish("idm", b"2")
        await inbox.wait_for(2)
    assert inbox.messages == [("idm", b"1"), ("idm", b"2")]
    failures = [e["log_failure"] for e in events if "log_failure" in e]
    assert [f.type for f in failures] == [RuntimeError, RuntimeError]
    assert "listener bug" in failures[0].getTraceback()
    assert bus.connected


@pytest_twisted.ensureDeferred
async def test_commands_round_trip_bytes_ints_errors_and_scripts(running: Any, topics: dict[str, str]) -> None:
    """execute_command returns bytes/ints/status, fails with ResponseError on a Redis error, and run_script works."""
    redis = running(RedisCommands(reactor, shared_endpoint(), retry_policy=fast_retry))
    await bounded(redis.whenConnected())
    key = topics["chat"] + ":key"
    try:
        assert await redis.execute_command("SET", key, b"\xff123") == "OK"
        assert await redis.execute_command("GET", key) == b"\xff123"
        assert await redis.execute_command("INCR", key + ":n") == 1
        with pytest.raises(ResponseError):
            await redis.execute_command("INCR", key)
        script = f"-- {key}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"  # unique: not cached in Redis yet
        assert await redis.run_script(script, [key + ":n"], [5]) == 6
        assert await redis.run_script(script, [key + ":n"], [5]) == 11
    finally:
        await redis.execute_command("DEL", key, key + ":n")


@pytest_twisted.ensureDeferred
async def test_commands_select_the_configured_database(running: Any, topics: dict[str, str]) -> None:
    """A RedisCommands with db=5 reads and writes database 5, not database 0."""
    db5 = running(RedisCommands(reactor, shared_endpoint(), db=5, retry_policy=fast_retry))
    db0 = running(RedisCommands(reactor, shared_endpoint(), retry_policy=fast_retry))
    await bounded(db5.whenConnected())
    await bounded(db0.whenConnected())
    key = topics["tree"] + ":db"
    try:
        await db5.execute_command("SET", key, b"five")
        assert await db0.execute_command("GET", key) is None
        assert await db5.execute_command("GET", key) == b"five"
    finally:
        await db5.execute_command("DEL", key)


@pytest_twisted.ensureDeferred
async def test_commands_fail_at_once_while_disconnected(running: Any) -> None:
    """With no Redis listening, commands fail at once with ConnectionError and the state says 'connecting'."""
    redis = running(RedisCommands(reactor, f"tcp:127.0.0.1:{free_port()}", retry_policy=fast_retry))
    d = redis.execute_command("PING")
    assert d.called
    with pytest.raises(ConnectionError, match="not connected"):
        await d
    assert not redis.connected
    await wait_until(lambda: "refused" in redis.state, "the state to say why")
    assert redis.state.startswith("connecting (Connection was refused")


@pytest_twisted.ensureDeferred
async def test_auth_with_password(running: Any, topics: dict[str, str]) -> None:
    """With requirepass, the right password connects commands and the bus; a wrong one is refused with backoff."""
    with RedisServer(password="s3cret pass") as server:
        redis = running(RedisCommands(reactor, server.endpoint, password="s3cret pass", retry_policy=fast_retry))
        bus = running(make_bus(server.endpoint, topics, password="s3cret pass"))
        inbox = Inbox()
        bus.listen(inbox)
        await bounded(redis.whenConnected())
        assert await redis.execute_command("PING") == "PONG"
        await bounded(bus.whenConnected())
        await bus.publish("tasks", b"t")
        await inbox.wait_for(1)
        assert inbox.messages == [("tasks", b"t")]

        attempts: list[int] = []

        def recording_retry(attempt: int) -> float:
            attempts.append(attempt)
            return 0.05

        wrong = running(RedisCommands(reactor, server.endpoint, password="wrong", retry_policy=recording_retry))
        nopass = running(RedisBus(reactor, server.endpoint, topics, retry_policy=fast_retry))
        await wait_until(lambda: len(attempts) >= 3, "three rejected connections")
        assert attempts[:3] == [1, 2, 3]  # backoff grows although each TCP connect succeeded
        assert not wrong.connected and "WRONGPASS" in wrong.state
        with pytest.raises(ConnectionError):
            await wrong.execute_command("PING")
        await wait_until(lambda: "NOAUTH" in nopass.state, "the bus to report NOAUTH")
        assert not nopass.connected
        for svc in (wrong, nopass, bus, redis):  # stopped here and again by the fixture: twice is harmless
            await maybeDeferred(svc.stopService)


@pytest_twisted.ensureDeferred
async def test_redis_restart_resubscribes(running: Any, redis_server: RedisServer, topics: dict[str, str]) -> None:
    """When Redis dies the bus reports it and fails fast; when it is back the bus re-subscribes and delivers."""
    bus = running(make_bus(redis_server.endpoint, topics))
    redis = running(RedisCommands(reactor, redis_server.endpoint, retry_policy=fast_retry))
    inbox = Inbox()
    bus.listen(inbox)
    await bounded(bus.whenConnected())
    await bus.publish("meta", b"before")
    await inbox.wait_for(1)

    redis_server.kill()
    await wait_until(lambda: not bus.connected and not redis.connected, "the bus to notice Redis died")
    assert bus.state.startswith("connecting")
    with pytest.raises(ConnectionError):
        await bus.publish("meta", b"lost")

    redis_server.start()
    await bounded(bus.whenSubscribed())
    await bounded(bus.whenConnected())
    await bounded(redis.whenConnected())
    assert bus.state == "connected"
    assert await bus.publish("meta", b"after") == 1
    await inbox.wait_for(2)
    assert inbox.messages == [("meta", b"before"), ("meta", b"after")]


@pytest_twisted.ensureDeferred
async def test_ping_detects_a_frozen_redis(running: Any, redis_server: RedisServer, topics: dict[str, str]) -> None:
    """A Redis that stops answering is detected by the subscriber's PING; the bus recovers when it answers again."""
    bus = running(make_bus(redis_server.endpoint, topics, ping_interval=0.1, reply_timeout=0.5))
    inbox = Inbox()
    bus.listen(inbox)
    await bounded(bus.whenConnected())
    redis_server.freeze()
    try:
        await wait_until(lambda: not bus.connected, "the frozen Redis to be noticed")
        assert "no answer to PING" in bus.state  # (both connections PING, so both may be down)
    finally:
        redis_server.thaw()
    await bounded(bus.whenConnected())
    await bus.publish("chat", b"back")
    await inbox.wait_for(1)
    assert inbox.messages == [("chat", b"back")]


def test_subscriber_protocol_counts_acks_and_keeps_bytes() -> None:
    """In memory: the subscriber is up only after the last SUBSCRIBE ack, and byte-split messages stay bytes."""
    clock = MemoryReactorClock()
    got: list[tuple[bytes, bytes]] = []
    link = _Subscriber(clock, "tcp:127.0.0.1:1", None, ["a", "b"], got.extend, None, 10.0, 30.0)
    link.startService()
    conn = link._build()
    transport = StringTransport()
    conn.makeConnection(transport)
    assert transport.value() == b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n"
    transport.clear()

    def feed(data: bytes) -> None:
        for i in range(len(data)):  # one byte at a time, letting txredisapi resume after each bulk string
            conn.dataReceived(data[i : i + 1])
            clock.advance(0)

    feed(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
    assert not link.connected
    feed(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n")
    assert link.connected
    feed(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$3\r\n123\r\n*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$2\r\n\xff\xfe\r\n")
    assert got == [(b"a", b"123"), (b"b", b"\xff\xfe")]

    clock.advance(30)
    assert transport.value() == b"*1\r\n$4\r\nPING\r\n"
    transport.clear()
    feed(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
    clock.advance(30)
    assert transport.value() == b"*1\r\n$4\r\nPING\r\n"  # answered, so the next ping is scheduled
    assert link.connected
    link.stopService()


def test_a_ping_unanswered_for_the_stall_timeout_marks_the_connection_stalled_until_the_answer() -> None:
    """In memory: a set-up connection PINGs every ping_interval; unanswered for stall_timeout it is stalled
    (``trouble`` says for how long) though still connected; the late answer clears it and the PINGs go on;
    no second PING is sent while one is unanswered."""
    clock = MemoryReactorClock()
    link = RedisCommands(clock, "tcp:127.0.0.1:1", ping_interval=1.0, stall_timeout=2.0, reply_timeout=10.0)
    link.startService()
    conn = link._build()
    transport = StringTransport()
    conn.makeConnection(transport)
    clock.advance(0)
    assert link.connected and link.trouble is None
    clock.advance(1)
    assert transport.value() == b"*1\r\n$4\r\nPING\r\n"
    transport.clear()
    clock.advance(1.9)
    assert link.stalled is None
    clock.advance(0.2)
    assert link.connected and link.stalled == "no answer to PING for 2.1 s"
    clock.advance(3)
    assert link.trouble == "stalled: no answer to PING for 5.1 s"
    assert transport.value() == b""  # one PING at a time
    conn.dataReceived(b"+PONG\r\n")
    assert link.stalled is None and link.trouble is None
    clock.advance(1)
    assert transport.value() == b"*1\r\n$4\r\nPING\r\n"
    link.stopService()


def test_a_subscriber_still_receiving_messages_is_not_stalled_however_late_its_pong() -> None:
    """In memory: the subscriber's PONG comes after every message Redis queued before it; while messages keep
    arriving, Redis is alive and the daemon merely behind (a bulk burst: the soak's 12,000 DELETEs put the PONG
    2-6 s late and /healthz answered 503), so the connection is neither stalled nor dropped (a drop would lose
    the rest of the burst). Only silence counts: stall_timeout of it marks the connection stalled,
    reply_timeout of it drops the connection (issue 11, section 2)."""
    clock = MemoryReactorClock()
    got: list[bytes] = []
    link = _Subscriber(clock, "tcp:127.0.0.1:1", None, ["a"], lambda batch: got.extend(p for _, p in batch), None, 10.0, 1.0)
    link._stall_timeout = 2.0
    link.startService()
    conn = link._build()
    transport = StringTransport()
    conn.makeConnection(transport)
    conn.dataReceived(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
    clock.advance(0)
    assert link.connected
    transport.clear()
    clock.advance(1)
    assert transport.value() == b"*1\r\n$4\r\nPING\r\n"
    for i in range(30):  # 15 s of messages ahead of the PONG, one every 0.5 s
        clock.advance(0.5)
        conn.dataReceived(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\n%02d\r\n" % i)
        clock.advance(0)
        assert link.stalled is None and link.connected and not transport.disconnecting, i
    assert len(got) == 30
    conn.dataReceived(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")  # the PONG, at last
    clock.advance(0)
    assert link.stalled is None and link.connected
    transport.clear()
    clock.advance(1)
    assert transport.value() == b"*1\r\n$4\r\nPING\r\n"  # the next one; now Redis goes silent
    clock.advance(1.9)
    assert link.stalled is None
    clock.advance(0.2)
    assert link.stalled == "no answer to PING for 2.1 s" and not transport.disconnecting
    clock.advance(8)
    assert transport.disconnecting  # 10 s of silence: dropped, to be re-made
    link.stopService()
