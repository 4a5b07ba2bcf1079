"""Batched bus reads (issue 13, goal 1): every complete pub/sub message of one read from Redis is handed over in
one go, in order, and each socket's frames of that batch leave in one ``send()``."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs

from tests.support.daemon import StartGateway, token, workspace
from tests.support.sockets import counting_sends
from tests.support.wsclient import connect
from wsgw.bus.redis import RedisBus, _Subscriber, _SubscriberConnection
from wsgw.flow import Flow
from wsgw.redis.connection import RedisCommands
from wsgw.web.outbound import Outbound, WriteBatch

HOME = workspace("ws-home", "home", "pydiods1/home")
ACK_A = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"


def message(channel: bytes, payload: bytes) -> bytes:
    """A pub/sub ``message`` reply as Redis writes it."""
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(payload), payload)


def subscriber(channels: list[str], password: str | None = None) -> tuple[
        _Subscriber, _SubscriberConnection, StringTransport, MemoryReactorClock, list[list[tuple[bytes, bytes]]]]:
    """A subscriber link on a memory clock, its connection on a StringTransport, and the batches it hands over."""
    clock = MemoryReactorClock()
    batches: list[list[tuple[bytes, bytes]]] = []
    link = _Subscriber(clock, "tcp:127.0.0.1:1", password, channels, lambda batch: batches.append(list(batch)),
                       None, 10.0, 1.0)
    link.startService()
    conn = link._build()
    assert isinstance(conn, _SubscriberConnection)
    transport = StringTransport()
    conn.makeConnection(transport)
    return link, conn, transport, clock, batches


def test_every_message_of_one_read_is_handed_over_as_one_batch_in_order() -> None:
    """Fifty messages and the start of a fifty-first in one read: one batch of fifty, in order, at once (no
    reactor turn per message); the rest of the fifty-first in the next read is a batch of one."""
    link, conn, _, _, batches = subscriber(["a"])
    conn.dataReceived(ACK_A)
    assert link.connected
    data = b"".join(message(b"a", b"%03d" % i) for i in range(51))
    cut = len(data) - 5
    conn.dataReceived(data[:cut])
    assert batches == [[(b"a", b"%03d" % i) for i in range(50)]]
    conn.dataReceived(data[cut:])
    assert batches[1:] == [[(b"a", b"050")]]
    link.stopService()


def test_a_huge_message_split_across_reads_is_reassembled_and_kept_as_bytes() -> None:
    """A 3 MiB payload (not UTF-8, digits first) in 64 KiB reads arrives once, whole, as the same bytes; the
    bus-level limit is the dispatcher's, not the connection's."""
    link, conn, _, _, batches = subscriber(["a"])
    conn.dataReceived(ACK_A)
    payload = b"123\xff" + bytes(range(256)) * (3 * 4096)
    data = message(b"a", payload) + message(b"a", b"7")
    for i in range(0, len(data), 65536):
        conn.dataReceived(data[i:i + 65536])
    assert [m for batch in batches for m in batch] == [(b"a", payload), (b"a", b"7")]
    assert type(batches[0][0][1]) is bytes
    link.stopService()


def test_both_subscribe_acks_and_messages_in_one_read() -> None:
    """The acks of a two-channel SUBSCRIBE are counted though they come in the read that brings the first
    messages: up after the last ack, and the messages after it are handed over."""
    link, conn, transport, _, batches = subscriber(["a", "b"])
    assert transport.value() == b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n"
    conn.dataReceived(ACK_A + b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n" + message(b"b", b"x") + message(b"a", b"y"))
    assert link.connected
    assert batches == [[(b"b", b"x"), (b"a", b"y")]]
    link.stopService()


def test_a_ping_is_answered_while_messages_flow_and_messages_before_the_pong_come_first() -> None:
    """The PONG (a ``pong`` array in subscribed mode) between messages of one read answers the PING; the
    messages Redis sent before it are handed over before the PING counts as answered, those after it after."""
    link, conn, transport, clock, batches = subscriber(["a"])
    conn.dataReceived(ACK_A)
    transport.clear()
    clock.advance(1)
    assert transport.value() == b"*1\r\n$4\r\nPING\r\n"
    transport.clear()
    seen: list[str] = []
    original = link._answered
    link._answered = lambda c: (seen.append(f"pong after {sum(map(len, batches))}"), original(c))  # type: ignore
    conn.dataReceived(message(b"a", b"1") + message(b"a", b"2") + b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
                      + message(b"a", b"3"))
    assert seen == ["pong after 2"]
    assert [m for batch in batches for m in batch] == [(b"a", b"1"), (b"a", b"2"), (b"a", b"3")]
    clock.advance(1)
    assert transport.value() == b"*1\r\n$4\r\nPING\r\n"  # answered: the next PING is sent
    assert link.connected and link.stalled is None
    link.stopService()


def test_auth_ok_and_errors_reach_their_waiters() -> None:
    """AUTH's +OK lets the setup go on to SUBSCRIBE; a Redis error answering a command fails its Deferred
    (here the setup, which then drops the connection)."""
    link, conn, transport, _, _ = subscriber(["a"], password="s3cret")
    assert transport.value() == b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n"
    transport.clear()
    conn.dataReceived(b"+OK\r\n")
    assert transport.value() == b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n"
    conn.dataReceived(ACK_A)
    assert link.connected
    link.stopService()

    link, conn, transport, _, _ = subscriber(["a"], password="wrong")
    with capturedLogs() as events:
        conn.dataReceived(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    assert not link.connected and transport.disconnecting
    assert link.problem == "WRONGPASS invalid username-password pair or user is disabled."
    assert any("setup failed" in str(e.get("log_format")) for e in events)
    link.stopService()


def test_a_handling_bug_is_logged_and_never_breaks_the_connection() -> None:
    """A batch handler that raises is logged with its traceback; the connection stays and the next read's
    messages are handed over."""
    clock = MemoryReactorClock()
    got: list[list[tuple[bytes, bytes]]] = []

    def handle(batch: list[tuple[bytes, bytes]]) -> None:
        got.append(list(batch))
        if len(got) == 1:
            raise RuntimeError("bug")

    link = _Subscriber(clock, "tcp:127.0.0.1:1", None, ["a"], handle, None, 10.0, 1.0)
    link.startService()
    conn = link._build()
    transport = StringTransport()
    conn.makeConnection(transport)
    conn.dataReceived(ACK_A)
    with capturedLogs() as events:
        conn.dataReceived(message(b"a", b"1"))
    assert [e for e in events if e.get("log_failure") is not None]
    conn.dataReceived(message(b"a", b"2"))
    assert got == [[(b"a", b"1")], [(b"a", b"2")]] and link.connected and not transport.disconnecting
    link.stopService()


def test_a_protocol_error_drops_the_connection() -> None:
    """Bytes that are not RESP: the connection is dropped (to be re-made) and why is kept."""
    link, conn, transport, _, _ = subscriber(["a"])
    conn.dataReceived(ACK_A)
    with capturedLogs():
        conn.dataReceived(b"?what\r\n")
    assert transport.disconnecting
    assert conn.drop_reason is not None and "Protocol error" in conn.drop_reason
    link.stopService()


def test_a_message_whose_channel_or_payload_is_not_a_bulk_string_drops_the_connection() -> None:
    """A ``message`` reply with an integer, array, nil or error as its channel or payload is not what Redis sends
    (a fake server, a broken proxy): the messages before it are handed over, then the connection is dropped as for
    bytes that are not RESP; nothing but bytes reaches the listener (a compiled dispatcher checks the types of a
    whole read's messages up front, so one such payload lost the whole read, uncounted)."""
    head = b"*3\r\n$7\r\nmessage\r\n"
    for bad in (b"$1\r\na\r\n:5\r\n", b"$1\r\na\r\n*1\r\n$1\r\nx\r\n", b"$1\r\na\r\n$-1\r\n",
                b"$1\r\na\r\n-ERR x\r\n", b":1\r\n$2\r\n{}\r\n"):
        link, conn, transport, _, batches = subscriber(["a"])
        conn.dataReceived(ACK_A)
        with capturedLogs():
            conn.dataReceived(message(b"a", b"1") + head + bad + message(b"a", b"2"))
        assert batches == [[(b"a", b"1")]], bad
        assert transport.disconnecting and conn.drop_reason is not None and "not a Redis reply" in conn.drop_reason
        link.stopService()


def test_a_command_connection_answers_every_reply_of_one_read_at_once() -> None:
    """The command connections (chat store, publisher) answer every reply of a read in the turn that read it,
    not one bulk string per reactor turn (which left the chat store behind the batched bus)."""
    clock = MemoryReactorClock()
    link = RedisCommands(clock, "tcp:127.0.0.1:1", ping_interval=None)
    link.startService()
    conn = link._build()
    conn.makeConnection(StringTransport())
    clock.advance(0)
    assert link.connected
    answers: list[Any] = []
    for key in ("a", "b", "c", "d"):
        link.execute_command("GET", key).addCallback(answers.append)
    conn.dataReceived(b"$1\r\nA\r\n$-1\r\n*2\r\n$1\r\nx\r\n:7\r\n$2\r\nD")
    assert answers == [b"A", None, [b"x", 7]]
    conn.dataReceived(b"\xff\r\n")
    assert answers[3:] == [b"D\xff"]
    link.stopService()


class Recorder:
    """A WriteBatch stand-in recording begin/end around what the listener gets."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def begin(self) -> None:
        self.log.append("begin")

    def end(self) -> None:
        self.log.append("end")


def test_the_bus_delivers_a_batch_inside_begin_and_end_and_a_single_message_without_them() -> None:
    """RedisBus hands each message of a batch to its listeners in order between ``batch.begin()`` and
    ``batch.end()``; a batch of one costs nothing more than before (no begin/end); unknown channels dropped."""
    log: list[Any] = []
    bus = RedisBus(MemoryReactorClock(), "tcp:127.0.0.1:1", {"tree": "c.tree", "chat": "c.chat"},
                   batch=Recorder(log))
    bus.listen(lambda topic, payload: log.append((topic, payload)))
    bus._deliveries.messages([(b"c.tree", b"1"), (b"c.other", b"x"), (b"c.chat", b"2")])
    bus._deliveries.messages([(b"c.tree", b"3")])
    assert log == ["begin", ("tree", b"1"), ("chat", b"2"), "end", ("tree", b"3")]


def outbound(batch: WriteBatch) -> tuple[Outbound, StringTransport, Flow, list[bytes]]:
    transport = StringTransport()
    writes: list[bytes] = []
    original = transport.write
    transport.write = lambda data: (writes.append(data), original(data))[1]  # type: ignore[method-assign]
    out = Outbound(transport, lambda payload: None, batch)
    out.flow = Flow(out.write)
    return out, transport, out.flow, writes


def test_a_sockets_frames_of_one_batch_are_written_once_at_its_end_in_order() -> None:
    """Between ``begin()`` and ``end()`` each socket's frames wait; at the end each socket's are joined into one
    write, in order; outside a batch a frame goes out at once, as before."""
    batch = WriteBatch()
    one, _, flow1, writes1 = outbound(batch)
    two, _, flow2, writes2 = outbound(batch)
    flow1.send(b"a")
    assert writes1 == [b"a"]
    batch.begin()
    flow1.send(b"b")
    flow2.send(b"x")
    flow1.send(b"c")
    assert writes1 == [b"a"] and writes2 == []
    batch.end()
    assert writes1 == [b"a", b"bc"] and writes2 == [b"x"]
    flow2.send(b"y")
    assert writes2 == [b"x", b"y"]


class LimitedTransport(StringTransport):
    """A StringTransport that pauses its producer past 64 KiB held, as Twisted's FileDescriptor does."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > 65536 and self.producer is not None:
            self.producer.pauseProducing()


def test_a_batch_write_that_fills_the_transport_pauses_the_flow() -> None:
    """The joined write goes through the transport: past its limit it pauses the flow, so what comes next
    waits in the flow, accounted, as without batches."""
    batch = WriteBatch()
    transport = LimitedTransport()
    out = Outbound(transport, lambda payload: None, batch)
    flow = out.flow = Flow(out.write)
    batch.begin()
    for i in range(3):
        flow.send(b"%d" % i * 40_000)
    assert not out.paused and transport.value() == b""
    batch.end()
    assert out.paused and len(transport.value()) == 120_000
    flow.send(b"later")
    assert flow.waiting == (1, 5 + 64)


def test_a_close_or_abort_during_a_batch_writes_the_batchs_frames_first() -> None:
    """Frames given before a close frame go out before it even inside a batch (``flush_batch``)."""
    batch = WriteBatch()
    out, transport, flow, writes = outbound(batch)
    batch.begin()
    flow.send(b"one")
    flow.send(b"two")
    out.flush_batch()
    transport.write(b"<close>")
    batch.end()
    assert writes == [b"onetwo", b"<close>"]


@pytest_twisted.ensureDeferred
async def test_on_the_daemon_a_read_of_many_events_is_one_send_per_socket_in_order(
        gateway: StartGateway) -> None:
    """On the real daemon and real sockets: 40 node events arriving in one read from Redis reach each of three
    clients in order, each client's 40 frames in one ``send()``; one event alone is one ``send()`` too."""
    daemon = await gateway(overrides={"delivery.pacing_rate": "0"})
    clients = [await connect(daemon.port) for _ in range(3)]
    for i, client in enumerate(clients):
        assert (await client.subscribe(token(f"user{i}", [HOME])))["@type"] == "subscribed"
    channel = daemon.service.config.topics["tree"].encode()
    events = [json.dumps({"Type": "UPDATE_PATH", "Target": {"Uuid": f"n{i}", "Path": f"pydiods1/home/f{i}.txt",
                                                            "Type": "LEAF"}}).encode() for i in range(40)]
    conn = daemon.service.bus._subscriber._ready
    with counting_sends(daemon) as sends:  # (how, frames) per system call
        conn.dataReceived(b"".join(message(channel, e) for e in events))
        for client in clients:
            assert [(await client.next())["Target"]["Uuid"] for _ in range(40)] == [f"n{i}" for i in range(40)]
        assert sends == [("sendmsg", 40)] * 3
        sends.clear()
        conn.dataReceived(message(channel, events[0]))
        for client in clients:
            assert (await client.next())["Target"]["Uuid"] == "n0"
        assert sends == [("send", 1)] * 3


@pytest_twisted.ensureDeferred
async def test_on_the_daemon_a_reader_that_stops_is_closed_4008_while_the_other_gets_every_batch_in_order(
        gateway: StartGateway) -> None:
    """Batches of 20 events of ~16 KB from Redis: a client that stops reading is closed with 4008 once its
    queue passes the bound (the joined writes pause its flow as single ones did), and a reading client gets
    every event in order."""
    daemon = await gateway(overrides={"delivery.pacing_rate": "0", "delivery.max_queued_bytes": "65536"})
    reader = await connect(daemon.port)
    slow = await connect(daemon.port)
    for client, login in ((reader, "alice"), (slow, "bob")):
        assert (await client.subscribe(token(login, [HOME])))["@type"] == "subscribed"
    slow.transport.pauseProducing()
    channel = daemon.service.config.topics["tree"].encode()
    conn = daemon.service.bus._subscriber._ready
    gateway_core = daemon.service.gateway
    published = 0
    for _ in range(200):  # bounded: at most 4,000 events (64 MB)
        events = [json.dumps({"Type": "UPDATE_PATH", "Target": {
            "Uuid": f"n{published + i}", "Path": f"pydiods1/home/f{published + i}.txt", "Type": "LEAF",
            "MetaStore": {"pad": json.dumps("x" * 16_000)}}}).encode() for i in range(20)]
        conn.dataReceived(b"".join(message(channel, e) for e in events))
        published += 20
        await task.deferLater(reactor, 0.001, lambda: None)
        if gateway_core.closes[4008]:
            break
    assert gateway_core.closes[4008] == 1
    got = [(await reader.next())["Target"]["Uuid"] for _ in range(published)]
    assert got == [f"n{i}" for i in range(published)]
    slow.transport.resumeProducing()
    code, _ = await slow.wait_closed(timeout=10)
    assert code == 4008
    received = []
    while slow.frames.pending:
        received.append((await slow.next())["Target"]["Uuid"])
    assert received == [f"n{i}" for i in range(len(received))] and 0 < len(received) < published


@pytest_twisted.ensureDeferred
async def test_on_the_daemon_more_frames_than_one_sendmsg_gathers_go_in_order(
        gateway: StartGateway) -> None:
    """1,100 events in one read: the socket's frames go in sendmsg() calls of at most 1,024 frames, in order."""
    daemon = await gateway(overrides={"delivery.pacing_rate": "0"})
    client = await connect(daemon.port)
    assert (await client.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
    channel = daemon.service.config.topics["tree"].encode()
    conn = daemon.service.bus._subscriber._ready
    with counting_sends(daemon) as calls:
        conn.dataReceived(b"".join(message(channel, json.dumps({"Type": "DELETE", "Source": {
            "Uuid": f"n{i}", "Path": f"pydiods1/home/f{i}.txt", "Type": "LEAF"}}).encode()) for i in range(1100)))
        got = [(await client.next())["Source"]["Uuid"] for _ in range(1100)]
    assert got == [f"n{i}" for i in range(1100)]
    sends = [frames for how, frames in calls if how == "sendmsg"]
    assert sends[0] == 1024 and sends[1:2] in ([], [76])  # (76 more unless the kernel took part of the 1,024)
