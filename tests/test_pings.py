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
from tests.support.waiting import wait_until
from tests.support.wsclient import Client, connect

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
    # Autobahn's wire-level count, at the k-th ping: the k pings so far (an open socket's other frames go through
    # wsgw's Outbound, which Autobahn does not count); more than the first few: the count started before them
    sizes = [2 + len(p) for p in pings]
    assert [b - a for a, b in zip(counts, counts[1:])] == sizes[1:], (counts, sizes)
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
