"""The server's keepalive pings (PROTOCOL.md: a ping every ``ping_interval``, a peer dropped after ``pong_timeout``)
go onto an open socket directly (bench/RESULTS.md "Idle cost at N = 10,000": no write buffer, epoll registration
and reactor turn per ping), never ahead of bytes the transport holds, and Autobahn's byte count is kept."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor

from tests.support.daemon import StartGateway, token, workspace
from tests.support.rawtcp import UPGRADE, Raw, raw_connect
from tests.support.waiting import wait_until
from tests.support.wsclient import Client, connect
from wsgw.internals.autobahn import ServerProtocol

FAST = {"websocket.ping_interval": "0.2", "websocket.pong_timeout": "2", "websocket.auth_timeout": "0"}


def _record(client: Client, server: Any, events: list[tuple[str, bytes]], counts: list[int]) -> None:
    """Record, in order, the pings and messages ``client`` receives, and the ``server`` protocol's byte count at
    each ping (read before the client's pong goes out)."""
    def on_ping(payload: bytes) -> None:
        events.append(("ping", payload))
        counts.append(server.trafficStats.outgoingOctetsWireLevel)
        Client.onPing(client, payload)  # (Autobahn's: the pong)

    def on_message(payload: bytes, is_binary: bool) -> None:
        events.append(("message", payload))

    client.onPing = on_ping  # type: ignore[method-assign]
    client.onMessage = on_message  # type: ignore[method-assign]


@pytest_twisted.ensureDeferred
async def test_pings_go_onto_the_socket_directly_are_counted_and_answered(
        gateway: StartGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    buffered: list[bytes] = []
    real_write = FileDescriptor.write
    monkeypatch.setattr(FileDescriptor, "write", lambda self, data: (buffered.append(data), real_write(self, data))[1])
    daemon = await gateway(redis=None, overrides=FAST)
    client = await connect(daemon.port)
    await wait_until(lambda: len(daemon.service.gateway.table) == 1, "the session")
    [session] = list(daemon.service.gateway.table)
    events: list[tuple[str, bytes]] = []
    counts: list[int] = []
    _record(client, session.connection, events, counts)
    await wait_until(lambda: len(events) >= 4, "four pings")  # each after the pong of the one before
    pings = [payload for kind, payload in events if kind == "ping"]
    assert len(pings) == len(events) and len(set(pings)) == len(pings)
    assert not [d for d in buffered if d[:1] == b"\x89"], buffered  # no ping went through Twisted's write buffer
    # Autobahn's wire-level count grows by each ping's frame (an open socket's other frames go through wsgw's
    # Outbound, which Autobahn does not count), read at each ping the client gets
    sizes = [2 + len(p) for p in pings]
    assert [b - a for a, b in zip(counts, counts[1:], strict=False)] == sizes[1:], (counts, sizes)
    assert session.connection.state == session.connection.STATE_OPEN
    client.sendClose()
    await client.wait_closed()


@pytest_twisted.ensureDeferred
async def test_a_ping_never_overtakes_what_the_transport_holds(gateway: StartGateway) -> None:
    """Bytes waiting in the transport's buffer (a partly written frame, or a whole one not yet sent) go out first:
    the ping follows them through the buffer."""
    daemon = await gateway(redis=None, overrides={"websocket.ping_interval": "30"})
    client = await connect(daemon.port)
    await wait_until(lambda: len(daemon.service.gateway.table) == 1, "the session")
    [session] = list(daemon.service.gateway.table)
    protocol: Any = session.connection
    events: list[tuple[str, bytes]] = []
    _record(client, protocol, events, [])
    text = b'{"held": 1}'
    frame = bytes((0x81, len(text))) + text
    protocol.transport.write(frame[:5])  # (held by Twisted until its next write turn)
    protocol.transport.write(frame[5:])
    protocol.sendPing(b"after")
    await wait_until(lambda: len(events) >= 2, "the frame and the ping")
    assert events == [("message", text), ("ping", b"after")]
    client.sendClose()
    await client.wait_closed()


@pytest_twisted.ensureDeferred
async def test_an_open_socket_is_read_directly_until_it_closes(gateway: StartGateway) -> None:
    """Once open, a client socket is read without Twisted's log context (``read_directly``: its reads are mostly
    pongs); its frames are read and answered as before, pongs included, and the reactor forgets it when it
    closes (nothing left holding the transport)."""
    daemon = await gateway(redis=None, overrides=FAST)
    client = await connect(daemon.port)
    await wait_until(lambda: len(daemon.service.gateway.table) == 1, "the session")
    [session] = list(daemon.service.gateway.table)
    protocol: Any = session.connection
    direct = reactor.__dict__.get("_wsgw_direct_reads", {})
    assert protocol.transport in direct
    events: list[tuple[str, bytes]] = []
    _record(client, protocol, events, [])
    await wait_until(lambda: len(events) >= 3, "three pings, each after the pong of the one before")
    client.send_json({"@type": "subscribe", "jwt": token("u1", [workspace("w1", "home", "ds/home")])})
    await wait_until(lambda: any(kind == "message" for kind, _ in events), "the answer to subscribe")
    transport = protocol.transport
    client.sendClose()
    await client.wait_closed()
    await wait_until(lambda: not daemon.service.gateway.table, "the session closed")
    assert transport not in direct


def _pong(payload: bytes, mask: bytes = b"\x5a\xc3\x0f\x81") -> bytes:
    """A client's pong frame, masked with ``mask`` (RFC 6455 §5.3)."""
    return bytes((0x8A, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _raw_session(gateway: StartGateway, overrides: dict[str, str]) -> tuple[Raw, Any]:
    """A socket past the handshake that answers nothing, and the server's protocol of it."""
    daemon = await gateway(redis=None, overrides={"websocket.auth_timeout": "0", **overrides})
    raw = await raw_connect(daemon.port)
    raw.send(UPGRADE)
    await wait_until(lambda: raw.received.startswith(b"HTTP/1.1 101"), "the upgrade")
    await wait_until(lambda: len(daemon.service.gateway.table) == 1, "the session")
    [session] = list(daemon.service.gateway.table)
    return raw, session.connection


def _state(protocol: Any) -> tuple[Any, ...]:
    return (protocol.state, protocol.autoPingPending is None, protocol.autoPingTimeoutCall is None,
            protocol.autoPingPendingCall is None, protocol.current_frame, protocol.control_frame_data, protocol.data,
            protocol.trafficStats.incomingOctetsWireLevel)


@pytest_twisted.ensureDeferred
async def test_a_pong_read_whole_ends_as_when_autobahns_parser_reads_it_in_pieces(gateway: StartGateway) -> None:
    """The pong of the pending ping (clears it, cancels its timeout, schedules the next ping), a pong of no
    pending ping (ignored, Autobahn's warning) and one of another payload: the same state whether the frame
    comes in one read (wsgw's shortcut) or in two (Autobahn's frame parser), and each counted by the flood
    limit (``onPong``)."""
    raw, protocol = await _raw_session(gateway, {"websocket.ping_interval": "30"})
    pongs: list[bytes] = []
    real_on_pong = protocol.onPong
    protocol.onPong = lambda payload: (pongs.append(payload), real_on_pong(payload))[1]
    parsed: list[int] = []  # calls of Autobahn's frame parser
    real_process = protocol.processData
    protocol.processData = lambda: (parsed.append(1), real_process())[1]
    outcomes = []
    for pending, answer in ((True, None), (False, b"unsolicited"), (True, b"not the ping's payload"), (True, b"")):
        ends = []
        for split in (None, 3, 7):
            if pending:
                protocol._sendAutoPing()
            payload = protocol.autoPingPending if answer is None else answer
            frame = _pong(payload)
            before = protocol.trafficStats.incomingOctetsWireLevel
            if split is None:
                protocol.dataReceived(frame)
            else:
                protocol.dataReceived(frame[:split])
                protocol.dataReceived(frame[split:])
            state = _state(protocol)
            assert state[-1] - before == len(frame)
            assert bool(parsed) == (split is not None)
            parsed.clear()
            ends.append(state[:-1])
            assert pongs.pop() == payload and not pongs
            if protocol.autoPingPendingCall is not None:  # (the next ping: not in this test)
                protocol.autoPingPendingCall.cancel()
                protocol.autoPingPendingCall = None
            if protocol.autoPingTimeoutCall is not None:
                protocol.autoPingTimeoutCall.cancel()
                protocol.autoPingTimeoutCall = None
                protocol.autoPingPending = None
        assert ends[0] == ends[1] == ends[2], (pending, answer, ends)
        outcomes.append(ends[0])
    assert outcomes[0][:4] == (ServerProtocol.STATE_OPEN, True, True, False)  # answered: the next ping scheduled
    assert outcomes[2][1:3] == (False, False)  # another payload: the ping still pending
    assert raw.open
    raw.close()


@pytest_twisted.ensureDeferred
async def test_pongs_read_whole_count_toward_the_flood_limit(gateway: StartGateway) -> None:
    raw, protocol = await _raw_session(gateway, {"websocket.inbound_rate": "1", "websocket.inbound_burst": "3"})
    for _ in range(3):
        protocol.dataReceived(_pong(b"x"))
    assert protocol.state == ServerProtocol.STATE_OPEN
    protocol.dataReceived(_pong(b"x"))
    received = await raw.wait_lost()
    close = received[received.index(b"\x88"):]
    assert int.from_bytes(close[2:4], "big") == 4029, close
