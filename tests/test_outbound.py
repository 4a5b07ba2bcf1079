"""The outbound path: framing once per payload, flow control handed to the flow, pongs, 4008 for slow readers."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from tests.support.daemon import StartGateway, token, workspace
from tests.support.sockets import CountingSocket, counting_sends
from tests.support.wsclient import connect
from wsgw.flow import Flow
from wsgw.internals.direct import buffered
from wsgw.web.outbound import FrameCache, Outbound, WriteBatch, frame_header

HOME = workspace("ws-home", "home", "pydiods1/home")


def outbound() -> tuple[Outbound, StringTransport, list[bytes], Flow]:
    """An Outbound on a StringTransport, with the pongs it sends and a flow writing through it."""
    transport = StringTransport()
    pongs: list[bytes] = []
    out = Outbound(transport, pongs.append)
    out.flow = Flow(out.write)
    return out, transport, pongs, out.flow


def test_frame_header_covers_the_three_length_forms() -> None:
    """Headers use the 7-bit, 16-bit and 64-bit length forms at their boundaries, unmasked, FIN and text."""
    assert frame_header(125) == bytes((0x81, 125))
    assert frame_header(126) == bytes((0x81, 126, 0, 126))
    assert frame_header(65535) == bytes((0x81, 126, 255, 255))
    assert frame_header(65536) == bytes((0x81, 127)) + (65536).to_bytes(8, "big")


def test_frame_cache_frames_one_payload_once_for_every_socket() -> None:
    """The same payload object gets the very same framed bytes back; a different payload is framed anew."""
    cache = FrameCache()
    payload = b'{"a":1}'
    first = cache.frame(payload)
    assert first == frame_header(len(payload)) + payload
    assert cache.frame(payload) is first
    other = cache.frame(b'{"a":2}')
    assert other == frame_header(7) + b'{"a":2}' and other is not first


def test_outbound_is_a_push_producer_that_replaces_the_http_channel() -> None:
    """Outbound registers as the transport's streaming producer, unregistering the one twisted.web left there."""
    transport = StringTransport()
    transport.registerProducer(object(), True)
    out = Outbound(transport, lambda payload: None)
    assert verifyObject(IPushProducer, out)
    assert transport.producer is out and transport.streaming


def test_the_transport_pauses_and_resumes_the_flow() -> None:
    """Frames wait in the session's flow while the transport is paused and go out in order when it resumes."""
    out, transport, _, flow = outbound()
    flow.send(b"one")
    out.pauseProducing()
    flow.send(b"two")
    flow.send(b"three")
    assert transport.value() == b"one" and flow.waiting[0] == 2
    out.resumeProducing()
    assert transport.value() == b"onetwothree" and flow.waiting == (0, 0)


def test_while_paused_only_the_latest_ping_is_answered_on_resume() -> None:
    """RFC 6455 §5.5.3: a peer that pings without reading makes the server hold one pong, not one per ping;
    the pong goes out first on resume."""
    out, transport, pongs, flow = outbound()
    out.pong(b"p0")
    out.pauseProducing()
    flow.send(b"frame")
    for i in range(1, 10_000):
        out.pong(b"p%d" % i)
    assert pongs == [b"p0"]
    out.resumeProducing()
    assert pongs == [b"p0", b"p9999"] and transport.value() == b"frame"
    out.resumeProducing()
    assert pongs == [b"p0", b"p9999"]


def test_stop_producing_stops_the_flow() -> None:
    """When the transport is gone (stopProducing) what waits is dropped and nothing more is written."""
    out, transport, pongs, flow = outbound()
    out.pauseProducing()
    flow.send(b"lost")
    out.pong(b"lost")
    out.stopProducing()
    out.resumeProducing()
    flow.send(b"more")
    assert transport.value() == b"" and pongs == [] and flow.waiting == (0, 0)


def test_send_frames_once_for_every_socket_and_writes_nothing_once_closing() -> None:
    """``send`` (the flow's write) frames a payload with the endpoint's cache, one framed bytes object for every
    socket, and writes it; after ``closing()`` nothing more is written, while what a batch held from before
    still goes out, first (``flush_batch`` before the close frame, as the protocol does)."""
    cache, batch = FrameCache(), WriteBatch()
    writes: list[list[bytes]] = [[], []]
    outs = []
    for i in range(2):
        transport = StringTransport()
        transport.write = writes[i].append  # type: ignore[method-assign]
        outs.append(Outbound(transport, lambda payload: None, batch, cache))
    one, two = outs
    payload = b'{"a":1}'
    one.send(payload)
    two.send(payload)
    assert writes[0] == writes[1] == [frame_header(7) + payload] and writes[0][0] is writes[1][0]
    batch.begin()
    one.send(b"b")
    one.flush_batch()
    one.closing()
    one.send(b"c")
    batch.end()
    assert writes[0] == [frame_header(7) + payload, frame_header(1) + b"b"] and not one.open
    two.closing()
    two.send(b"d")
    two.write(b"raw")  # (a frame already framed: what a batch's end writes; not send's path)
    assert writes[1] == [frame_header(7) + payload, b"raw"]


@pytest_twisted.ensureDeferred
async def test_a_frame_the_kernel_takes_in_part_goes_on_through_the_transport_and_later_ones_behind_it(
        gateway: StartGateway) -> None:
    """Real sockets: the kernel takes half of a frame (a partial ``send()``, made to order); the rest goes to the
    transport, and while the transport holds it the next frames go there too, not onto the socket: the client
    gets every frame whole and in order."""
    daemon = await gateway(redis=None, overrides={"delivery.pacing_rate": "0"})
    client = await connect(daemon.port)
    assert (await client.subscribe(token("alice", [HOME])))["@type"] == "subscribed"
    (session,) = list(daemon.service.gateway.table)
    out = session.connection._out
    real, sends = out._sock, []
    out._sock = CountingSocket(real, sends, take=lambda data: data[:len(data) // 2])
    try:
        payloads = [b'{"seq":%d,"pad":"%s"}' % (seq, b"x" * 1000) for seq in range(3)]
        for payload in payloads:
            session.flow.send(payload)
        assert sends == [("send", 1)]  # the first frame's half; its rest and the two others wait in the transport
        size = len(frame_header(len(payloads[0]))) + len(payloads[0])
        assert buffered(session.connection.transport) == 3 * size - size // 2
        assert [(await client.next())["seq"] for _ in range(3)] == [0, 1, 2]
    finally:
        out._sock.close()
        out._sock = real


@pytest_twisted.ensureDeferred
async def test_nothing_is_written_after_the_close_frame_nor_after_a_drop(gateway: StartGateway) -> None:
    """Once the server sent its close frame, or dropped the connection, what reaches the socket's Outbound (the
    flow's write, or the connection's ``write``) is neither sent nor buffered: the socket is not open any more,
    whatever Autobahn's state."""
    daemon = await gateway(redis=None)
    closed, dropped = await connect(daemon.port), await connect(daemon.port)
    for client, login in ((closed, "alice"), (dropped, "bob")):
        assert (await client.subscribe(token(login, [HOME])))["@type"] == "subscribed"
    protocols = {session.access.login: session.connection for session in daemon.service.gateway.table}
    with counting_sends(daemon) as sends:
        alice, bob = protocols["alice"], protocols["bob"]
        assert alice.close(4000, "bye")
        bob.dropConnection(abort=False)
        held = buffered(alice.transport), buffered(bob.transport)
        for protocol in (alice, bob):
            protocol._out.send(b'{"late":1}')
            protocol.write(b'{"late":2}')
        assert sends == [] and (buffered(alice.transport), buffered(bob.transport)) == held
        assert not alice._out.open and not bob._out.open
    assert await closed.wait_closed() == (4000, "bye")
    await dropped.wait_closed()


def _event(seq: int, pad: int) -> bytes:
    target = {"Uuid": f"n{seq}", "Path": f"pydiods1/home/f{seq}.txt", "Type": "LEAF",
              "MetaStore": {"pad": json.dumps("x" * pad)}}
    return json.dumps({"Type": "UPDATE_PATH", "Target": target, "Source": {"Uuid": f"n{seq}",
                                                                              "Path": f"pydiods1/home/o{seq}"}}).encode()


def _seq(frame: dict[str, Any]) -> int:
    return int(frame["Target"]["Uuid"][1:])


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_closed_4008_while_the_others_get_everything_in_order(
        gateway: StartGateway) -> None:
    """A socket that stops reading during a flood gets an in-order prefix of the frames and then close 4008,
    the daemon keeps at most the configured queue for it, and a reading socket receives every frame in order."""
    daemon = await gateway(redis=None, overrides={
        "delivery.pacing_rate": "0", "delivery.max_queued_bytes": "65536",
    })
    reader = await connect(daemon.port)
    slow = await connect(daemon.port)
    for client, login in ((reader, "alice"), (slow, "bob")):
        assert (await client.subscribe(token(login, [HOME])))["@type"] == "subscribed"
    slow.transport.pauseProducing()  # stops reading its socket: the kernel buffers fill, then the daemon's
    # bounded: at most 400 slices of 10 events of ~16 KB (64 MB)
    published = await daemon.flood(lambda seq: _event(seq, 16_000), lambda: daemon.service.gateway.closes[4008] > 0)
    assert daemon.service.gateway.closes[4008] == 1
    got = [_seq(await reader.next()) for _ in range(published)]
    assert got == list(range(published))
    slow.transport.resumeProducing()
    code, reason = await slow.wait_closed(timeout=10)
    assert code == 4008 and reason == "client too slow"
    received = []
    while slow.frames.pending:
        received.append(_seq(await slow.next()))
    assert received == list(range(len(received))) and 0 < len(received) < published
