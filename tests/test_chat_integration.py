"""End to end chat (PROTOCOL.md §5): real gateway daemons on loopback, the real Redis, real WebSocket clients.

Every daemon's chat store writes under the store's fixed key prefix (``wsgw:chat:``,
not configurable yet), so each test names its rooms with fresh ``RoomTypeObject``
values and removes the rooms it made from Redis when it ends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any, cast

import pytest
import pytest_twisted
import txredisapi
from twisted.internet.interfaces import ITCPTransport

from tests.support.daemon import Daemon, Publisher, new_prefix, start_daemon, token, workspace
from tests.support.wsclient import Client, connect

STORE_PREFIX = "wsgw:chat:"  # the default [chat] key_prefix, shared on purpose: these tests clean up their rooms
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

Frame = dict[str, Any]


# --------------------------------------------------------------------------- helpers


async def chat_daemon(prefix: str) -> Daemon:
    """A daemon on the real Redis whose bus and chat-store connections are all ready."""
    daemon = await start_daemon(prefix, overrides={"chat.key_prefix": STORE_PREFIX})
    await daemon.service.bus.whenConnected()
    # start_daemon waits for the bus subscriber only; the chat store has its own command connection
    commands = daemon.service.redis_commands
    if commands is not None:
        await commands.whenConnected()
    return daemon


async def chat_client(daemon: Daemon, login: str, path: str = "/chat", **claims: Any) -> Client:
    """A subscribed chat socket for ``login``."""
    client = await connect(daemon.port, path)
    workspaces = claims.pop("workspaces", None)
    answer = await client.subscribe(token(login, workspaces, **claims))
    assert answer == {"@type": "subscribed", "user": login, "exp": answer["exp"]}
    return client


def spec(obj: str, type_: str = "GLOBAL", **extra: Any) -> Frame:
    return {"Type": type_, "RoomTypeObject": obj, **extra}


def join(client: Client, room: Frame) -> None:
    client.send_json({"@type": "JOIN", "Room": room})


def post(client: Client, room_uuid: str, text: str, edit: str | None = None) -> None:
    message: Frame = {"RoomUuid": room_uuid, "Message": text}
    if edit is not None:
        message["Uuid"] = edit
    client.send_json({"@type": "POST", "Message": message})


def history(client: Client, room: Frame, offset: int | None = None, limit: int | None = None) -> None:
    paging = "" if offset is None else json.dumps({"Offset": offset, "Limit": limit})
    client.send_json({"@type": "HISTORY", "Room": room, "Message": {"Message": paging}})


def is_update(frame: Frame) -> bool:
    return frame.get("@type") == "ROOM_UPDATE"


def is_message(frame: Frame) -> bool:
    return "@type" not in frame and "RoomUuid" in frame


def update_with(users: list[str], room_uuid: str | None = None) -> Callable[[Frame], bool]:
    return lambda f: is_update(f) and f["Room"]["Users"] == users and room_uuid in (None, f["Room"]["Uuid"])


def message_with(**fields: Any) -> Callable[[Frame], bool]:
    return lambda f: is_message(f) and all(f.get(k) == v for k, v in fields.items())


def is_error(frame: Frame) -> bool:
    return frame.get("@type") == "error"


async def expect(client: Client, wanted: Callable[[Frame], bool], what: str,
                 skip: Callable[[Frame], bool] = is_update, limit: int = 100) -> Frame:
    """The next frame ``wanted`` accepts, passing over frames ``skip`` accepts (room updates by
    default); any other frame fails the test, and each wait is bounded by the client's timeout."""
    for _ in range(limit):
        frame: Frame = await client.next()
        if wanted(frame):
            return frame
        if not skip(frame):
            raise AssertionError(f"waiting for {what}, got {frame!r}")
    raise AssertionError(f"waiting for {what}: {limit} frames passed over")


async def joined(client: Client, room: Frame, users: list[str]) -> Frame:
    """JOIN ``room``: the first frame about it is its ROOM_UPDATE (with ``users`` present); returns that room.

    Room updates of other rooms still in flight to the socket are passed over; any other frame fails."""
    join(client, room)
    key = (room.get("Type") or "GLOBAL", room.get("RoomTypeObject", ""))
    for _ in range(100):
        frame: Frame = await client.next()
        if is_update(frame) and (frame["Room"]["Type"], frame["Room"]["RoomTypeObject"]) != key:
            continue
        assert is_update(frame), f"the first frame after JOIN is not a ROOM_UPDATE: {frame!r}"
        assert frame["Room"]["Users"] == users
        return frame["Room"]  # type: ignore[no-any-return]
    raise AssertionError(f"no ROOM_UPDATE of {key} after JOIN")


async def posted(client: Client, room_uuid: str, text: str) -> Frame:
    """POST ``text`` and return the stored message as broadcast back to its author."""
    post(client, room_uuid, text)
    return await expect(client, message_with(RoomUuid=room_uuid), f"the echo of {text[:40]!r}")


async def forget_rooms(specs: Iterable[tuple[str, str]]) -> None:
    """Delete the rooms ``(Type, RoomTypeObject)`` and their messages from the shared Redis."""
    conn = await txredisapi.Connection("127.0.0.1", 6379, reconnect=False)
    try:
        for type_, obj in specs:
            field = f"{type_}:{obj}"
            room_uuid = await conn.hget(STORE_PREFIX + "index", field)
            if room_uuid:
                await conn.delete([f"{STORE_PREFIX}{kind}:{room_uuid}" for kind in ("room", "users", "order", "msgs")])
            await conn.hdel(STORE_PREFIX + "index", field)
    finally:
        await conn.disconnect()


async def indexed_uuid(type_: str, obj: str) -> str | None:
    conn = await txredisapi.Connection("127.0.0.1", 6379, reconnect=False)
    try:
        return await conn.hget(STORE_PREFIX + "index", f"{type_}:{obj}")  # type: ignore[no-any-return]
    finally:
        await conn.disconnect()


async def stop_all(*daemons: Daemon) -> None:
    for daemon in daemons:
        await daemon.stop()


# --------------------------------------------------------------------------- 1. a full conversation


@pytest_twisted.ensureDeferred
async def test_full_conversation() -> None:
    """Two users join, get ROOM_UPDATE then history, post, edit, delete, page the history and leave."""
    obj = new_prefix()
    room_spec = spec(obj, RoomLabel="Lobby")
    daemon = await chat_daemon(new_prefix())
    try:
        alice = await chat_client(daemon, "alice", "/chat")
        bob = await chat_client(daemon, "bob", "/ws/chat")

        room = await joined(alice, room_spec, ["alice"])
        room_uuid = room["Uuid"]
        assert room["Uuid"] and room["Type"] == "GLOBAL" and room["RoomTypeObject"] == obj
        assert room["RoomLabel"] == "Lobby"

        m1 = await posted(alice, room_uuid, "hello")
        m2 = await posted(alice, room_uuid, "<script>alert(1)</script>**hi** & <i>you</i>")
        m3 = await posted(alice, room_uuid, "third")
        assert m2["Message"] == "**hi** & you"  # HTML gone, Markdown kept
        for m in (m1, m2, m3):
            assert m["Uuid"] and m["RoomUuid"] == room_uuid and m["Timestamp"].isdigit()
        assert len({m1["Uuid"], m2["Uuid"], m3["Uuid"]}) == 3

        # bob joins: ROOM_UPDATE listing both, then the history oldest first, then no MAY_HAVE_MORE
        await joined(bob, room_spec, ["alice", "bob"])
        assert [await bob.next() for _ in range(3)] == [m1, m2, m3]
        assert is_update(await bob.next())  # the JOIN's broadcast: no MAY_HAVE_MORE before it
        await expect(alice, update_with(["alice", "bob"], room_uuid), "alice sees bob arrive")

        # edit: the text changes, the timestamp stays, the old text goes to Activity.items
        post(alice, room_uuid, "hello, edited", edit=m1["Uuid"])
        for client in (alice, bob):
            edited = await expect(client, message_with(Uuid=m1["Uuid"]), "the edit")
            assert edited["Message"] == "hello, edited" and edited["Timestamp"] == m1["Timestamp"]
            [item] = edited["Activity"]["items"]
            assert item["markdown"] == "hello" and RFC3339.match(item["updated"])

        # delete: broadcast as DELETE_MSG
        alice.send_json({"@type": "DELETE_MSG", "Message": {"Uuid": m2["Uuid"], "RoomUuid": room_uuid}})
        for client in (alice, bob):
            deleted = await expect(client, lambda f: f.get("@type") == "DELETE_MSG", "the delete")
            assert deleted["Message"]["Uuid"] == m2["Uuid"] and deleted["Message"]["RoomUuid"] == room_uuid

        m4 = await posted(bob, room_uuid, "bob here")
        await expect(alice, message_with(Uuid=m4["Uuid"]), "bob's post")
        # history is now m1 (edited), m3, m4

        history(bob, room_spec, 0, 2)
        page = [await bob.next() for _ in range(4)]
        assert is_update(page[0]) and page[0]["Room"]["Uuid"] == room_uuid
        assert [m["Uuid"] for m in page[1:3]] == [m3["Uuid"], m4["Uuid"]]
        assert page[3] == {"@type": "MAY_HAVE_MORE", "RoomUuid": room_uuid, "Timestamp": int(m3["Timestamp"]),
                           "Offset": 2, "Limit": 2}
        history(bob, {"Uuid": room_uuid}, 2, 2)
        rest = [await bob.next() for _ in range(2)]
        assert is_update(rest[0])
        assert rest[1]["Uuid"] == m1["Uuid"] and rest[1]["Message"] == "hello, edited"
        history(bob, room_spec, 3, 2)  # past the end: the room only, and no MAY_HAVE_MORE for the short page above
        assert is_update(await bob.next())
        history(bob, room_spec)  # no paging: the whole history
        assert is_update(await bob.next())
        assert [(await bob.next())["Uuid"] for _ in range(3)] == [m1["Uuid"], m3["Uuid"], m4["Uuid"]]

        # leave: alice sees bob gone, and bob no longer receives the room's messages
        bob.send_json({"@type": "LEAVE", "Room": room_spec})
        left = await expect(alice, update_with(["alice"], room_uuid), "bob leaving")
        assert left["Room"]["RoomTypeObject"] == obj
        m5 = await posted(alice, room_uuid, "bye")
        # alice has m5, so the server already broadcast it; bob's next frame is his HISTORY reply, not m5
        history(bob, room_spec, 0, 1)
        answer = [await bob.next() for _ in range(2)]
        assert is_update(answer[0]) and answer[1]["Uuid"] == m5["Uuid"]
    finally:
        await daemon.stop()
        await forget_rooms([("GLOBAL", obj)])


# --------------------------------------------------------------------------- 2. two instances


@pytest_twisted.ensureDeferred
async def test_a_post_on_one_instance_reaches_a_socket_on_the_other() -> None:
    """Sockets on two daemons share one room: presence, and each post reaches both sockets once."""
    obj = new_prefix()
    prefix = new_prefix()
    one = await chat_daemon(prefix)
    two = await chat_daemon(prefix)
    try:
        alice = await chat_client(one, "alice")
        bob = await chat_client(two, "bob", "/ws/chat")
        room = await joined(alice, spec(obj), ["alice"])
        room_uuid = room["Uuid"]
        assert (await joined(bob, spec(obj), ["alice", "bob"]))["Uuid"] == room_uuid
        await expect(alice, update_with(["alice", "bob"], room_uuid), "bob's presence from the other instance")

        m1 = await posted(alice, room_uuid, "from one")
        assert await expect(bob, is_message, "alice's post on the other instance") == m1
        m2 = await posted(bob, room_uuid, "from two")
        # the strict expect fails on any other message: no duplicate of m1 came in between
        assert await expect(alice, is_message, "bob's post on the other instance") == m2
    finally:
        await stop_all(one, two)
        await forget_rooms([("GLOBAL", obj)])


@pytest_twisted.ensureDeferred
async def test_a_join_during_a_burst_of_posts_gets_the_room_first_and_loses_nothing() -> None:
    """Bob joins on one daemon while alice posts a burst on the other: his first frame about the room is its
    ROOM_UPDATE and every message reaches him (from the history or the broadcast; the client de-duplicates)."""
    obj = new_prefix()
    prefix = new_prefix()
    one = await chat_daemon(prefix)
    two = await chat_daemon(prefix)
    try:
        alice = await chat_client(one, "alice")
        bob = await chat_client(two, "bob")
        room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
        for i in range(30):
            post(alice, room_uuid, f"burst {i}")
        join(bob, spec(obj))
        sent = [(await expect(alice, is_message, "an echo"))["Uuid"] for _ in range(30)]
        first = await bob.next()
        assert is_update(first) and first["Room"]["Uuid"] == room_uuid
        seen: list[str] = []
        while len(seen) < len(sent):  # bounded by next(): a lost message times out
            frame = await expect(bob, is_message, "the burst")
            assert frame["Uuid"] in sent
            if frame["Uuid"] not in seen:
                seen.append(frame["Uuid"])
        assert seen == sent  # first seen in the order posted
    finally:
        await stop_all(one, two)
        await forget_rooms([("GLOBAL", obj)])


@pytest_twisted.ensureDeferred
async def test_a_ping_from_a_new_socket_reattaches_the_room() -> None:
    """After a reconnect, JOIN with PING re-attaches an existing room (ROOM_UPDATE, no history) and the socket
    receives its messages again; a PING for a room that does not exist is refused and creates nothing."""
    obj, missing = new_prefix(), new_prefix()
    daemon = await chat_daemon(new_prefix())
    try:
        alice = await chat_client(daemon, "alice")
        bob = await chat_client(daemon, "bob")
        room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
        await posted(alice, room_uuid, "before the reconnect")

        bob.send_json({"@type": "JOIN", "Room": spec(missing), "Message": {"Message": "PING"}})
        refused = await expect(bob, is_error, "the refused PING")
        assert "PING" in refused["error"] and "does not exist" in refused["error"]
        assert await indexed_uuid("GLOBAL", missing) is None

        bob.send_json({"@type": "JOIN", "Room": spec(obj), "Message": {"Message": "PING"}})
        first = await bob.next()
        assert is_update(first) and first["Room"]["Users"] == ["alice", "bob"]
        m = await posted(alice, room_uuid, "after the reconnect")
        # no history was sent on PING: the next message bob gets is the new one
        assert await expect(bob, is_message, "the new message") == m
    finally:
        await daemon.stop()
        await forget_rooms([("GLOBAL", obj), ("GLOBAL", missing)])


# --------------------------------------------------------------------------- 3. restart


@pytest_twisted.ensureDeferred
async def test_history_survives_a_restart() -> None:
    """After the daemon stops and a new one starts on the same Redis, a JOIN gets the same room and its history."""
    obj = new_prefix()
    prefix = new_prefix()
    first = await chat_daemon(prefix)
    second: Daemon | None = None
    try:
        alice = await chat_client(first, "alice")
        room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
        sent = [await posted(alice, room_uuid, f"message {i}") for i in range(41)]
        await first.stop()
        assert await alice.wait_closed() == (1000, "server shutting down")

        second = await chat_daemon(prefix)
        bob = await chat_client(second, "bob")
        room = await joined(bob, spec(obj), ["bob"])  # alice's presence went with her socket
        assert room["Uuid"] == room_uuid
        # the newest page of 40, oldest first, then MAY_HAVE_MORE
        assert [await bob.next() for _ in range(40)] == sent[1:]
        assert await bob.next() == {"@type": "MAY_HAVE_MORE", "RoomUuid": room_uuid,
                                    "Timestamp": int(sent[1]["Timestamp"]), "Offset": 40, "Limit": 40}
        assert is_update(await bob.next())  # the JOIN's broadcast
        history(bob, spec(obj), 40, 40)
        assert is_update(await bob.next())
        assert await bob.next() == sent[0]
    finally:
        await stop_all(first, *([second] if second else []))
        await forget_rooms([("GLOBAL", obj)])


# --------------------------------------------------------------------------- 4. concurrent creation


@pytest_twisted.ensureDeferred
async def test_concurrent_joins_on_two_instances_make_one_room() -> None:
    """JOINs of new rooms sent at once from sockets on two daemons end with one room each (same Uuid)."""
    objs = [new_prefix() for _ in range(8)]
    prefix = new_prefix()
    one = await chat_daemon(prefix)
    two = await chat_daemon(prefix)
    try:
        alice = await chat_client(one, "alice")
        bob = await chat_client(two, "bob")
        for obj in objs:
            join(alice, spec(obj))
            join(bob, spec(obj))
        uuids: dict[str, set[str]] = {obj: set() for obj in objs}
        for client in (alice, bob):
            complete: set[str] = set()
            while complete != set(objs):  # until both logins show in every room (bounded by next())
                frame = await client.next()
                assert is_update(frame), f"unexpected frame {frame!r}"
                room = frame["Room"]
                uuids[room["RoomTypeObject"]].add(room["Uuid"])
                if room["Users"] == ["alice", "bob"]:
                    complete.add(room["RoomTypeObject"])
        for obj in objs:
            assert len(uuids[obj]) == 1, f"room {obj} was created more than once: {uuids[obj]}"
            assert await indexed_uuid("GLOBAL", obj) in uuids[obj]
        assert len(set.union(*uuids.values())) == len(objs)
    finally:
        await stop_all(one, two)
        await forget_rooms([("GLOBAL", obj) for obj in objs])


# --------------------------------------------------------------------------- 5. refusals


@pytest_twisted.ensureDeferred
async def test_refused_frames_get_an_error_and_keep_the_socket() -> None:
    """Each refused chat frame is answered with an error naming the problem, changes nothing, and the
    same socket then succeeds at its next action."""
    obj, other_obj, ws_uuid = new_prefix(), new_prefix(), new_prefix()
    alice_login, guest_login = f"alice-{new_prefix()}", f"guest-{new_prefix()}"  # fresh USER rooms
    daemon = await chat_daemon(new_prefix())
    try:
        early = await connect(daemon.port, "/chat")
        early.send_json({"@type": "JOIN", "Room": spec(obj)})
        assert "not subscribed" in (await expect(early, is_error, "a refusal before subscribe"))["error"]
        team = workspace(ws_uuid, "team", "ds/team")
        alice = await chat_client(daemon, alice_login, workspaces=[team])
        bob = await chat_client(daemon, "bob", "/ws/chat")
        guest = await chat_client(daemon, guest_login, profile="anon")

        room_uuid = (await joined(alice, spec(obj), [alice_login]))["Uuid"]
        other_uuid = (await joined(alice, spec(other_obj), [alice_login]))["Uuid"]
        original = await posted(alice, room_uuid, "alice's words")

        async def refused(client: Client, frame: Frame, *words: str) -> None:
            client.send_json(frame)
            answer = await expect(client, is_error, f"an error for {frame!r}")
            for word in words:
                assert word in answer["error"], f"{answer['error']!r} does not name {word!r}"

        # JOIN refusals, each followed by a successful JOIN
        await refused(bob, {"@type": "JOIN", "Room": spec(ws_uuid, "WORKSPACE")}, "JOIN", "WORKSPACE")
        await joined(bob, spec(obj), [alice_login, "bob"])
        assert await bob.next() == original  # the history on join
        await refused(guest, {"@type": "JOIN", "Room": spec(obj)}, "JOIN", "GLOBAL")
        await joined(guest, spec(guest_login, "USER"), [guest_login])

        long_text = "x" * 8001
        cases: list[tuple[Frame, tuple[str, ...]]] = [
            ({"@type": "JOIN", "Room": spec(alice_login, "USER")}, ("JOIN", "USER")),
            ({"@type": "POST", "Message": {"RoomUuid": other_uuid, "Message": "hi"}}, ("POST", "not joined")),
            ({"@type": "POST", "Message": {"Message": "hi"}}, ("POST", "missing")),
            ({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Uuid": original["Uuid"], "Message": "mine now"}},
             ("POST", "someone else")),
            ({"@type": "DELETE_MSG", "Message": {"RoomUuid": room_uuid, "Uuid": original["Uuid"]}},
             ("DELETE_MSG", "someone else")),
            ({"@type": "SHOUT", "Room": spec(obj)}, ("unknown @type", "SHOUT")),
            ({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Message": long_text}}, ("POST", "too long")),
        ]
        for i, (frame, words) in enumerate(cases):
            await refused(bob, frame, *words)
            ok = await posted(bob, room_uuid, f"still here {i}")
            assert ok["Message"] == f"still here {i}"
        assert not bob.closed.called and not guest.closed.called
        assert (await early.subscribe(token("early")))["@type"] == "subscribed"
        await joined(early, spec(obj), [alice_login, "bob", "early"])

        # nothing changed: alice's message is intact, no refused post was stored, no room was created
        carol = await chat_client(daemon, "carol")
        history(carol, spec(other_obj))
        assert (await carol.next())["Room"]["Uuid"] == other_uuid
        history(carol, spec(obj))  # the other room's reply was the room alone: this one's comes next
        assert (await carol.next())["Room"]["Uuid"] == room_uuid
        stored = [await carol.next() for _ in range(len(cases) + 1)]
        assert stored[0] == original
        assert [m["Message"] for m in stored[1:]] == [f"still here {i}" for i in range(len(cases))]
        assert await indexed_uuid("WORKSPACE", ws_uuid) is None
        assert await indexed_uuid("USER", alice_login) is None
    finally:
        await daemon.stop()
        await forget_rooms([("GLOBAL", obj), ("GLOBAL", other_obj), ("USER", guest_login)])


# --------------------------------------------------------------------------- 6. presence


@pytest.mark.parametrize("how", ["close", "drop"])
@pytest_twisted.ensureDeferred
async def test_presence_ends_when_the_logins_only_socket_goes(how: str) -> None:
    """When alice's only socket closes (cleanly or by a dropped connection), bob gets a ROOM_UPDATE without her."""
    obj = new_prefix()
    daemon = await chat_daemon(new_prefix())
    try:
        alice = await chat_client(daemon, "alice")
        bob = await chat_client(daemon, "bob")
        room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
        await joined(bob, spec(obj), ["alice", "bob"])
        if how == "close":
            alice.sendClose(1000)
        else:
            cast(ITCPTransport, alice.transport).abortConnection()  # no close frame: the TCP connection drops
        gone = await expect(bob, update_with(["bob"], room_uuid), "alice's presence going")
        assert gone["Room"]["RoomTypeObject"] == obj
    finally:
        await daemon.stop()
        await forget_rooms([("GLOBAL", obj)])


@pytest_twisted.ensureDeferred
async def test_presence_ends_when_the_instance_of_the_logins_socket_shuts_down() -> None:
    """When the daemon holding alice's only socket shuts down, bob on another daemon gets a ROOM_UPDATE without her."""
    obj = new_prefix()
    prefix = new_prefix()
    one = await chat_daemon(prefix)
    two = await chat_daemon(prefix)
    try:
        alice = await chat_client(one, "alice")
        bob = await chat_client(two, "bob")
        room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
        await joined(bob, spec(obj), ["alice", "bob"])
        await one.stop()
        assert await alice.wait_closed() == (1000, "server shutting down")
        await expect(bob, update_with(["bob"], room_uuid), "alice's presence going with her instance")
    finally:
        await stop_all(one, two)
        await forget_rooms([("GLOBAL", obj)])


# --------------------------------------------------------------------------- 7. events of other services


@pytest_twisted.ensureDeferred
async def test_chat_events_published_by_another_service_reach_the_room() -> None:
    """Message, delete and room events published on the chat topic reach the room's sockets on every
    instance; events of other rooms and malformed events reach nobody."""
    obj = new_prefix()
    prefix = new_prefix()
    one = await chat_daemon(prefix)
    two = await chat_daemon(prefix)
    pub = Publisher(prefix)
    try:
        alice = await chat_client(one, "alice")
        bob = await chat_client(two, "bob")
        room = await joined(alice, spec(obj), ["alice"])
        room_uuid = room["Uuid"]
        await joined(bob, spec(obj), ["alice", "bob"])
        await expect(alice, update_with(["alice", "bob"], room_uuid), "bob's arrival")
        await expect(bob, update_with(["alice", "bob"], room_uuid), "bob's own broadcast")

        message = {"Uuid": "bot-1", "RoomUuid": room_uuid, "Message": "build passed", "Author": "ci-bot",
                   "Timestamp": "1718022000"}
        await pub.publish("chat", {"Message": {**message, "Uuid": "bot-0", "RoomUuid": "another-room"}})
        await pub.publish("chat", {"Message": {"RoomUuid": 42}})
        await pub.publish("chat", {"Message": message})
        await pub.publish("chat", {"Message": message, "Details": "DELETE"})
        await pub.publish("chat", {"Room": {**room, "RoomLabel": "Renamed", "Users": ["alice", "bob"]}})
        for client in (alice, bob):
            # strict: the other room's message would fail here, it is not a room update
            assert await expect(client, is_message, "the published message") == message
            assert await client.next() == {"@type": "DELETE_MSG", "Message": message}
            renamed = await client.next()
            assert is_update(renamed) and renamed["Room"]["RoomLabel"] == "Renamed"
        assert one.service.dispatcher.malformed["chat"] == 1
        assert two.service.dispatcher.malformed["chat"] == 1
    finally:
        await pub.close()
        await stop_all(one, two)
        await forget_rooms([("GLOBAL", obj)])
