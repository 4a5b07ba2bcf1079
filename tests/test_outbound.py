"""The outbound path: framing once per payload, flow control handed to the flow, pongs, 4008 for slow readers."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from tests.support.daemon import StartGateway, token, workspace
from tests.support.wsclient import connect
from wsgw.flow import Flow
from wsgw.web.outbound import FrameCache, Outbound, frame_header

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
