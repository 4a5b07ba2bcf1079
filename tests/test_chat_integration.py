"""End to end chat (PROTOCOL.md §5): real gateway daemons on loopback, the real Redis (the embedded bus where
a test says so), real WebSocket clients.

Each test's daemons keep their chat store under their own key prefix (``<prefix>:chat:``, set by the
``gateway`` fixture), so no test sees another's rooms; two instances of one deployment share a prefix.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.interfaces import ITCPTransport

from tests.support.daemon import Daemon, StartGateway, new_prefix, scrape, token, value, workspace
from tests.support.redis_server import free_port, shared_address
from tests.support.twistd import Twistd, spawn_instance
from tests.support.waiting import eventually
from tests.support.wsclient import TIMEOUT, Client, connect

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
PRESENCE_TIMEOUT = 3.0  # [chat] presence_timeout of the instances the presence tests kill
REAP_BOUND = 2.5  # the "few seconds" after it: one sweep period (at most 1 s), Redis, the bus, with margin

Frame = dict[str, Any]


# --------------------------------------------------------------------------- helpers


async def chat_client(daemon: Daemon | Instance, login: str, path: str = "/chat", **claims: Any) -> Client:
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
                 skip: Callable[[Frame], bool] = is_update, limit: int = 100, timeout: float = TIMEOUT) -> Frame:
    """The next frame ``wanted`` accepts, passing over frames ``skip`` accepts (room updates by
    default); any other frame fails the test, and each wait is bounded by ``timeout`` seconds."""
    for _ in range(limit):
        frame: Frame = await client.next(timeout)
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


async def indexed_uuid(daemon: Daemon, type_: str, obj: str) -> str | None:
    """The Uuid the daemon's chat store indexes the room ``(Type, RoomTypeObject)`` under, if any."""
    conn = await txredisapi.Connection(*shared_address(), reconnect=False).addTimeout(10, reactor)
    try:
        index = daemon.service.config.chat_key_prefix + "index"
        return await conn.hget(index, f"{type_}:{obj}")  # type: ignore[no-any-return]
    finally:
        await conn.disconnect()


# --------------------------------------------------------------------------- 1. a full conversation


@pytest_twisted.ensureDeferred
async def test_full_conversation(gateway: StartGateway) -> None:
    """Two users join (ROOM_UPDATE only), ask the history as the stock chat panel does, post, edit, delete,
    page the history and leave."""
    obj = new_prefix()
    room_spec = spec(obj, RoomLabel="Lobby")
    daemon = await gateway()
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

    # bob joins: ROOM_UPDATE listing both, and no message (PROTOCOL.md §5.2); his HISTORY (the chat panel's
    # first page) gets ROOM_UPDATE, then the history oldest first, then no MAY_HAVE_MORE (the page is not full)
    await joined(bob, room_spec, ["alice", "bob"])
    assert is_update(await bob.next())  # the JOIN's broadcast
    history(bob, room_spec, 0, 40)
    assert is_update(await bob.next())
    assert [await bob.next() for _ in range(3)] == [m1, m2, m3]
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


# --------------------------------------------------------------------------- 2. two instances


@pytest_twisted.ensureDeferred
async def test_a_post_on_one_instance_reaches_a_socket_on_the_other(gateway: StartGateway) -> None:
    """Sockets on two daemons share one room: presence, and each post reaches both sockets once."""
    obj = new_prefix()
    one = await gateway()
    two = await gateway(prefix=one.prefix)
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


@pytest_twisted.ensureDeferred
async def test_a_join_during_a_burst_of_posts_gets_the_room_first_and_loses_nothing(gateway: StartGateway) -> None:
    """Bob joins on one daemon while alice posts a burst on the other: his first frame about the room is its
    ROOM_UPDATE and every message reaches him (from the history or the broadcast; the client de-duplicates).
    With history_on_join (the JOIN's history page): without it, a post broadcast before bob's JOIN attached the
    room is not his to get, and whether one is depends on timing alone."""
    obj = new_prefix()
    history = {"chat.history_on_join": "yes"}
    one = await gateway(overrides=history)
    two = await gateway(prefix=one.prefix, overrides=history)
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


@pytest_twisted.ensureDeferred
async def test_a_ping_from_a_new_socket_reattaches_the_room(gateway: StartGateway) -> None:
    """After a reconnect, JOIN with PING re-attaches an existing room (ROOM_UPDATE, no history) and the socket
    receives its messages again; a PING for a room that does not exist is refused and creates nothing."""
    obj, missing = new_prefix(), new_prefix()
    daemon = await gateway()
    alice = await chat_client(daemon, "alice")
    bob = await chat_client(daemon, "bob")
    room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
    await posted(alice, room_uuid, "before the reconnect")

    bob.send_json({"@type": "JOIN", "Room": spec(missing), "Message": {"Message": "PING"}})
    refused = await expect(bob, is_error, "the refused PING")
    assert "PING" in refused["error"] and "does not exist" in refused["error"]
    assert await indexed_uuid(daemon, "GLOBAL", missing) is None

    bob.send_json({"@type": "JOIN", "Room": spec(obj), "Message": {"Message": "PING"}})
    first = await bob.next()
    assert is_update(first) and first["Room"]["Users"] == ["alice", "bob"]
    m = await posted(alice, room_uuid, "after the reconnect")
    # no history was sent on PING: the next message bob gets is the new one
    assert await expect(bob, is_message, "the new message") == m


# --------------------------------------------------------------------------- 3. restart


@pytest_twisted.ensureDeferred
async def test_history_survives_a_restart(gateway: StartGateway) -> None:
    """After the daemon stops and a new one starts on the same Redis, a JOIN gets the same room and HISTORY its
    messages."""
    obj = new_prefix()
    first = await gateway()
    alice = await chat_client(first, "alice")
    room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
    sent = [await posted(alice, room_uuid, f"message {i}") for i in range(41)]
    await first.stop()
    assert await alice.wait_closed() == (1000, "server shutting down")

    second = await gateway(prefix=first.prefix)
    bob = await chat_client(second, "bob")
    room = await joined(bob, spec(obj), ["bob"])  # alice's presence went with her socket
    assert room["Uuid"] == room_uuid
    assert is_update(await bob.next())  # the JOIN's broadcast
    # the newest page of 40, oldest first, then MAY_HAVE_MORE
    history(bob, spec(obj), 0, 40)
    assert is_update(await bob.next())
    assert [await bob.next() for _ in range(40)] == sent[1:]
    assert await bob.next() == {"@type": "MAY_HAVE_MORE", "RoomUuid": room_uuid,
                                "Timestamp": int(sent[1]["Timestamp"]), "Offset": 40, "Limit": 40}
    history(bob, spec(obj), 40, 40)
    assert is_update(await bob.next())
    assert await bob.next() == sent[0]


# --------------------------------------------------------------------------- 4. concurrent creation


@pytest_twisted.ensureDeferred
async def test_concurrent_joins_on_two_instances_make_one_room(gateway: StartGateway) -> None:
    """JOINs of new rooms sent at once from sockets on two daemons end with one room each (same Uuid)."""
    objs = [new_prefix() for _ in range(8)]
    one = await gateway()
    two = await gateway(prefix=one.prefix)
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
        assert await indexed_uuid(one, "GLOBAL", obj) in uuids[obj]
    assert len(set.union(*uuids.values())) == len(objs)


# --------------------------------------------------------------------------- 5. refusals


@pytest_twisted.ensureDeferred
async def test_refused_frames_get_an_error_and_keep_the_socket(gateway: StartGateway) -> None:
    """Each refused chat frame is answered with an error naming the problem, changes nothing, and the
    same socket then succeeds at its next action."""
    obj, other_obj, ws_uuid = new_prefix(), new_prefix(), new_prefix()
    alice_login, guest_login = f"alice-{new_prefix()}", f"guest-{new_prefix()}"  # fresh USER rooms
    daemon = await gateway()
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
    history(bob, spec(obj), 0, 40)
    assert await expect(bob, message_with(RoomUuid=room_uuid), "the room's history") == original
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
    assert await indexed_uuid(daemon, "WORKSPACE", ws_uuid) is None
    assert await indexed_uuid(daemon, "USER", alice_login) is None


# --------------------------------------------------------------------------- 6. presence


@pytest.mark.parametrize("how", ["close", "drop"])
@pytest_twisted.ensureDeferred
async def test_presence_ends_when_the_logins_only_socket_goes(how: str, gateway: StartGateway) -> None:
    """When alice's only socket closes (cleanly or by a dropped connection), bob gets a ROOM_UPDATE without her."""
    obj = new_prefix()
    daemon = await gateway()
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


@pytest_twisted.ensureDeferred
async def test_presence_ends_when_the_instance_of_the_logins_socket_shuts_down(gateway: StartGateway) -> None:
    """When the daemon holding alice's only socket shuts down, bob on another daemon gets a ROOM_UPDATE without her."""
    obj = new_prefix()
    one = await gateway()
    two = await gateway(prefix=one.prefix)
    alice = await chat_client(one, "alice")
    bob = await chat_client(two, "bob")
    room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
    await joined(bob, spec(obj), ["alice", "bob"])
    await one.stop()
    assert await alice.wait_closed() == (1000, "server shutting down")
    await expect(bob, update_with(["bob"], room_uuid), "alice's presence going with her instance")


class Instance:
    """A gateway instance under twistd (a real process, so that it can be killed), on the deployment ``prefix``
    with ``presence_timeout = PRESENCE_TIMEOUT``; ``start`` again after ``kill`` restarts it as it was."""

    def __init__(self, directory: str, prefix: str) -> None:
        self._directory = directory
        self.prefix = prefix
        self.port = free_port()
        self._process: tuple[Twistd, Any] | None = None

    async def start(self) -> None:
        proto, transport = spawn_instance(self._directory, self.prefix, self.port,
                                          f"presence_timeout = {PRESENCE_TIMEOUT}")
        self._process = proto, transport
        for line in (b"listening on", b"Redis chat store connected", b"Redis bus subscriber connected"):
            await proto.logged(line)

    async def kill(self) -> float:
        """SIGKILL: no clean shutdown, no socket closed by the server. Returns when it died (reactor seconds)."""
        assert self._process is not None
        proto, transport = self._process
        os.kill(transport.pid, signal.SIGKILL)
        proto.ended.addTimeout(TIMEOUT, reactor)
        assert await proto.ended == (None, signal.SIGKILL)
        return reactor.seconds()

    def stop(self) -> None:
        """Kill it if it still runs (the test's end)."""
        if self._process is not None and not self._process[0].ended.called:
            os.kill(self._process[1].pid, signal.SIGKILL)


@pytest.fixture
def instances(tmp_path: Any) -> Iterator[Callable[[str], Instance]]:
    """``instances(prefix)``: a twistd instance of the deployment (not started); killed at the test's end."""
    made: list[Instance] = []

    def make(prefix: str) -> Instance:
        made.append(Instance(str(tmp_path), prefix))
        return made[-1]

    yield make
    for instance in made:
        instance.stop()


async def stored_users(prefix: str, room_uuid: str) -> list[str]:
    """The logins in the room's stored ``Users``, read straight from Redis (no gateway touches the room)."""
    conn = await txredisapi.Connection(*shared_address(), reconnect=False).addTimeout(10, reactor)
    try:
        return sorted(await conn.hkeys(f"{prefix}:chat:users:{room_uuid}"))
    finally:
        await conn.disconnect()


@pytest_twisted.ensureDeferred
async def test_the_presence_of_a_killed_instance_ends_on_the_others(instances: Any, gateway: StartGateway) -> None:
    """Issue 11 §6: the instance holding alice's only socket is killed (SIGKILL); with nobody touching the
    room afterwards, bob on another instance gets a ROOM_UPDATE without her within presence_timeout plus
    REAP_BOUND, and the stored Users lose her too."""
    obj = new_prefix()
    # bob's instance keeps presence for a minute, so that nothing but alice's expiry can change the room
    other = await gateway(overrides={"chat.presence_timeout": "60"}, admin="tcp:0:interface=127.0.0.1")
    doomed = instances(other.prefix)
    await doomed.start()
    alice = await chat_client(doomed, "alice")
    bob = await chat_client(other, "bob")
    room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
    await joined(bob, spec(obj), ["alice", "bob"])
    killed = await doomed.kill()
    gone = await expect(bob, lambda f: is_update(f) and "alice" not in f["Room"]["Users"], "alice's presence going",
                        timeout=PRESENCE_TIMEOUT + REAP_BOUND)
    assert gone["Room"]["Users"] == ["bob"]
    assert reactor.seconds() - killed <= PRESENCE_TIMEOUT + REAP_BOUND
    assert await stored_users(other.prefix, room_uuid) == ["bob"]
    assert value(await scrape(other), "wsgw_chat_presences_expired_total") == 1


@pytest_twisted.ensureDeferred
async def test_the_presence_of_a_killed_instance_ends_in_a_room_nobody_else_is_in(
        instances: Any, gateway: StartGateway) -> None:
    """Alice was alone in the room when her instance was killed and nobody joins it afterwards: the other
    instance still takes her out of the stored Users within presence_timeout plus REAP_BOUND."""
    obj = new_prefix()
    other = await gateway()
    doomed = instances(other.prefix)
    await doomed.start()
    alice = await chat_client(doomed, "alice")
    room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
    await doomed.kill()
    assert await stored_users(other.prefix, room_uuid) == ["alice"]

    async def empty() -> bool:
        return await stored_users(other.prefix, room_uuid) == []

    await eventually(empty, "alice leaving the stored Users", PRESENCE_TIMEOUT + REAP_BOUND)


@pytest_twisted.ensureDeferred
async def test_an_instance_restarted_after_a_kill_keeps_no_ghost(instances: Any) -> None:
    """The only instance of a deployment is killed and restarted on the same port and config: the presence its
    previous life left in the store ends within presence_timeout plus REAP_BOUND of the kill, and a JOIN
    afterwards lists only the joiner."""
    obj = new_prefix()
    instance = instances(new_prefix())
    await instance.start()
    alice = await chat_client(instance, "alice")
    room_uuid = (await joined(alice, spec(obj), ["alice"]))["Uuid"]
    await instance.kill()
    assert await stored_users(instance.prefix, room_uuid) == ["alice"]
    await instance.start()

    async def empty() -> bool:
        return await stored_users(instance.prefix, room_uuid) == []

    await eventually(empty, "the ghost of alice leaving the stored Users", PRESENCE_TIMEOUT + REAP_BOUND)
    bob = await chat_client(instance, "bob")
    assert (await joined(bob, spec(obj), ["bob"]))["Uuid"] == room_uuid


# --------------------------------------------------------------------------- 7. events of other services


@pytest_twisted.ensureDeferred
async def test_chat_events_published_by_another_service_reach_the_room(gateway: StartGateway) -> None:
    """Message, delete and room events published on the chat topic reach the room's sockets on every
    instance; events of other rooms and malformed events reach nobody."""
    obj = new_prefix()
    one = await gateway()
    two = await gateway(prefix=one.prefix)
    alice = await chat_client(one, "alice")
    bob = await chat_client(two, "bob")
    room = await joined(alice, spec(obj), ["alice"])
    room_uuid = room["Uuid"]
    await joined(bob, spec(obj), ["alice", "bob"])
    await expect(alice, update_with(["alice", "bob"], room_uuid), "bob's arrival")
    await expect(bob, update_with(["alice", "bob"], room_uuid), "bob's own broadcast")

    message = {"Uuid": "bot-1", "RoomUuid": room_uuid, "Message": "build passed", "Author": "ci-bot",
               "Timestamp": "1718022000"}
    await one.publish("chat", {"Message": {**message, "Uuid": "bot-0", "RoomUuid": "another-room"}})
    await one.publish("chat", {"Message": {"RoomUuid": 42}})
    await one.publish("chat", {"Message": message})
    await one.publish("chat", {"Message": message, "Details": "DELETE"})
    await one.publish("chat", {"Room": {**room, "RoomLabel": "Renamed", "Users": ["alice", "bob"]}})
    for client in (alice, bob):
        # strict: the other room's message would fail here, it is not a room update
        assert await expect(client, is_message, "the published message") == message
        assert await client.next() == {"@type": "DELETE_MSG", "Message": message}
        renamed = await client.next()
        assert is_update(renamed) and renamed["Room"]["RoomLabel"] == "Renamed"
    assert one.service.dispatcher.malformed["chat"] == 1
    assert two.service.dispatcher.malformed["chat"] == 1


# --------------------------------------------------------------------------- 8. the configured cap, the worker thread


@pytest_twisted.ensureDeferred
async def test_chat_history_cap_comes_from_the_config(gateway: StartGateway) -> None:
    """[chat] history_cap bounds the stored history of a room: only the newest messages are kept."""
    daemon = await gateway(overrides={"chat.history_cap": "3"})
    alice = await connect(daemon.port, "/chat")
    await alice.subscribe(token("alice"))
    room = {"Type": "GLOBAL", "RoomTypeObject": daemon.prefix}
    alice.send_json({"@type": "JOIN", "Room": room})
    room_uuid = (await alice.next())["Room"]["Uuid"]
    for i in range(5):
        alice.send_json({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Message": f"m{i}"}})
    seen: list[str] = []
    while seen[-1:] != ["m4"]:  # each post is broadcast back (ROOM_UPDATEs from the join may come between)
        frame = await alice.next()
        if "Message" in frame and "@type" not in frame:
            seen.append(frame["Message"])
    alice.send_json({"@type": "HISTORY", "Room": room, "Message": {"Message": ""}})
    history: list[str] = []
    while len(history) < 3:
        frame = await alice.next()
        if "Message" in frame and "@type" not in frame:
            history.append(frame["Message"])
    assert history == ["m2", "m3", "m4"]
    alice.send_json({"@type": "HISTORY", "Room": room, "Message": {"Message": ""}})
    assert (await alice.next())["@type"] == "ROOM_UPDATE"  # the second HISTORY starts: nothing else came


@pytest_twisted.ensureDeferred
async def test_a_long_chat_post_with_markup_is_sanitized_in_a_worker_thread(gateway: StartGateway) -> None:
    """On the real daemon a long POST holding HTML goes through the thread pool and arrives sanitized."""
    daemon = await gateway(redis=None)
    alice = await connect(daemon.port, "/chat")
    await alice.subscribe(token("alice"))
    alice.send_json({"@type": "JOIN", "Room": {"Type": "GLOBAL", "RoomTypeObject": daemon.prefix}})
    room_uuid = (await alice.next())["Room"]["Uuid"]
    text = "word " * 300 + "<script>alert(1)</script> `a<b` **done**"
    alice.send_json({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Message": text}})
    while True:
        frame = await alice.next()
        if "@type" not in frame:
            break
    assert frame["Message"] == "word " * 300 + " `a<b` **done**"
