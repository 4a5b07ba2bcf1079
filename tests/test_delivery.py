"""Every frame accounted for, on the real daemon (PROTOCOL.md §1, §4.1): an access change applies to what is
queued, a burst reaches a prompt reader whole, a reader that stops reading costs at most the byte bound, and
pings count toward the inbound limit with their pongs bounded."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support.daemon import Daemon, StartGateway, token, workspace
from tests.support.waiting import wait_until
from tests.support.wsclient import Client, connect
from wsgw.internals.twisted import buffered
from wsgw.sessions import Session

ALICE = workspace("ws-alice", "personal-files", "pydiods1/personal/alice")
OTHER = workspace("ws-other", "other", "pydiods1/other")


def delete(seq: int, pad: int = 0) -> dict[str, Any]:
    source: dict[str, Any] = {"Uuid": f"n{seq}", "Path": f"pydiods1/personal/alice/f{seq}.txt", "Type": "LEAF"}
    if pad:
        source["MetaStore"] = {"pad": json.dumps("x" * pad)}
    return {"Type": "DELETE", "Source": source}


def seq_of(frame: dict[str, Any]) -> int:
    return int(frame["Source"]["Uuid"][1:])


def the_session(daemon: Daemon) -> Session:
    (session,) = daemon.service.gateway.table
    return session


async def alice_with_a_paced_backlog(gateway: StartGateway) -> tuple[Daemon, Client]:
    """alice gets 200 DELETE events of her workspace at once: pacing (30/s, burst 20) sends 20, holds 180."""
    daemon = await gateway()
    alice = await connect(daemon.port)
    assert (await alice.subscribe(token("alice", [ALICE, OTHER])))["@type"] == "subscribed"
    await daemon.publisher.publish_many("tree", [delete(i) for i in range(200)])
    await wait_until(lambda: daemon.service.dispatcher.received["tree"] == 200, "the 200 events")
    assert [seq_of(await alice.next()) for _ in range(20)] == list(range(20))
    assert daemon.service.gateway.census().waiting_frames >= 150  # some may have gone out at 30/s meanwhile
    return daemon, alice


async def frames_until(client: Client, kind: str) -> list[dict[str, Any]]:
    """What the client receives up to the first frame of ``@type`` ``kind`` (excluded)."""
    got = []
    while (frame := await client.next()).get("@type") != kind:
        got.append(frame)
    return got


@pytest_twisted.ensureDeferred
async def test_after_unsubscribe_nothing_of_the_paced_backlog_arrives(gateway: StartGateway) -> None:
    daemon, alice = await alice_with_a_paced_backlog(gateway)
    alice.send_json({"@type": "unsubscribe"})
    await wait_until(lambda: the_session(daemon).access is None, "the unsubscribe")
    census = daemon.service.gateway.census()
    assert (census.waiting_frames, census.waiting_bytes) == (0, 0)
    # a later reply marks the end of what the daemon sent after the unsubscribe: no node frame before it
    alice.send_json({"@type": "subscribe", "jwt": token("alice", [])})
    before_marker = await frames_until(alice, "subscribed")
    assert all(seq_of(f) < 30 for f in before_marker)  # at most what went out at 30/s before the unsubscribe
    assert daemon.service.gateway.withdrawn + 20 + len(before_marker) == 200


@pytest_twisted.ensureDeferred
async def test_a_resubscribe_that_lost_the_workspace_receives_none_of_its_backlog(gateway: StartGateway) -> None:
    daemon, alice = await alice_with_a_paced_backlog(gateway)
    alice.send_json({"@type": "subscribe", "jwt": token("alice", [OTHER])})  # the refresh after losing it
    early = await frames_until(alice, "subscribed")
    assert all(seq_of(f) < 30 for f in early)
    assert daemon.service.gateway.census().waiting_frames == 0
    await daemon.publish("tree", {"Target": {"Uuid": "o1", "Path": "pydiods1/other/new.txt", "Type": "LEAF"}})
    assert (await alice.next())["Target"]["Uuid"] == "o1"  # the next frame is of the access she still has


@pytest_twisted.ensureDeferred
async def test_a_prompt_reader_gets_a_bulk_delete_of_12000_files_whole_and_in_order(gateway: StartGateway) -> None:
    """§4.1: pacing never turns a burst into loss: the daemon's own backlog never closes a reader that reads."""
    daemon = await gateway()
    alice = await connect(daemon.port)
    await alice.subscribe(token("alice", [ALICE]))
    await daemon.publisher.publish_many("tree", [delete(i) for i in range(12_000)])
    got = [seq_of(await alice.next(timeout=30)) for _ in range(12_000)]
    assert got == list(range(12_000))
    assert daemon.service.gateway.closes == {}


@pytest_twisted.ensureDeferred
async def test_a_reader_that_stops_reading_holds_at_most_max_queued_bytes_then_4008(gateway: StartGateway) -> None:
    """1,000 node events of 60 KB for a client that stopped reading: the daemon holds at most max_queued_bytes in
    its flow (plus the transport's 64 KiB and one frame), then closes it 4008; another reader gets all."""
    limit = 1 << 20
    daemon = await gateway(redis=None, overrides={"delivery.max_queued_bytes": str(limit)})
    reader, stopped = await connect(daemon.port), await connect(daemon.port)
    for client in (reader, stopped):
        await client.subscribe(token("alice", [ALICE]))
    sessions = list(daemon.service.gateway.table)
    stopped.transport.pauseProducing()
    peaks = {"flow": 0, "transport": 0}

    def watch() -> bool:
        for session in sessions:
            if session.open:
                peaks["flow"] = max(peaks["flow"], session.flow.waiting[1])
                peaks["transport"] = max(peaks["transport"], buffered(session.connection.transport))  # type: ignore
        return daemon.service.gateway.closes[4008] > 0

    published = await daemon.flood(lambda i: json.dumps(delete(i, pad=60_000)).encode(), watch, slices=100)
    assert published <= 1000 and daemon.service.gateway.closes == {4008: 1}
    assert peaks["flow"] <= limit and peaks["transport"] <= 64 * 1024 + 61_000
    assert [seq_of(await reader.next()) for _ in range(published)] == list(range(published))
    stopped.transport.resumeProducing()
    assert (await stopped.wait_closed())[0] == 4008


@pytest_twisted.ensureDeferred
async def test_pings_count_toward_the_inbound_limit(gateway: StartGateway) -> None:
    """A peer that only pings is closed 4029 past inbound_burst, subscribed or not."""
    daemon = await gateway(redis=None, overrides={"websocket.inbound_rate": "5", "websocket.inbound_burst": "20"})
    peer = await connect(daemon.port)
    for i in range(100):
        peer.sendPing(b"%d" % i)
    assert await peer.wait_closed() == (4029, "too many frames: slow down")


@pytest_twisted.ensureDeferred
async def test_a_peer_that_pings_and_never_reads_makes_the_daemon_hold_one_pong(gateway: StartGateway) -> None:
    """RFC 6455 §5.5.3: with no inbound limit, 100,000 pings of 125 bytes (12.5 MB) from a peer that does not
    read leave the daemon holding its transport's 64 KiB and one pong, not a pong per ping."""
    daemon = await gateway(redis=None, overrides={"websocket.inbound_rate": "0"})
    peer = await connect(daemon.port)
    peer.transport.pauseProducing()
    for i in range(100_000):
        peer.sendPing(b"%0125d" % i)
    peer.send_json({"@type": "subscribe", "jwt": token("alice", [ALICE])})  # handled after every ping
    await wait_until(lambda: daemon.service.gateway.subscribes_accepted == 1, "the pings, then the subscribe",
                     timeout=60)
    server = the_session(daemon).connection
    assert buffered(server.transport) <= 64 * 1024 + 200  # type: ignore[attr-defined]
    assert server._out.paused and server._out._pong == b"%0125d" % 99_999  # type: ignore[attr-defined]
    peer.transport.resumeProducing()


class SlowAccessBackend(Resource):
    """An access backend (``[access] resolver = http``) answering alice's access after 100 ms."""

    isLeaf = True

    def render_GET(self, request: Request) -> int:
        answer = json.dumps({"profile": "standard", "workspaces": [ALICE]}).encode()
        call = reactor.callLater(0.1, lambda: (request.write(answer), request.finish()))
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_chat_frames_sent_right_after_subscribe_wait_for_it(gateway: StartGateway) -> None:
    """§2: the Cells chat client sends JOIN without waiting for "subscribed": with a backend answering in
    100 ms, subscribe, JOIN and HISTORY back to back enter the room, and a later PING finds it."""
    port = reactor.listenTCP(0, Site(SlowAccessBackend()), interface="127.0.0.1")
    try:
        daemon = await gateway(redis=None, overrides={
            "access.resolver": "http", "access.url": f"http://127.0.0.1:{port.getHost().port}/access"})
        chat = await connect(daemon.port, "/chat")
        room = {"Type": "WORKSPACE", "RoomTypeObject": "ws-alice"}
        chat.send_json({"@type": "subscribe", "jwt": token("alice", [])})
        chat.send_json({"@type": "JOIN", "Room": room})
        chat.send_json({"@type": "HISTORY", "Room": room, "Message": {"Message": '{"Offset":0,"Limit":40}'}})
        first = await chat.next()
        assert first["@type"] == "subscribed", first
        joined = await chat.next()
        assert joined["@type"] == "ROOM_UPDATE" and joined["Room"]["Users"] == ["alice"]
        assert (await chat.next()) == joined  # HISTORY of an empty room: its ROOM_UPDATE only
        chat.send_json({"@type": "JOIN", "Room": room, "Message": {"Message": "PING"}})
        chat.send_json({"@type": "HISTORY", "Room": room, "Message": {"Message": '{"Offset":0,"Limit":40}'}})
        assert (await chat.next())["@type"] == "ROOM_UPDATE"  # no "room does not exist" before it
    finally:
        await port.stopListening()
