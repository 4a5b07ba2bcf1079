"""wsgw.flow: one socket's frames, paced, blocked, bounded in bytes, re-filtered on access changes."""

from __future__ import annotations

import attrs
from twisted.internet.task import Clock

from wsgw.flow import ENTRY_COST, Flow
from wsgw.pacing import TokenBucket


@attrs.define
class Wire:
    """The connection under a flow: records what it writes; ``room`` bytes then it pauses the flow."""

    flow: Flow | None = None
    written: list[bytes] = attrs.Factory(list)
    room: float = float("inf")

    def write(self, payload: bytes) -> None:
        self.written.append(payload)
        self.room -= len(payload)
        if self.room <= 0 and self.flow is not None:
            self.flow.pause()

    def drain(self, room: float = float("inf")) -> None:
        """The client read everything: the connection resumes the flow with ``room`` bytes to fill."""
        self.room = room
        assert self.flow is not None
        self.flow.resume()


@attrs.frozen
class Tag:
    name: str


def make(rate: float = 0, burst: float = 0, *, max_delay: float = 2.0, max_bytes: int = 1 << 20,
         room: float = float("inf")) -> tuple[Flow, Wire, Clock, list[str]]:
    clock = Clock()
    wire = Wire(room=room)
    overflows: list[str] = []
    flow = Flow(wire.write, lambda: overflows.append("overflow"), max_bytes=max_bytes)
    if rate:
        flow.pace(TokenBucket(rate, burst, clock), clock, max_delay)
    wire.flow = flow
    return flow, wire, clock, overflows


def frames(n: int, size: int = 10, start: int = 0) -> list[bytes]:
    return [str(i).zfill(size).encode() for i in range(start, start + n)]


def test_an_idle_connection_writes_at_once():
    flow, wire, _, _ = make()
    flow.send(b"a")
    flow.paced(b"b")
    assert wire.written == [b"a", b"b"]
    assert flow.waiting == (0, 0)


def test_a_paused_connection_blocks_frames_and_writes_them_in_order_when_it_resumes():
    flow, wire, _, _ = make()
    flow.pause()
    flow.send(b"a")
    flow.paced(b"b")
    flow.send(b"c", Tag("x"))
    assert wire.written == []
    assert flow.waiting == (3, 3 + 3 * ENTRY_COST)
    wire.drain()
    assert wire.written == [b"a", b"b", b"c"]
    assert flow.waiting == (0, 0)
    flow.send(b"d")
    assert wire.written[-1] == b"d"


def test_resuming_stops_writing_when_the_connection_pauses_again():
    flow, wire, _, _ = make()
    flow.pause()
    for payload in frames(10):
        flow.send(payload)
    wire.drain(room=25)  # pauses again after the third frame
    assert wire.written == frames(3)
    flow.send(b"later")  # behind what is still blocked
    wire.drain()
    assert wire.written == frames(10) + [b"later"]


def test_pacing_sends_the_burst_then_the_rate_in_order():
    flow, wire, clock, _ = make(rate=10, burst=3)
    for payload in frames(8):
        flow.paced(payload)
    assert wire.written == frames(3)
    clock.advance(0.1)
    assert wire.written == frames(4)
    clock.advance(0.2)
    assert wire.written == frames(6)
    assert flow.waiting[0] == 2


def test_a_held_frame_waits_at_most_max_delay_then_the_burst_goes_out_whole():
    """§4.1: pacing never turns a burst into loss; 12,000 events reach a prompt reader whole, in order, and by
    max_delay after they arrived."""
    flow, wire, clock, overflows = make(rate=30, burst=20, max_delay=2.0, max_bytes=4 << 20)
    burst = frames(12_000, size=200)
    for payload in burst:
        flow.paced(payload)
    assert len(wire.written) == 20
    clock.advance(1.0)
    assert 40 <= len(wire.written) <= 60  # the rate meanwhile
    clock.advance(1.0)
    assert wire.written == burst
    assert overflows == []
    assert flow.waiting == (0, 0)


def test_past_the_byte_bound_a_prompt_reader_gets_the_held_frames_at_once():
    flow, wire, _, overflows = make(rate=1, burst=1, max_bytes=10 * (100 + ENTRY_COST))
    burst = frames(12, size=100)
    for payload in burst[:11]:
        flow.paced(payload)
    assert wire.written == burst[:1]  # one token; ten frames held, exactly the bound
    flow.paced(burst[11])
    assert wire.written == burst  # past the bound: all of them out, in order
    assert overflows == []


def test_a_reader_that_stopped_reading_overflows_once_and_nothing_more_is_written():
    flow, wire, clock, overflows = make(rate=1, burst=1, max_bytes=10 * (100 + ENTRY_COST))
    flow.pause()
    for payload in frames(30, size=100):
        flow.paced(payload)
        flow.send(payload)
    assert overflows == ["overflow"]
    assert flow.waiting == (0, 0)
    wire.drain()
    clock.advance(10)
    flow.send(b"more")
    flow.optimistic(b"more")
    assert wire.written == []


def test_every_frame_counts_against_one_bound_held_and_blocked_together():
    size = 100 + ENTRY_COST
    flow, wire, _, overflows = make(rate=1, burst=1, max_bytes=10 * size)
    flow.paced(b"x" * 100)  # the token
    flow.pause()
    for _ in range(6):
        flow.paced(b"h" * 100)  # held
    for _ in range(4):
        flow.send(b"b" * 100)  # blocked
    assert flow.waiting == (10, 10 * size)
    assert overflows == []
    flow.send(b"b" * 100)
    assert overflows == ["overflow"]


def test_an_optimistic_frame_goes_out_at_once_after_what_is_held():
    flow, wire, clock, _ = make(rate=1, burst=1)
    for payload in frames(4):
        flow.paced(payload)
    flow.optimistic(b"now")
    assert wire.written == frames(4) + [b"now"]
    clock.advance(5)
    assert wire.written == frames(4) + [b"now"]


def test_refilter_drops_the_waiting_frames_the_new_access_refuses_and_keeps_replies():
    flow, wire, clock, _ = make(rate=1, burst=1)
    alice, bob = Tag("alice"), Tag("bob")
    flow.paced(b"first", alice)  # the token
    flow.paced(b"a1", alice)
    flow.paced(b"b1", bob)
    flow.pause()
    flow.send(b"reply")
    flow.send(b"a2", alice)
    assert flow.refilter(lambda scope: scope != alice) == 2
    assert flow.waiting == (2, len(b"b1reply") + 2 * ENTRY_COST)
    wire.drain()
    clock.advance(5)
    assert wire.written == [b"first", b"reply", b"b1"]


def test_refilter_of_everything_held_stops_the_pacing_timer():
    flow, wire, clock, _ = make(rate=1, burst=1)
    for payload in frames(5):
        flow.paced(payload, Tag("a"))
    assert clock.getDelayedCalls()
    assert flow.refilter(lambda scope: False) == 4
    assert clock.getDelayedCalls() == []
    assert flow.waiting == (0, 0)
    flow.paced(b"next", Tag("a"))  # a token by now? no: the bucket is where it was
    clock.advance(1)
    assert wire.written == frames(1) + [b"next"]


def test_release_sends_everything_held_now():
    flow, wire, clock, _ = make(rate=1, burst=1)
    for payload in frames(5):
        flow.paced(payload)
    flow.release()
    assert wire.written == frames(5)
    assert clock.getDelayedCalls() == []


def test_stop_forgets_everything_and_cancels_the_timer():
    flow, wire, clock, _ = make(rate=1, burst=1)
    for payload in frames(5):
        flow.paced(payload)
    flow.stop()
    assert clock.getDelayedCalls() == []
    flow.send(b"x")
    flow.paced(b"y")
    assert wire.written == frames(1)
    assert flow.waiting == (0, 0)


def test_flush_writes_what_is_blocked_even_while_paused_and_keeps_what_is_held() -> None:
    """Before a close frame: blocked frames go to the transport in order; paced ones stay held."""
    flow, wire, _, _ = make(rate=1, burst=1)
    flow.paced(b"sent")
    flow.paced(b"held")
    flow.pause()
    flow.send(b"b1")
    flow.send(b"b2")
    flow.flush()
    assert wire.written == [b"sent", b"b1", b"b2"] and flow.waiting == (1, 4 + ENTRY_COST)


def test_bytes_held_outside_count_against_the_one_bound() -> None:
    """Frames waiting elsewhere (``hold_outside``) count with those waiting here: in ``waiting``, through a
    refilter, and toward the bound; past it a prompt reader first gets its paced frames, and when that is not
    enough the flow stops and overflows once; a stopped flow refuses more and ignores releases."""
    flow, wire, clock, overflows = make(rate=1, burst=1, max_bytes=1000)
    flow.paced(b"p" * 10)  # the token
    flow.paced(b"h" * 100)  # held by pacing: 164 bytes
    assert flow.hold_outside(500)
    assert flow.waiting == (1, 664)
    flow.refilter(lambda scope: True)
    assert flow.waiting == (1, 664)
    assert flow.hold_outside(400)  # 1064: the held paced frame goes out at once, 900 remain
    assert wire.written == [b"p" * 10, b"h" * 100] and flow.waiting == (0, 900) and overflows == []
    flow.release_outside(400)
    assert flow.waiting == (0, 500)
    assert not flow.hold_outside(501)  # 1001, nothing to release: stopped
    assert overflows == ["overflow"] and flow.stopped and flow.waiting == (0, 0)
    assert not flow.hold_outside(1)
    flow.release_outside(500)
    assert flow.waiting == (0, 0)


def test_a_suspended_flow_writes_nothing_until_unsuspended_and_refiltered() -> None:
    """§3.1: while an access is re-derived every frame waits (even when the connection drains); the ones the
    new access refuses are dropped, the rest go out in order."""
    flow, wire, _, _ = make()
    flow.send(b"before")
    flow.suspend()
    flow.send(b"kept-1", Tag("kept"))
    flow.paced(b"gone", Tag("gone"))
    flow.send(b"reply")
    flow.resume()  # the connection drained: still nothing while suspended
    assert wire.written == [b"before"] and flow.waiting[0] == 3
    assert flow.refilter(lambda scope: scope == Tag("kept")) == 1
    flow.unsuspend()
    assert wire.written == [b"before", b"kept-1", b"reply"]
    flow.send(b"after")
    assert wire.written[-1] == b"after" and flow.waiting == (0, 0)


def test_a_suspended_flow_flushes_nothing_before_a_close() -> None:
    flow, wire, _, _ = make()
    flow.suspend()
    flow.send(b"old scope", Tag("old"))
    flow.flush()
    assert wire.written == []


def test_unsuspending_a_paused_flow_waits_for_the_connection() -> None:
    flow, wire, _, _ = make(room=1)
    flow.send(b"x")  # fills the connection: paused
    flow.suspend()
    flow.send(b"y")
    flow.unsuspend()
    assert wire.written == [b"x"]
    wire.drain()
    assert wire.written == [b"x", b"y"]


def test_suspended_tells_a_flow_held_for_an_access_from_a_paused_one() -> None:
    flow, wire, _, _ = make(room=1)
    flow.suspend()
    assert flow.suspended
    flow.pause()
    assert not flow.suspended  # the client is not reading either


def test_only_held_frames_are_observed_with_their_hold_when_released() -> None:
    """Pacing's ``observe`` gets each held frame's wait as it is released (by the bucket, by an Optimistic frame),
    and nothing for the frames that went out at once."""
    flow, wire, clock, _ = make(1, 1)
    holds: list[float] = []
    assert flow._bucket is not None
    flow.pace(flow._bucket, clock, 2.0, holds.append)
    flow.paced(b"a")  # the burst: out at once
    flow.paced(b"b")
    clock.advance(0.25)
    flow.paced(b"c")
    clock.advance(0.75)  # one token: b goes out, held 1 s
    assert wire.written == [b"a", b"b"] and holds == [1.0]
    clock.advance(0.5)
    flow.optimistic(b"d")  # c goes out first, held 1.25 s; d is not paced
    assert wire.written == [b"a", b"b", b"c", b"d"] and holds == [1.0, 1.25]
