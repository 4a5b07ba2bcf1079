"""A read that is one whole masked text message is handed to ``onMessage`` without Autobahn's frame parser
(``wsgw.internals.wholeframe``, ``ServerProtocol._dataReceived``; bench/RESULTS.md "Connect path", part 5): for
every shape of read, the outcome is Autobahn's own — the same messages handed over, the same bytes sent back (the
1002, 1007 and 1009 closes), the same counts and state — as when its parser reads the same bytes in pieces."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.support.rawtcp import UPGRADE
from wsgw.internals import autobahn as internals
from wsgw.internals.autobahn import ServerFactory, ServerProtocol
from wsgw.internals.wholeframe import unmask, whole_text

STATS = ("incomingOctetsWireLevel", "incomingOctetsWebSocketLevel", "incomingOctetsAppLevel",
         "incomingWebSocketFrames", "incomingWebSocketMessages")


class _Transport(StringTransport):
    def unregisterProducer(self) -> None:  # (Autobahn's drop unregisters one it never registered)
        self.producer = None


class _Recorder(ServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.seen.append(("message", payload, isBinary, self.inside_message))  # type: ignore[attr-defined]

    def processData(self) -> bool:
        self.factory.parsed += 1  # type: ignore[attr-defined]
        return super().processData()


def _open(max_frame: int = 0, **options: Any) -> Any:
    factory: Any = ServerFactory(reactor, Clock())
    factory.protocol = _Recorder
    factory.setProtocolOptions(maxFramePayloadSize=max_frame, maxMessagePayloadSize=max_frame, failByDrop=False,
                               openHandshakeTimeout=0, autoPingInterval=0, **options)
    factory.seen, factory.parsed = [], 0
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(_Transport())
    protocol.dataReceived(UPGRADE)
    assert protocol.state == ServerProtocol.STATE_OPEN
    protocol.transport.clear()
    return protocol


def _outcome(protocol: Any) -> tuple[Any, ...]:
    stats = tuple(getattr(protocol.trafficStats, name) for name in STATS)
    return (protocol.factory.seen, protocol.transport.value(), protocol.transport.disconnecting, stats,
            protocol.state, protocol.failedByMe,
            protocol.data, protocol.inside_message, protocol.current_frame is None,
            protocol.wasMaxFramePayloadSizeExceeded or protocol.wasMaxMessagePayloadSizeExceeded)


def _frame(first: int, payload: bytes, mask: bytes | None = b"\x01\x02\x03\x04", form: str = "short") -> bytes:
    """A frame of ``payload`` with its length in ``form``: ``short`` (7 bits when it fits, else 16), ``16`` or
    ``64`` (whatever the size, minimal or not)."""
    size = len(payload)
    bit = 0x80 if mask is not None else 0
    if form == "short" and size < 126:
        head = bytes([first, bit | size])
    elif form in ("short", "16"):
        head = bytes([first, bit | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, bit | 127]) + size.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _both(reads: list[bytes], before: list[bytes] = (), max_frame: int = 0) -> tuple[Any, Any, int]:  # type: ignore[assignment]
    """The outcome of ``reads`` after ``before`` on a fresh open socket, read by wsgw's ``_dataReceived`` as it
    is and with its shortcut off (``whole_text`` finding nothing: Autobahn's parser reads everything); and how
    often the parser ran in the first."""
    ends, parsed = [], 0
    for shortcut in (True, False):
        protocol = _open(max_frame)
        with pytest.MonkeyPatch.context() as patch:
            if not shortcut:
                patch.setattr(internals, "whole_text", lambda data, max_frame, max_message: None)
            for data in [*before, *reads]:
                protocol.dataReceived(data)
        ends.append(_outcome(protocol))
        if shortcut:
            parsed = protocol.factory.parsed
    return ends[0], ends[1], parsed


TEXTS = [b"", b"x", b'{"@type":"subscribe","jwt":"a.b.c"}', "héllo ✓ 𝄞".encode(), b"y" * 125, b"z" * 126,
         b"w" * 300, b"v" * 65535]
INVALID_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"ok\x80", b"\xf8\x88\x80\x80\x80",
                b"\xc3", b"a" * 200 + b"\xe9"]


@pytest.mark.parametrize("payload", TEXTS)
def test_a_whole_text_message_is_handed_over_without_the_parser(payload: bytes) -> None:
    frame = _frame(0x81, payload)
    fast, slow, parsed = _both([frame])
    assert fast == slow == _both([frame[:1], frame[1:]])[0]  # (in two reads: Autobahn's parser)
    assert fast[0] == [("message", payload, False, True)]  # (inside the message while it is handed over)
    assert parsed == 0


@pytest.mark.parametrize("payload", INVALID_UTF8)
def test_invalid_utf8_is_autobahns_1007(payload: bytes) -> None:
    fast, slow, parsed = _both([_frame(0x81, payload)])
    assert fast == slow
    assert fast[0] == [] and fast[1][:4] == b"\x88" + bytes([len(fast[1]) - 2]) + (1007).to_bytes(2, "big")
    assert parsed > 0


@pytest.mark.parametrize(("reads", "before"), [
    ([_frame(0x01, b"part")], []),  # not final: a fragment
    ([_frame(0x80, b"end")], [_frame(0x01, b"start ")]),  # a continuation (after a fragment)
    ([_frame(0x81, b"text")], [_frame(0x01, b"start ")]),  # a new message inside a fragmented one: 1002
    ([_frame(0x81, b"text", mask=None)], []),  # unmasked: 1002
    ([_frame(0x82, b"\x00binary")], []),  # binary
    ([_frame(0x91, b"rsv")], []), ([_frame(0xC1, b"rsv")], []), ([_frame(0xA1, b"rsv")], []),  # RSV bits: 1002
    ([_frame(0x81, b"short", form="16")], []),  # a length not in its minimal form: 1002
    ([_frame(0x81, b"x" * 200, form="64")], []),  # a 64-bit length for a small payload: 1002
    ([_frame(0x81, b"hi") + _frame(0x88, (1000).to_bytes(2, "big"))], []),  # a close after it, same read
    ([_frame(0x81, b"one") + _frame(0x81, b"two")], []),  # two messages in one read
    ([_frame(0x81, b"hello")[:-1]], []),  # a message cut short
    ([_frame(0x81, b"late")], [_frame(0x81, b"abc")[:3]]),  # a partial frame buffered before
    ([_frame(0x83, b"reserved")], []),  # a reserved opcode: 1002
])
def test_other_reads_are_autobahns(reads: list[bytes], before: list[bytes]) -> None:
    fast, slow, _ = _both(reads, before)
    assert fast == slow


@pytest.mark.parametrize("size", [99, 100, 101, 125, 126, 127, 300])
def test_over_the_size_limit_is_autobahns_1009(size: int) -> None:
    fast, slow, parsed = _both([_frame(0x81, b"s" * size)], max_frame=100)
    assert fast == slow
    assert (parsed == 0) == (size <= 100)
    if size > 100:
        assert fast[0] == [] and (1009).to_bytes(2, "big") in fast[1]


def test_after_the_server_starts_a_close_messages_are_dropped_as_autobahn_drops_them() -> None:
    ends = []
    for split in (False, True):
        protocol = _open()
        assert protocol.start_close(4001, "bye")
        frame = _frame(0x81, b'{"@type":"subscribe"}')
        for data in ([frame[i:i + 1] for i in range(len(frame))] if split else [frame]):
            protocol.dataReceived(data)
        ends.append(_outcome(protocol))
    assert ends[0] == ends[1] and ends[0][0] == []


def test_the_parse_is_autobahns_own_for_arbitrary_reads_and_limits() -> None:
    """Hypothesis over frame shapes: first byte, mask, length form, payload (valid, invalid UTF-8, arbitrary),
    bytes after it, a frame before it, a size limit."""
    firsts = st.sampled_from([0x81, 0x81, 0x81, 0x01, 0x80, 0x82, 0x91, 0xA1, 0xC1, 0xF1, 0x88, 0x89, 0x8A, 0x83,
                              0x8B]) | st.integers(0, 255)
    payloads = (st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))
                | st.binary(max_size=300) | st.sampled_from(INVALID_UTF8 + TEXTS[:-1]))
    frames = st.builds(_frame, firsts, payloads, st.none() | st.binary(min_size=4, max_size=4),
                       st.sampled_from(["short", "short", "16", "64"]))
    whole = st.builds(_frame, st.just(0x81), st.text(max_size=300).map(str.encode), st.binary(min_size=4, max_size=4))
    reads = whole | st.tuples(frames, st.sampled_from([b"", b"\x88\x80abcd", b"\x8a\x80abcd", b"\x81"])).map(
        lambda t: t[0] + t[1])
    before = st.just([]) | st.sampled_from([[_frame(0x01, b"start ")], [b"\x81"], [_frame(0x8A, b"")]])
    limits = st.sampled_from([0, 0, 1, 125, 126, 200])

    @settings(max_examples=int(os.environ.get("WSGW_HYPOTHESIS_EXAMPLES", "400")), deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(reads, before, limits)
    def check(data: bytes, before: list[bytes], limit: int) -> None:
        fast, slow, parsed = _both([data], before, limit)
        assert fast == slow
        taken.append(parsed == 0 and fast[0] != [])

    taken: list[bool] = []
    check()
    assert 0 < sum(taken) < len(taken)  # both ways seen


def test_whole_text_takes_exactly_the_valid_utf8_autobahn_takes() -> None:
    """Python's strict UTF-8 decoder and Autobahn's validator accept the same payloads (edges and arbitrary)."""
    from autobahn.websocket.utf8validator import Utf8Validator

    @settings(max_examples=int(os.environ.get("WSGW_HYPOTHESIS_EXAMPLES", "400")) * 5, deadline=None)
    @given(st.binary(max_size=40) | st.sampled_from(INVALID_UTF8) | st.text(max_size=40).map(
        lambda t: t.encode("utf-8", "surrogatepass")))
    def check(payload: bytes) -> None:
        validator = Utf8Validator()
        valid, ended, _, _ = validator.validate(payload)
        assert (whole_text(_frame(0x81, payload), 0, 0) is not None) == (valid and ended)

    check()


def test_unmask_is_the_xor_with_the_repeated_mask() -> None:
    for size in (0, 1, 3, 4, 5, 125, 126, 1000):
        payload = os.urandom(size)
        data = b"\x81\x80" + b"\x9a\x0b\xfc\x31" + bytes(b ^ b"\x9a\x0b\xfc\x31"[i % 4] for i, b in enumerate(payload))
        assert unmask(data, 6, size) == payload


def test_a_socket_gets_autobahns_validator_only_when_its_parser_reads_a_text_message() -> None:
    """No validator is made at connect (``LazyValidator``); the first text message Autobahn's parser reads makes
    the socket's own, which validates across fragments and refuses invalid UTF-8 with 1007 as before."""
    from autobahn.websocket.utf8validator import Utf8Validator

    protocol = _open()
    assert "utf8validator" not in protocol.__dict__
    protocol.dataReceived(_frame(0x81, b"whole"))  # (read whole: validated without it)
    assert "utf8validator" not in protocol.__dict__
    snowman = "☃".encode()
    protocol.dataReceived(_frame(0x01, b"a" + snowman[:1]))  # a character split over two fragments
    protocol.dataReceived(_frame(0x80, snowman[1:]))
    validator = protocol.__dict__["utf8validator"]
    assert isinstance(validator, Utf8Validator)
    assert protocol.factory.seen[-1] == ("message", b"a" + snowman, False, True)
    protocol.dataReceived(_frame(0x01, b"ok"))
    protocol.dataReceived(_frame(0x80, b"\xc0\x80"))
    assert protocol.utf8validator is validator and protocol.factory.seen[-1][1] == b"a" + snowman
    assert protocol.transport.value()[:4] == b"\x88" + bytes([len(protocol.transport.value()) - 2]) + b"\x03\xef"
    assert _open().utf8validator is not _open().utf8validator  # (each socket its own)


@pytest.mark.parametrize("size", [0, 1, 12, 125])
@pytest.mark.parametrize("pending", [None, "its", "another"])
@pytest.mark.parametrize("before", [[], [_frame(0x01, b"start ")]])
def test_a_whole_pong_is_handled_as_autobahns_parser_handles_it(size: int, pending: str | None,
                                                                 before: list[bytes]) -> None:
    """A read that is one whole pong (``_dataReceived``'s other shortcut): the same auto-ping state, callbacks,
    counts and bytes as when Autobahn's parser reads it in two pieces; inside a fragmented message too."""
    payload = bytes(range(size))
    ends = []
    for reads in ([_frame(0x8A, payload)], [_frame(0x8A, payload)[:1], _frame(0x8A, payload)[1:]]):
        protocol = _open()
        calls: list[Any] = []
        protocol.onPong = calls.append
        protocol.onAutoPong = lambda *args, calls=calls: calls.append(("auto", args[1], args[4]))
        if pending is not None:
            protocol.autoPingPending = payload if pending == "its" else b"other pong"
            protocol.autoPingPendingSent = 1
        for data in [*before, *reads]:
            protocol.dataReceived(data)
        ends.append((_outcome(protocol), calls, protocol.autoPingPending, protocol.control_frame_data))
    assert ends[0] == ends[1]
    assert ends[0][1][-1] == payload  # (onPong, after onAutoPong when it was the pending one)


@pytest.mark.parametrize("payload", [TEXTS[2], TEXTS[3], b"z" * 126, b"v" * 65535])
def test_a_message_split_at_any_byte_is_the_same_message(payload: bytes) -> None:
    """A whole text frame in two reads, cut at every byte of its header and of its payload's ends (all of it when
    short): Autobahn's parser then, the same outcome as read whole."""
    frame = _frame(0x81, payload)
    cuts = range(1, len(frame)) if len(frame) < 400 else [*range(1, 16), *range(len(frame) - 8, len(frame))]
    whole = _both([frame])[0]
    for cut in cuts:
        assert _both([frame[:cut], frame[cut:]])[0] == whole, cut
