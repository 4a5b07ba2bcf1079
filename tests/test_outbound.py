"""The outbound path: framing once per payload, the bounded per-socket queue, coalescing, 4008 for slow readers."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from tests.support.daemon import StartGateway, token, workspace
from tests.support.wsclient import connect
from wsgw.web.outbound import FrameCache, Outbound, frame_header

HOME = workspace("ws-home", "home", "pydiods1/home")


class Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def outbound(max_bytes: int = 1000, max_frames: int = 10) -> tuple[Outbound, StringTransport, Recorder]:
    transport = StringTransport()
    overflow = Recorder()
    return Outbound(transport, max_bytes, max_frames, overflow), transport, overflow


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
    out = Outbound(transport, 100, 10, Recorder())
    assert verifyObject(IPushProducer, out)
    assert transport.producer is out and transport.streaming


def test_frames_go_straight_through_while_not_paused() -> None:
    """With nothing pending, each frame is written at once and nothing is queued."""
    out, transport, _ = outbound()
    out.write(b"one")
    out.write(b"two")
    assert transport.value() == b"onetwo"
    assert (out._queued_frames, out._queued) == (0, 0)


def test_frames_that_pile_up_while_paused_go_out_as_one_write_on_resume() -> None:
    """While the transport pauses the producer frames wait; resume hands them over in order, in one write."""
    out, transport, _ = outbound()
    writes: list[bytes] = []
    transport.write = writes.append  # type: ignore[method-assign]
    out.pauseProducing()
    for frame in (b"a", b"bb", b"ccc"):
        out.write(frame)
    assert writes == [] and (out._queued_frames, out._queued) == (3, 6)
    out.resumeProducing()
    assert writes == [b"abbccc"]
    assert (out._queued_frames, out._queued) == (0, 0)


def test_past_the_frame_limit_the_queue_is_dropped_and_overflow_called_once() -> None:
    """One frame over max_frames drops the queue, calls overflow once, and later frames are ignored."""
    out, transport, overflow = outbound(max_bytes=10_000, max_frames=3)
    out.pauseProducing()
    for _ in range(4):
        out.write(b"x")
    assert overflow.calls == 1 and (out._queued_frames, out._queued) == (0, 0)
    out.write(b"y")
    out.resumeProducing()
    assert overflow.calls == 1 and transport.value() == b""


def test_past_the_byte_limit_the_queue_is_dropped_and_overflow_called() -> None:
    """More than max_bytes waiting counts as too slow even under the frame limit."""
    out, _, overflow = outbound(max_bytes=10, max_frames=100)
    out.pauseProducing()
    out.write(b"12345")
    out.write(b"12345")
    assert overflow.calls == 0
    out.write(b"1")
    assert overflow.calls == 1 and (out._queued_frames, out._queued) == (0, 0)


def test_flush_hands_the_queue_to_the_transport_before_a_close() -> None:
    """flush writes what waits (so it precedes a close frame) even while paused."""
    out, transport, _ = outbound()
    out.pauseProducing()
    out.write(b"last words")
    out.flush()
    assert transport.value() == b"last words" and (out._queued_frames, out._queued) == (0, 0)


def test_stop_producing_forgets_the_queue() -> None:
    """When the transport is gone (stopProducing) the queue is dropped and nothing more is written."""
    out, transport, _ = outbound()
    out.pauseProducing()
    out.write(b"lost")
    out.stopProducing()
    out.resumeProducing()
    out.write(b"more")
    assert transport.value() == b"" and (out._queued_frames, out._queued) == (0, 0)


def test_flush_before_a_close_keeps_the_order_of_the_queue() -> None:
    """flush (called before every close frame) writes the queued frames in order, then nothing is left."""
    out, transport, _ = outbound()
    out.pauseProducing()
    out.write(b"first ")
    out.write(b"second")
    out.flush()
    assert transport.value() == b"first second" and (out._queued_frames, out._queued) == (0, 0)


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
        "delivery.pacing_rate": "0", "delivery.max_queued_bytes": "65536", "delivery.max_queued_frames": "100",
    })
    reader = await connect(daemon.port)
    slow = await connect(daemon.port)
    for client, login in ((reader, "alice"), (slow, "bob")):
        assert (await client.subscribe(token(login, [HOME])))["@type"] == "subscribed"
    slow.transport.pauseProducing()  # stops reading its socket: the kernel buffers fill, then the daemon's
    published = 0
    for _ in range(400):  # bounded: at most 400 slices of 10 events of ~16 KB (64 MB)
        for _ in range(10):
            daemon.service.bus.publish("tree", _event(published, 16_000))
            published += 1
        await task.deferLater(reactor, 0.001, lambda: None)
        if daemon.service.gateway.closes[4008]:
            break
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
