"""The chat's bounds (issue 11, sections 3 and 4; PROTOCOL.md §5.2): everything a peer can make the chat hold is
bounded, an allowed burst is served whole, and each bound answers the peer clearly and is counted in /metrics.

Real gateway daemons on loopback, the real Redis (a private one where it must stall), real WebSocket clients.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from tests.support.daemon import StartGateway, new_prefix, scrape, token, value, workspace
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from tests.support.wsclient import Client, connect

Frame = dict[str, Any]
ADMIN = "tcp:0:interface=127.0.0.1"


async def chat_client(port: int, login: str, **claims: Any) -> Client:
    client = await connect(port, "/chat")
    answer = await client.subscribe(token(login, **claims))
    assert answer["@type"] == "subscribed"
    return client


async def join(client: Client, obj: str, type_: str = "GLOBAL", **room: Any) -> Frame:
    """JOIN the room and return it, from its ROOM_UPDATE (updates of other rooms still coming are passed over)."""
    client.send_json({"@type": "JOIN", "Room": {"Type": type_, "RoomTypeObject": obj, **room}})
    while True:
        frame: Frame = await client.next()
        assert frame.get("@type") == "ROOM_UPDATE", frame
        if (frame["Room"]["Type"], frame["Room"]["RoomTypeObject"]) == (type_, obj):
            return frame["Room"]  # type: ignore[no-any-return]


async def answer(client: Client) -> Frame:
    """The next frame that is not a ROOM_UPDATE (those of earlier JOINs may still come)."""
    while True:
        frame: Frame = await client.next()
        if frame.get("@type") != "ROOM_UPDATE":
            return frame


async def settled(client: Client) -> None:
    """Wait until the socket's earlier frames are done: a frame answered in its turn, without the store."""
    client.send_json({"@type": "SETTLED?"})
    assert await answer(client) == {"@type": "error", "error": "unknown @type 'SETTLED?'"}


def post(client: Client, room_uuid: str, text: str) -> None:
    client.send_json({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Message": text}})


async def messages(client: Client, count: int) -> list[Frame]:
    """The next ``count`` chat messages the socket gets (room updates passed over; any other frame fails)."""
    got: list[Frame] = []
    while len(got) < count:
        frame: Frame = await client.next()
        if frame.get("@type") == "ROOM_UPDATE":
            continue
        assert "@type" not in frame, f"expected a chat message, got {frame!r}"
        got.append(frame)
    return got


# --------------------------------------------------------------------------- the per-socket queue (§3)


@pytest_twisted.ensureDeferred
async def test_a_burst_of_posts_inside_the_inbound_burst_is_stored_and_broadcast_whole_in_order(
        gateway: StartGateway) -> None:
    """45 POSTs back to back (inbound_burst is 60): every one is stored and broadcast, in order, no error frame
    (before: 12 'too many requests in flight', and those posts lost)."""
    daemon = await gateway(admin=ADMIN)
    alice = await chat_client(daemon.port, "alice")
    bob = await chat_client(daemon.port, "bob")
    obj = new_prefix()
    room_uuid = (await join(alice, obj))["Uuid"]
    await join(bob, obj)
    texts = [f"burst {i}" for i in range(45)]
    for text in texts:  # one reactor turn: the frames leave in one write
        post(alice, room_uuid, text)
    assert [m["Message"] for m in await messages(alice, 45)] == texts
    assert [m["Message"] for m in await messages(bob, 45)] == texts
    reader = await chat_client(daemon.port, "carol")
    reader.send_json({"@type": "HISTORY", "Room": {"Type": "GLOBAL", "RoomTypeObject": obj},
                      "Message": {"Message": '{"Offset":0,"Limit":100}'}})
    assert (await reader.next())["@type"] == "ROOM_UPDATE"
    assert [m["Message"] for m in await messages(reader, 45)] == texts
    samples = await scrape(daemon)
    assert value(samples, "wsgw_chat_frames_total", action="POST") == 45
    assert value(samples, "wsgw_chat_frames_refused_total") == 0


@pytest_twisted.ensureDeferred
async def test_a_socket_past_its_chat_queue_bound_is_told_and_closed_4029(gateway: StartGateway) -> None:
    """While the store does not answer (a private Redis, frozen), a socket's frames wait for the one in flight;
    past inbound_burst of them the socket gets an error frame naming the bound, is closed 4029, and /metrics
    counts it (the frames the limiter allowed but the store could not keep up with)."""
    with RedisServer() as redis:
        daemon = await gateway(redis=redis.endpoint, admin=ADMIN,
                               overrides={"websocket.inbound_burst": "10", "websocket.inbound_rate": "1000"})
        alice = await chat_client(daemon.port, "alice")
        room_uuid = (await join(alice, new_prefix()))["Uuid"]
        await settled(alice)
        chat = daemon.service.chat

        def waiting(count: int) -> Any:
            return wait_until(lambda: chat.queued_frames >= count or alice.closed.called, "the frames to wait")

        redis.freeze()
        try:
            post(alice, room_uuid, "stuck")  # in flight: the store does not answer
            for batch in (1, 2):  # inside the inbound limit: 6 frames, then 6 more once its bucket refilled
                for i in range(6):  # 12 in all: 10 wait, the 11th is past the bound
                    post(alice, room_uuid, f"waiting {batch}.{i}")
                await waiting(6 * batch)
            error = await answer(alice)
            assert error == {"@type": "error", "error": "POST: too many chat frames waiting for the previous ones "
                             "(at most 10 frames, 163840 bytes): slow down"}
            code, _ = await alice.wait_closed()
            assert code == 4029
        finally:
            redis.thaw()
        samples = await scrape(daemon)
        assert value(samples, "wsgw_chat_limits_refused_total", limit="queued_frames") == 1
        assert value(samples, "wsgw_server_closes_total", code="4029") == 1


# --------------------------------------------------------------------------- rooms (issue 11, Also)


@pytest_twisted.ensureDeferred
async def test_history_of_a_room_one_may_not_read_answers_as_for_a_missing_room(gateway: StartGateway) -> None:
    """HISTORY of a WORKSPACE room eve is not a member of gets the very answer a missing room gets, named by
    Uuid or by type and object, so it does not tell her whether the room exists; alice reads it."""
    daemon = await gateway()
    ws = new_prefix()
    alice = await chat_client(daemon.port, "alice", workspaces=[workspace(ws, "team", "ds/team")])
    room = await join(alice, ws, "WORKSPACE")
    eve = await chat_client(daemon.port, "eve")
    answers = []
    for named in ({"Uuid": room["Uuid"]}, {"Uuid": new_prefix()}, {"Type": "WORKSPACE", "RoomTypeObject": ws},
                  {"Type": "WORKSPACE", "RoomTypeObject": new_prefix()}):
        eve.send_json({"@type": "HISTORY", "Room": named, "Message": {"Message": ""}})
        answers.append(await eve.next())
    assert answers == [{"@type": "error", "error": "HISTORY: no such room"}] * 4
    alice.send_json({"@type": "HISTORY", "Room": {"Uuid": room["Uuid"]}, "Message": {"Message": ""}})
    assert (await alice.next())["Room"]["Uuid"] == room["Uuid"]


@pytest_twisted.ensureDeferred
async def test_room_labels_are_sanitized_like_messages(gateway: StartGateway) -> None:
    """The RoomLabel of the JOIN that creates a room is stored sanitized: HTML removed, Markdown and autolinks
    kept; the creator's ROOM_UPDATE and everyone's later ones carry the clean label."""
    daemon = await gateway()
    alice = await chat_client(daemon.port, "alice")
    obj = new_prefix()
    label = "Plan <script>alert(1)</script>for **Q3** <img src=x onerror=alert(1)><https://example.org/>"
    room = await join(alice, obj, "NODE", RoomLabel=label)
    assert room["RoomLabel"] == "Plan for **Q3** <https://example.org/>"
    bob = await chat_client(daemon.port, "bob")
    assert (await join(bob, obj, "NODE", RoomLabel="ignored: the room exists"))["RoomLabel"] == room["RoomLabel"]


@pytest_twisted.ensureDeferred
async def test_rooms_a_user_creates_are_bounded(gateway: StartGateway) -> None:
    """[chat] max_rooms_per_user = 2: alice creates two NODE/GLOBAL rooms, a third JOIN that would create one is
    refused with an error frame naming the bound (nothing created, socket open, counted in /metrics); joining a
    room bob created, and her own USER room, still work; a restarted instance on the same Redis keeps the count."""
    daemon = await gateway(admin=ADMIN, overrides={"chat.max_rooms_per_user": "2"})
    alice = await chat_client(daemon.port, "alice")
    bob = await chat_client(daemon.port, "bob")
    await join(alice, new_prefix(), "NODE")
    await join(alice, new_prefix(), "GLOBAL")
    third = new_prefix()
    alice.send_json({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": third}})
    assert await answer(alice) == {"@type": "error",
                                   "error": "JOIN: too many rooms created by this user (at most 2)"}
    bobs = new_prefix()
    await join(bob, bobs, "NODE")
    assert (await join(alice, bobs, "NODE"))["Users"] == ["alice", "bob"]
    await join(alice, "alice", "USER")
    samples = await scrape(daemon)
    assert value(samples, "wsgw_chat_limits_refused_total", limit="rooms_per_user") == 1
    carol = await chat_client(daemon.port, "carol")
    carol.send_json({"@type": "HISTORY", "Room": {"Type": "NODE", "RoomTypeObject": third}})
    assert await carol.next() == {"@type": "error", "error": "HISTORY: no such room"}  # never created
    again = await gateway(prefix=daemon.prefix, overrides={"chat.max_rooms_per_user": "2"})
    alice2 = await chat_client(again.port, "alice")
    alice2.send_json({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": third}})
    assert "too many rooms" in (await answer(alice2))["error"]
    assert not alice.closed.called


# --------------------------------------------------------------------------- what the chat holds (§4)


@pytest_twisted.ensureDeferred
async def test_broadcasts_held_while_a_socket_loads_a_room_are_all_kept_and_count_against_its_bound(
        gateway: StartGateway) -> None:
    """While bob's HISTORY of a joined room waits on the store, the room's broadcasts are held for him: all 1500
    arrive after the page, in order (before: those past 1000 were dropped silently). They count against his
    max_queued_bytes: with 1 MiB, 1500 more of 1000 characters close him 4008 (counted), and alice, who reads,
    gets them all and keeps her socket."""
    daemon = await gateway(redis=None, admin=ADMIN, overrides={"delivery.max_queued_bytes": "1048576"})
    alice = await chat_client(daemon.port, "alice")
    bob = await chat_client(daemon.port, "bob")
    obj = new_prefix()
    room_uuid = (await join(alice, obj))["Uuid"]
    await join(bob, obj)
    store = daemon.service.chat._actions._store
    pending: list[Any] = []

    def stalled_page(*args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append(d)
        return d

    store.page = stalled_page
    bob.send_json({"@type": "HISTORY", "Room": {"Uuid": room_uuid}, "Message": {"Message": ""}})
    await wait_until(lambda: pending != [], "the HISTORY's store call")

    def publish(count: int, tag: str, pad: str = "") -> None:
        for i in range(count):
            daemon.service.bus.publish("chat", json.dumps({"Message": {
                "Uuid": f"{tag}{i}", "RoomUuid": room_uuid, "Message": f"{tag}{i}{pad}", "Author": "svc"}}).encode())

    publish(1500, "m")
    assert [m["Message"] for m in await messages(alice, 1500)] == [f"m{i}" for i in range(1500)]
    assert bob.frames.pending == [] or all(f.get("@type") == "ROOM_UPDATE" for f in bob.frames.pending)
    del store.page
    pending.pop().callback([])
    assert [m["Message"] for m in await messages(bob, 1500)] == [f"m{i}" for i in range(1500)]

    store.page = stalled_page
    bob.send_json({"@type": "HISTORY", "Room": {"Uuid": room_uuid}, "Message": {"Message": ""}})
    await wait_until(lambda: pending != [], "the second HISTORY's store call")
    publish(1500, "n", "x" * 1000)  # ~1.6 MB in all: past 1 MiB
    code, _ = await bob.wait_closed()
    assert code == 4008
    assert [m["Message"] for m in await messages(alice, 1500)] == [f"n{i}" + "x" * 1000 for i in range(1500)]
    samples = await scrape(daemon)
    assert value(samples, "wsgw_server_closes_total", code="4008") == 1
    del store.page
    pending.pop().callback([])


@pytest_twisted.ensureDeferred
async def test_store_calls_in_flight_are_bounded_with_a_busy_answer(gateway: StartGateway) -> None:
    """[chat] max_store_calls = 2 and the store frozen (a private Redis): once two calls are in flight, bob's
    POST is answered at once 'the chat store is busy, try again later' and changes nothing; /metrics counts it
    and shows the calls in flight. When Redis answers again, alice's post arrives and bob's retry works."""
    with RedisServer() as redis:
        daemon = await gateway(redis=redis.endpoint, admin=ADMIN, overrides={"chat.max_store_calls": "2"})
        chat = daemon.service.chat
        alice = await chat_client(daemon.port, "alice")
        bob = await chat_client(daemon.port, "bob")
        obj = new_prefix()
        room_uuid = (await join(alice, obj))["Uuid"]
        await join(bob, obj)
        for client in (alice, bob):  # answered in turn: the JOIN is done, its publish included
            await settled(client)
        redis.freeze()
        try:
            post(alice, room_uuid, "from alice")
            await wait_until(lambda: chat.store_calls[0] == 2, "two store calls in flight (the sweep's within 1 s)")
            post(bob, room_uuid, "from bob")
            assert await answer(bob) == {"@type": "error", "error": "POST: the chat store is busy, try again later"}
            samples = await scrape(daemon)
            assert value(samples, "wsgw_chat_limits_refused_total", limit="store_busy") == 1
            assert value(samples, "wsgw_chat_store_calls_in_flight") == 2
            assert value(samples, "wsgw_chat_store_calls_refused_total") >= 1
        finally:
            redis.thaw()
        assert [m["Message"] for m in await messages(bob, 1)] == ["from alice"]
        post(bob, room_uuid, "from bob")
        assert [m["Message"] for m in await messages(bob, 1)] == ["from bob"]
        assert [m["Message"] for m in await messages(alice, 2)] == ["from alice", "from bob"]


@pytest_twisted.ensureDeferred
async def test_edits_per_message_are_bounded(gateway: StartGateway) -> None:
    """[chat] max_edits_per_message = 2: alice edits her message twice (each broadcast, the old texts in
    Activity.items); a third edit gets an error frame naming the bound, changes nothing, and is counted."""
    daemon = await gateway(admin=ADMIN, overrides={"chat.max_edits_per_message": "2"})
    alice = await chat_client(daemon.port, "alice")
    room_uuid = (await join(alice, new_prefix()))["Uuid"]
    post(alice, room_uuid, "v0")
    [message] = await messages(alice, 1)
    for text in ("v1", "v2"):
        alice.send_json({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Uuid": message["Uuid"], "Message": text}})
        [edited] = await messages(alice, 1)
        assert edited["Message"] == text
    assert [item["markdown"] for item in edited["Activity"]["items"]] == ["v0", "v1"]
    alice.send_json({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Uuid": message["Uuid"], "Message": "v3"}})
    assert await answer(alice) == {"@type": "error",
                                   "error": "POST: this message was edited too many times (at most 2 edits)"}
    alice.send_json({"@type": "HISTORY", "Room": {"Uuid": room_uuid}, "Message": {"Message": ""}})
    assert (await messages(alice, 1)) == [edited]
    samples = await scrape(daemon)
    assert value(samples, "wsgw_chat_limits_refused_total", limit="edits_per_message") == 1


@pytest_twisted.ensureDeferred
async def test_a_history_page_is_bounded_and_says_there_is_more(gateway: StartGateway) -> None:
    """[chat] max_history_page = 5, 8 messages stored: HISTORY without a Limit, or with Limit 100, answers the
    newest 5 then MAY_HAVE_MORE with the next Offset and Limit 5 (counted); following it reads the rest; a Limit
    within the bound is served as asked (not counted)."""
    daemon = await gateway(admin=ADMIN, overrides={"chat.max_history_page": "5"})
    alice = await chat_client(daemon.port, "alice")
    room_uuid = (await join(alice, new_prefix()))["Uuid"]
    texts = [f"m{i}" for i in range(8)]
    for text in texts:
        post(alice, room_uuid, text)
    await messages(alice, 8)
    await settled(alice)

    async def page(paging: str) -> list[Frame]:
        """The answer to a HISTORY: every frame after its ROOM_UPDATE, up to the next frame of the socket."""
        alice.send_json({"@type": "HISTORY", "Room": {"Uuid": room_uuid}, "Message": {"Message": paging}})
        alice.send_json({"@type": "SETTLED?"})
        assert (await alice.next())["@type"] == "ROOM_UPDATE"
        got: list[Frame] = []
        while (frame := await alice.next()).get("@type") != "error":
            got.append(frame)
        return got

    def more(offset: int, limit: int) -> Frame:
        return {"@type": "MAY_HAVE_MORE", "RoomUuid": room_uuid, "Offset": offset, "Limit": limit}

    def texts_of(frames: list[Frame]) -> list[str]:
        return [f["Message"] for f in frames if "@type" not in f]

    for paging in ("", '{"Offset":0,"Limit":100}'):
        got = await page(paging)
        assert texts_of(got) == texts[3:]
        assert {k: v for k, v in got[-1].items() if k != "Timestamp"} == more(5, 5)
    got = await page('{"Offset":5,"Limit":5}')
    assert texts_of(got) == texts[:3] and len(got) == 3
    got = await page('{"Offset":0,"Limit":4}')
    assert texts_of(got) == texts[4:] and got[-1]["Limit"] == 4
    samples = await scrape(daemon)
    assert value(samples, "wsgw_chat_limits_refused_total", limit="history_page") == 2


@pytest.mark.parametrize("redis", ["redis", "embedded"])
@pytest_twisted.ensureDeferred
async def test_the_history_cap_holds_in_both_stores(redis: str, gateway: StartGateway) -> None:
    """[chat] history_cap = 3 keeps the 3 newest messages of a room, in Redis and in the embedded store."""
    daemon = await gateway(overrides={"chat.history_cap": "3"}, **({} if redis == "redis" else {"redis": None}))
    alice = await chat_client(daemon.port, "alice")
    room_uuid = (await join(alice, new_prefix()))["Uuid"]
    for i in range(6):
        post(alice, room_uuid, f"m{i}")
    await messages(alice, 6)
    alice.send_json({"@type": "HISTORY", "Room": {"Uuid": room_uuid}, "Message": {"Message": ""}})
    assert [m["Message"] for m in await messages(alice, 3)] == ["m3", "m4", "m5"]
    await settled(alice)


@pytest_twisted.ensureDeferred
async def test_rooms_joined_on_one_socket_are_bounded(gateway: StartGateway) -> None:
    """[chat] max_rooms_per_socket = 3: a fourth JOIN on the socket is refused with an error frame naming the bound
    (it creates nothing, counted); a PING or a JOIN of a room already joined still works; after a LEAVE the JOIN
    works; another socket of the same login has its own count."""
    daemon = await gateway(admin=ADMIN, overrides={"chat.max_rooms_per_socket": "3"})
    alice = await chat_client(daemon.port, "alice")
    objs = [new_prefix() for _ in range(4)]
    rooms = [await join(alice, obj) for obj in objs[:3]]
    alice.send_json({"@type": "JOIN", "Room": {"Type": "GLOBAL", "RoomTypeObject": objs[3]}})
    assert await answer(alice) == {"@type": "error", "error": "JOIN: too many rooms joined on this socket (at most "
                                                              "3): LEAVE one first"}
    await join(alice, objs[0])
    alice.send_json({"@type": "JOIN", "Room": {"Type": "GLOBAL", "RoomTypeObject": objs[1]},
                     "Message": {"Message": "PING"}})
    await settled(alice)
    other = await chat_client(daemon.port, "alice")
    other.send_json({"@type": "HISTORY", "Room": {"Type": "GLOBAL", "RoomTypeObject": objs[3]}})
    assert await answer(other) == {"@type": "error", "error": "HISTORY: no such room"}  # the refused JOIN made none
    assert (await join(other, objs[3]))["Users"] == ["alice"]
    alice.send_json({"@type": "LEAVE", "Room": {"Uuid": rooms[2]["Uuid"]}})
    assert (await join(alice, objs[3]))["Uuid"] != rooms[2]["Uuid"]
    samples = await scrape(daemon)
    assert value(samples, "wsgw_chat_limits_refused_total", limit="rooms_per_socket") == 1


@pytest_twisted.ensureDeferred
async def test_a_history_answer_is_bounded_in_bytes_so_it_never_closes_a_prompt_reader(gateway: StartGateway) -> None:
    """With max_queued_bytes = 64 KiB a HISTORY answer holds at most 16 KiB of messages: 12 messages of 3000
    characters are answered 5 at a time, newest first, each page ending with MAY_HAVE_MORE at the next Offset;
    following them reads every message once, the reader is never closed 4008, and each cut is counted."""
    daemon = await gateway(admin=ADMIN, overrides={"delivery.max_queued_bytes": "65536"})
    alice = await chat_client(daemon.port, "alice")
    room_uuid = (await join(alice, new_prefix()))["Uuid"]
    texts = [f"{i:02d}" + "x" * 2998 for i in range(12)]
    for text in texts:
        post(alice, room_uuid, text)
    await messages(alice, 12)
    await settled(alice)
    read: list[str] = []
    offsets = []
    offset: int | None = 0
    while offset is not None:
        alice.send_json({"@type": "HISTORY", "Room": {"Uuid": room_uuid},
                         "Message": {"Message": json.dumps({"Offset": offset, "Limit": 0})}})
        alice.send_json({"@type": "SETTLED?"})
        assert (await alice.next())["@type"] == "ROOM_UPDATE"
        page: list[str] = []
        offset = None
        while (frame := await alice.next()).get("@type") != "error":
            if frame.get("@type") == "MAY_HAVE_MORE":
                offset = frame["Offset"]
                offsets.append(offset)
            else:
                page.append(frame["Message"])
        assert sum(len(t) for t in page) <= 16384
        read = page + read
    assert read == texts and offsets == [5, 10]
    assert not alice.closed.called
    samples = await scrape(daemon)
    assert value(samples, "wsgw_chat_limits_refused_total", limit="history_bytes") == 2
