"""The chat store contract: the same tests run against MemoryChatStore and RedisChatStore (shared Redis)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from zope.interface.verify import verifyObject

from tests.support.redis_server import RedisServer, shared_endpoint
from tests.support.relay import Relay
from tests.support.waiting import wait_until
from wsgw.chat import redis_scripts, redis_store
from wsgw.chat.memory_store import MemoryChatStore
from wsgw.chat.model import (
    NoSuchMessage,
    NoSuchRoom,
    NotAuthor,
    OutcomeUnknown,
    StoreUnavailable,
    TooManyEdits,
    TooManyRooms,
)
from wsgw.chat.redis_store import RedisChatStore
from wsgw.interfaces import IChatStore
from wsgw.redis.connection import RedisCommands

NOW = 1718022000.0
CAP = 1000


async def _connect() -> RedisCommands:
    redis = RedisCommands(reactor, shared_endpoint(), reply_timeout=5)
    redis.startService()
    ready = redis.whenConnected()
    ready.addTimeout(5, reactor)
    await ready
    return redis


async def _delete_prefix(redis: Any, prefix: str) -> None:
    cursor = 0
    while True:
        cursor, keys = await redis.execute_command("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
        if keys:
            await redis.execute_command("DEL", *keys)
        if int(cursor) == 0:
            return


@pytest_twisted.async_yield_fixture(params=["memory", "redis"])
async def stores(request: Any) -> AsyncIterator[tuple[Any, Any]]:
    """Two handles on one store: the same object in memory, two Redis connections on one prefix."""
    if request.param == "memory":
        store = MemoryChatStore()
        yield store, store
        return
    prefix = f"wsgw-test:{uuid.uuid4().hex}:"
    first, second = await _connect(), await _connect()
    try:
        yield RedisChatStore(first, prefix), RedisChatStore(second, prefix)
    finally:
        await _delete_prefix(first, prefix)
        await first.stopService()
        await second.stopService()


@pytest.fixture
def store(stores: tuple[Any, Any]) -> Any:
    return stores[0]


async def _room(store: Any, type: str = "WORKSPACE", obj: str = "ws-1") -> dict:
    room, _ = await store.find_or_create_room(type, obj, "Label", NOW)
    return room


def _message(room: dict, n: int, author: str = "alice") -> dict:
    return {
        "Uuid": f"m-{n}", "RoomUuid": room["Uuid"], "Message": f"text {n}",
        "Author": author, "Timestamp": str(int(NOW) + n),
    }


async def _post(store: Any, room: dict, count: int, cap: int = CAP) -> list[dict]:
    messages = [_message(room, n) for n in range(1, count + 1)]
    for m in messages:
        await store.post_message(m, cap)
    return messages


def test_stores_provide_the_interface(store: Any) -> None:
    """Both stores provide every IChatStore method."""
    assert verifyObject(IChatStore, store)


@pytest_twisted.ensureDeferred
async def test_find_or_create_creates_once_then_finds(store: Any) -> None:
    """A room is created on the first find_or_create and found (same room) afterwards."""
    assert await store.find_room("WORKSPACE", "ws-1") is None
    room, created = await store.find_or_create_room("WORKSPACE", "ws-1", "My room", NOW)
    assert created is True
    assert room == {
        "Uuid": room["Uuid"], "Type": "WORKSPACE", "RoomTypeObject": "ws-1", "RoomLabel": "My room",
        "Users": [], "LastUpdated": "1718022000",
    }
    again, created = await store.find_or_create_room("WORKSPACE", "ws-1", "Other label", NOW + 5)
    assert (again, created) == (room, False)
    assert await store.find_room("WORKSPACE", "ws-1") == room
    assert await store.get_room(room["Uuid"]) == room


@pytest_twisted.ensureDeferred
async def test_rooms_are_keyed_by_type_and_object(store: Any) -> None:
    """The same object under another type, or another object, is another room."""
    a = await _room(store, "WORKSPACE", "x")
    b = await _room(store, "NODE", "x")
    c = await _room(store, "WORKSPACE", "y")
    d = await _room(store, "GLOBAL", "")
    assert len({a["Uuid"], b["Uuid"], c["Uuid"], d["Uuid"]}) == 4


@pytest_twisted.ensureDeferred
async def test_missing_rooms_are_none(store: Any) -> None:
    """Unknown room uuids and keys read as None, and presence calls on them change nothing."""
    assert await store.get_room("nope") is None
    assert await store.find_room("USER", "nobody") is None
    assert await store.touch_user("nope", "alice", NOW, NOW + 20) == (None, False)
    assert await store.remove_user("nope", "alice", NOW) == (None, False)
    assert await store.page("nope", 0, 0) == []
    assert await store.find_room("USER", "nobody") is None


@pytest_twisted.ensureDeferred
async def test_concurrent_find_or_create_from_two_connections_makes_one_room(stores: tuple[Any, Any]) -> None:
    """Forty racing find_or_create calls, alternating between two connections, end with one room."""
    a, b = stores
    results = await gatherResults([
        (a if i % 2 else b).find_or_create_room("NODE", "node-race", "", NOW) for i in range(40)
    ])
    assert len({room["Uuid"] for room, _ in results}) == 1
    assert sum(1 for _, created in results if created) == 1
    assert (await a.find_room("NODE", "node-race"))["Uuid"] == results[0][0]["Uuid"]


@pytest_twisted.ensureDeferred
async def test_rooms_created_count_per_creator_up_to_a_bound(stores: tuple[Any, Any]) -> None:
    """Each room created counts for its creator, on every connection; at the bound one more fails with
    TooManyRooms and creates nothing; finding an existing room, another creator, or no creator, still work."""
    a, b = stores
    for i in range(3):
        _, created = await (a if i % 2 else b).find_or_create_room("NODE", f"n{i}", "", NOW, "alice", 3)
        assert created
    with pytest.raises(TooManyRooms):
        await b.find_or_create_room("NODE", "n3", "", NOW, "alice", 3)
    assert await a.find_room("NODE", "n3") is None
    assert (await a.find_or_create_room("NODE", "n1", "", NOW, "alice", 3))[1] is False  # found, not created
    assert (await a.find_or_create_room("NODE", "n3", "", NOW, "bob", 3))[1] is True
    assert (await b.find_or_create_room("NODE", "n3", "", NOW, "alice", 3))[1] is False  # bob created it
    assert (await a.find_or_create_room("NODE", "n4", "", NOW, "alice", 0))[1] is True  # 0: no cap
    assert (await a.find_or_create_room("NODE", "n5", "", NOW))[1] is True  # no creator: not counted
    with pytest.raises(TooManyRooms):
        await a.find_or_create_room("NODE", "n6", "", NOW, "alice", 4)  # n4 counted


@pytest_twisted.ensureDeferred
async def test_concurrent_creations_never_pass_the_bound(stores: tuple[Any, Any]) -> None:
    """Twenty racing creations of distinct rooms by one creator, on two connections, bound 5: five succeed."""
    a, b = stores
    results = await gatherResults([
        (a if i % 2 else b).find_or_create_room("NODE", f"race-{i}", "", NOW, "carol", 5).addCallbacks(
            lambda r: r[1], lambda f: f.trap(TooManyRooms) and False)
        for i in range(20)
    ])
    assert results.count(True) == 5


@pytest_twisted.ensureDeferred
async def test_touch_and_remove_users(store: Any) -> None:
    """touch_user adds a login once (sorted Users, LastUpdated moves); remove_user takes it out once."""
    room = await _room(store)
    touched, changed = await store.touch_user(room["Uuid"], "carol", NOW + 1, NOW + 20)
    assert changed and touched["Users"] == ["carol"] and touched["LastUpdated"] == "1718022001"
    touched, changed = await store.touch_user(room["Uuid"], "alice", NOW + 2, NOW + 20)
    assert changed and touched["Users"] == ["alice", "carol"]
    touched, changed = await store.touch_user(room["Uuid"], "alice", NOW + 3, NOW + 20)
    assert not changed and touched["Users"] == ["alice", "carol"] and touched["LastUpdated"] == "1718022002"
    removed, changed = await store.remove_user(room["Uuid"], "carol", NOW + 4)
    assert changed and removed["Users"] == ["alice"] and removed["LastUpdated"] == "1718022004"
    removed, changed = await store.remove_user(room["Uuid"], "carol", NOW + 5)
    assert not changed and removed["Users"] == ["alice"]
    assert (await store.get_room(room["Uuid"]))["Users"] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_conditional_remove_keeps_a_fresher_presence(store: Any) -> None:
    """remove_user with idle_since keeps a login seen after it (refreshed by another instance)."""
    room = await _room(store)
    await store.touch_user(room["Uuid"], "alice", NOW + 10.5, NOW + 30.5)
    kept, changed = await store.remove_user(room["Uuid"], "alice", NOW + 20, idle_since=NOW + 10)
    assert not changed and kept["Users"] == ["alice"]
    gone, changed = await store.remove_user(room["Uuid"], "alice", NOW + 20, idle_since=NOW + 10.5)
    assert changed and gone["Users"] == []


@pytest_twisted.ensureDeferred
async def test_expiry_removes_the_presences_past_their_deadline(store: Any) -> None:
    """expire_users removes the presences whose deadline is due, whatever room they are in, and fires each
    changed room once (LastUpdated moved); presences still in time stay."""
    a, b = await _room(store, "WORKSPACE", "a"), await _room(store, "NODE", "b")
    await store.touch_user(a["Uuid"], "carol", NOW, NOW + 20)
    await store.touch_user(a["Uuid"], "dave", NOW, NOW + 20)
    await store.touch_user(a["Uuid"], "alice", NOW + 5, NOW + 25)
    await store.touch_user(b["Uuid"], "bob", NOW, NOW + 20)
    assert await store.expire_users(NOW + 19.9, 100) == ([], 0)
    rooms, count = await store.expire_users(NOW + 20, 100)
    assert count == 3
    assert sorted((r["Uuid"], tuple(r["Users"]), r["LastUpdated"]) for r in rooms) == sorted([
        (a["Uuid"], ("alice",), "1718022020"), (b["Uuid"], (), "1718022020")])
    assert await store.expire_users(NOW + 20, 100) == ([], 0)
    rooms, count = await store.expire_users(NOW + 60, 100)
    assert count == 1 and [r["Users"] for r in rooms] == [[]]
    assert (await store.get_room(a["Uuid"]))["Users"] == []


@pytest_twisted.ensureDeferred
async def test_a_deadline_and_a_last_seen_never_move_back(store: Any) -> None:
    """A later touch moves the deadline on; a touch arriving late from another instance (older ``now``,
    earlier ``until``) moves neither the deadline nor the last seen back."""
    room = await _room(store)
    await store.touch_user(room["Uuid"], "alice", NOW, NOW + 20)
    await store.touch_user(room["Uuid"], "alice", NOW + 20, NOW + 40)
    await store.touch_user(room["Uuid"], "alice", NOW + 5, NOW + 25)  # late
    assert await store.expire_users(NOW + 39, 100) == ([], 0)
    kept, changed = await store.remove_user(room["Uuid"], "alice", NOW + 39, idle_since=NOW + 5)
    assert not changed and kept["Users"] == ["alice"]
    rooms, count = await store.expire_users(NOW + 40, 100)
    assert count == 1 and rooms[0]["Users"] == []


@pytest_twisted.ensureDeferred
async def test_a_removed_presence_is_not_due_any_more(store: Any) -> None:
    """remove_user takes the presence's deadline along: the sweep finds nothing of it afterwards, and a new
    touch starts a new deadline."""
    room = await _room(store)
    await store.touch_user(room["Uuid"], "alice", NOW, NOW + 20)
    await store.remove_user(room["Uuid"], "alice", NOW + 1)
    assert await store.expire_users(NOW + 100, 100) == ([], 0)
    await store.touch_user(room["Uuid"], "alice", NOW + 2, NOW + 22)
    await store.remove_user(room["Uuid"], "alice", NOW + 3)
    await store.touch_user(room["Uuid"], "alice", NOW + 4, NOW + 22)  # the same deadline as the removed one
    rooms, count = await store.expire_users(NOW + 30, 100)
    assert count == 1 and rooms[0]["Users"] == []
    assert await store.expire_users(NOW + 30, 100) == ([], 0)


@pytest_twisted.ensureDeferred
async def test_expiry_takes_at_most_limit_presences_earliest_first(store: Any) -> None:
    """One expire_users call removes at most ``limit`` presences, the earliest deadlines first; the count
    says when more may be due."""
    room = await _room(store)
    for n in range(5):
        await store.touch_user(room["Uuid"], f"user{n}", NOW, NOW + 25 - n)
    rooms, count = await store.expire_users(NOW + 30, 2)
    assert count == 2 and rooms[0]["Users"] == ["user0", "user1", "user2"]
    rooms, count = await store.expire_users(NOW + 30, 2)
    assert count == 2 and rooms[0]["Users"] == ["user0"]
    rooms, count = await store.expire_users(NOW + 30, 2)
    assert count == 1 and rooms[0]["Users"] == []


@pytest_twisted.ensureDeferred
async def test_expiry_of_odd_logins(store: Any) -> None:
    """Logins holding the separator of the presence index (``/``), spaces or digits only expire as themselves."""
    room = await _room(store)
    for login in ("a/b", "/", "x y", "007"):
        await store.touch_user(room["Uuid"], login, NOW, NOW + 20)
    await store.touch_user(room["Uuid"], "a", NOW, NOW + 30)
    rooms, count = await store.expire_users(NOW + 20, 100)
    assert count == 4 and rooms[0]["Users"] == ["a"]


@pytest_twisted.ensureDeferred
async def test_concurrent_sweeps_from_two_connections_remove_each_presence_once(stores: tuple[Any, Any]) -> None:
    """Instances sweeping at once (two connections) remove each due presence once between them."""
    a, b = stores
    rooms = [await _room(a, "NODE", f"n{i}") for i in range(4)]
    for i in range(40):
        await a.touch_user(rooms[i % 4]["Uuid"], f"user{i}", NOW, NOW + 20 + i / 100)
    results = await gatherResults([(a if i % 2 else b).expire_users(NOW + 21, 7) for i in range(8)])
    assert sum(count for _, count in results) == 40
    for room in rooms:
        assert (await a.get_room(room["Uuid"]))["Users"] == []


@pytest_twisted.ensureDeferred
async def test_the_presence_index_holds_only_live_presences(store: Any) -> None:
    """The deadline index stays as large as the presences themselves: refreshing one presence a thousand
    times adds nothing to it, and expired and removed presences leave it."""
    room = await _room(store)
    for n in range(1000):
        await store.touch_user(room["Uuid"], "alice", NOW + n, NOW + n + 20)
    await store.touch_user(room["Uuid"], "bob", NOW, NOW + 20)
    assert await _index_size(store) <= 2
    await store.remove_user(room["Uuid"], "bob", NOW + 1)
    await store.expire_users(NOW + 2000, 100)
    assert await _index_size(store) == 0


async def _index_size(store: Any) -> int:
    """Entries of the store's presence-deadline index (white box: the heap of the memory store may also hold
    up to 64 plus twice as many stale entries, then it is rebuilt)."""
    if isinstance(store, MemoryChatStore):
        assert len(store._deadlines) <= 2 * len(store._until) + 65
        return len(store._until)
    return int(await store._redis.execute_command("ZCARD", store._prefix + "presence"))


@pytest_twisted.ensureDeferred
async def test_page_edges(store: Any) -> None:
    """Pages walk back from the newest and come oldest first: empty, whole, exact, partial, past the end."""
    room = await _room(store)
    uuid_ = room["Uuid"]
    assert await store.page(uuid_, 0, 40) == []
    messages = await _post(store, room, 5)
    assert await store.page(uuid_, 0, 0) == messages
    assert await store.page(uuid_, 0, 5) == messages
    assert await store.page(uuid_, 0, 2) == messages[3:]
    assert await store.page(uuid_, 2, 2) == messages[1:3]
    assert await store.page(uuid_, 4, 2) == messages[:1]
    assert await store.page(uuid_, 3, 0) == messages[:2]
    assert await store.page(uuid_, 5, 2) == []
    assert await store.page(uuid_, 50, 0) == []


@pytest_twisted.ensureDeferred
async def test_history_is_capped_per_room(store: Any) -> None:
    """Posting beyond the cap drops the oldest messages of that room only."""
    room, other = await _room(store, obj="a"), await _room(store, obj="b")
    messages = await _post(store, room, 7, cap=4)
    await store.post_message(_message(other, 99), 4)
    assert await store.page(room["Uuid"], 0, 0) == messages[3:]
    assert len(await store.page(other["Uuid"], 0, 0)) == 1
    with pytest.raises(NoSuchMessage):
        await store.edit_message(room["Uuid"], "m-1", "alice", "new", "2024-06-10T12:00:00Z")


@pytest_twisted.ensureDeferred
async def test_get_message_reads_one_stored_message(store: Any) -> None:
    """get_message gives the stored message (its edit history included), None when the room or message is not
    there."""
    room = await _room(store)
    [first, _] = await _post(store, room, 2)
    assert await store.get_message(room["Uuid"], first["Uuid"]) == first
    edited = await store.edit_message(room["Uuid"], first["Uuid"], "alice", "new", "2024-06-10T12:00:00Z")
    assert await store.get_message(room["Uuid"], first["Uuid"]) == edited
    assert await store.get_message(room["Uuid"], "m-404") is None
    assert await store.get_message("nope", first["Uuid"]) is None


@pytest_twisted.ensureDeferred
async def test_edits_per_message_are_bounded(store: Any) -> None:
    """With max_edits, a message whose Activity.items holds that many entries is not edited again: TooManyEdits,
    nothing changed; 0 means no bound."""
    room = await _room(store)
    [m, other] = await _post(store, room, 2)
    for i in range(3):
        await store.edit_message(room["Uuid"], m["Uuid"], "alice", f"v{i}", "2024-06-10T12:00:00Z", 3)
    with pytest.raises(TooManyEdits):
        await store.edit_message(room["Uuid"], m["Uuid"], "alice", "v3", "2024-06-10T12:00:00Z", 3)
    stored = await store.get_message(room["Uuid"], m["Uuid"])
    assert stored["Message"] == "v2" and len(stored["Activity"]["items"]) == 3
    for i in range(5):
        await store.edit_message(room["Uuid"], other["Uuid"], "alice", f"w{i}", "2024-06-10T12:00:00Z", 0)


@pytest_twisted.ensureDeferred
async def test_post_to_a_missing_room_fails(store: Any) -> None:
    """A message for a room that does not exist is refused with NoSuchRoom and not stored."""
    with pytest.raises(NoSuchRoom):
        await store.post_message(_message({"Uuid": "nope"}, 1), CAP)
    assert await store.page("nope", 0, 0) == []


@pytest_twisted.ensureDeferred
async def test_edit_appends_the_old_text_to_activity(store: Any) -> None:
    """The author's edit changes the text, keeps the timestamp and appends each old text to Activity.items."""
    room = await _room(store)
    [original] = await _post(store, room, 1)
    first = await store.edit_message(room["Uuid"], "m-1", "alice", "second", "2024-06-10T12:00:00Z")
    assert first == dict(original, Message="second", Activity={
        "items": [{"markdown": "text 1", "updated": "2024-06-10T12:00:00Z"}],
    })
    second = await store.edit_message(room["Uuid"], "m-1", "alice", "third", "2024-06-10T12:01:00Z")
    assert second["Activity"]["items"] == [
        {"markdown": "text 1", "updated": "2024-06-10T12:00:00Z"},
        {"markdown": "second", "updated": "2024-06-10T12:01:00Z"},
    ]
    assert await store.page(room["Uuid"], 0, 0) == [second]


@pytest_twisted.ensureDeferred
async def test_edit_refuses_others_and_missing_messages(store: Any) -> None:
    """Editing someone else's message, an unknown one, or one of another room changes nothing."""
    room, other = await _room(store, obj="a"), await _room(store, obj="b")
    messages = await _post(store, room, 1)
    with pytest.raises(NotAuthor):
        await store.edit_message(room["Uuid"], "m-1", "mallory", "pwned", "t")
    with pytest.raises(NoSuchMessage):
        await store.edit_message(room["Uuid"], "m-404", "alice", "x", "t")
    with pytest.raises(NoSuchMessage):
        await store.edit_message(other["Uuid"], "m-1", "alice", "x", "t")
    assert await store.page(room["Uuid"], 0, 0) == messages


@pytest_twisted.ensureDeferred
async def test_delete(store: Any) -> None:
    """Only the author deletes; the deleted message is returned and gone; deleting again fails."""
    room = await _room(store)
    messages = await _post(store, room, 3)
    with pytest.raises(NotAuthor):
        await store.delete_message(room["Uuid"], "m-2", "mallory")
    assert await store.page(room["Uuid"], 0, 0) == messages
    assert await store.delete_message(room["Uuid"], "m-2", "alice") == messages[1]
    assert await store.page(room["Uuid"], 0, 0) == [messages[0], messages[2]]
    with pytest.raises(NoSuchMessage):
        await store.delete_message(room["Uuid"], "m-2", "alice")


@pytest_twisted.ensureDeferred
async def test_number_like_strings_stay_strings(store: Any) -> None:
    """Logins, type objects and texts that look like numbers come back as the same strings."""
    room = await _room(store, "USER", "007")
    assert room["RoomTypeObject"] == "007"
    touched, _ = await store.touch_user(room["Uuid"], "0042", NOW, NOW + 20)
    assert touched["Users"] == ["0042"]
    message = {"Uuid": "1", "RoomUuid": room["Uuid"], "Message": "1.50", "Author": "0042", "Timestamp": "1"}
    await store.post_message(message, CAP)
    assert await store.page(room["Uuid"], 0, 0) == [message]
    assert await store.find_room("USER", "007") == touched


@pytest_twisted.ensureDeferred
async def test_unicode_and_markup_round_trip(store: Any) -> None:
    """Text with quotes, slashes, backslashes, newlines and non-ASCII is stored and edited unchanged."""
    room = await _room(store)
    text = 'é 😀 "q" a/b \\ \n```\ncode\n```'
    message = {"Uuid": "u", "RoomUuid": room["Uuid"], "Message": text, "Author": "zoé", "Timestamp": "1"}
    await store.post_message(message, CAP)
    assert await store.page(room["Uuid"], 0, 0) == [message]
    edited = await store.edit_message(room["Uuid"], "u", "zoé", text + "!", "t")
    assert edited["Activity"]["items"][0]["markdown"] == text
    assert edited["Message"] == text + "!"


@pytest_twisted.ensureDeferred
async def test_returned_values_are_copies(store: Any) -> None:
    """Mutating a returned room or message does not change what the store holds."""
    room = await _room(store)
    [message] = await _post(store, room, 1)
    got = (await store.page(room["Uuid"], 0, 0))[0]
    got["Message"] = "tampered"
    room["Users"].append("mallory")
    assert (await store.page(room["Uuid"], 0, 0))[0] == message
    assert (await store.get_room(room["Uuid"]))["Users"] == []


# --------------------------------------------------------------------------- idempotency (issue 11, section 5)


@pytest_twisted.ensureDeferred
async def test_posting_a_message_again_changes_nothing(stores: tuple[Any, Any]) -> None:
    """A POST is idempotent on its Uuid (chosen before the store call): the same message posted again, from
    the same or another connection, is stored once."""
    first, second = stores
    room = await _room(first)
    message = _message(room, 1)
    await first.post_message(message, CAP)
    await gatherResults([first.post_message(dict(message), CAP), second.post_message(dict(message), CAP)])
    assert [m["Uuid"] for m in await first.page(room["Uuid"], 0, 0)] == ["m-1"]


@pytest_twisted.ensureDeferred
async def test_an_edit_to_the_same_text_changes_nothing(store: Any) -> None:
    """An edit sent twice adds one Activity item: the second finds the text already there."""
    room = await _room(store)
    await store.post_message(_message(room, 1), CAP)
    edited = await store.edit_message(room["Uuid"], "m-1", "alice", "new", "2024-06-10T12:00:00Z")
    again = await store.edit_message(room["Uuid"], "m-1", "alice", "new", "2024-06-10T12:00:05Z")
    assert again == edited
    assert edited["Activity"]["items"] == [{"markdown": "text 1", "updated": "2024-06-10T12:00:00Z"}]
    (stored,) = await store.page(room["Uuid"], 0, 0)
    assert stored == edited


@pytest_twisted.ensureDeferred
async def test_a_change_run_again_under_its_id_gets_the_first_answer(stores: tuple[Any, Any]) -> None:
    """Redis: a change sent again under the same id (the store's resend of a change in doubt, possibly after the
    first run was applied late) is answered as the first run was and changes nothing more, from any connection;
    what is kept for it is small (a peer repeats changes) and lives DONE_TTL seconds: an edit keeps a mark and a
    rerun gets the message as it is then (a later edit shows), a delete keeps the message's ids, not its text,
    and a sweep that removed nothing keeps nothing."""
    first, second = stores
    if not isinstance(first, RedisChatStore):
        pytest.skip("the memory store never has a change in doubt")
    room = await _room(first)
    await first.post_message(_message(room, 1), CAP)
    await first.post_message(_message(room, 2), CAP)
    edit = (redis_scripts.EDIT, redis_store._owned_from("m-1"), room["Uuid"], "m-1", "alice", "new", "t1", 0)
    edited = await first._change(*edit, id="edit-1")
    assert await second._change(*edit, id="edit-1") == edited
    assert len(edited["Activity"]["items"]) == 1
    delete = (redis_scripts.DELETE, redis_store._owned_from("m-2"), room["Uuid"], "m-2", "alice")
    deleted = await first._change(*delete, id="delete-1")
    assert deleted["Message"] == "text 2"
    again = await second._change(*delete, id="delete-1")  # not NoSuchMessage: the first answer, without its text
    assert again == {"Uuid": "m-2", "RoomUuid": room["Uuid"], "Author": "alice"}
    with pytest.raises(NoSuchMessage):
        await first._change(*delete, id="delete-2")  # another change: it finds the message gone
    await first.touch_user(room["Uuid"], "bob", NOW, NOW + 1)
    expire = (redis_scripts.EXPIRE, redis_store._expired_from, repr(NOW + 5), 10, "1")
    rooms, due = await first._change(*expire, id="sweep-1")
    assert ([r["Uuid"] for r in rooms], due) == ([room["Uuid"]], 1)
    assert await second._change(*expire, id="sweep-1") == (rooms, due)
    assert [m["Message"] for m in await first.page(room["Uuid"], 0, 0)] == ["new"]
    ttl = await first._redis.execute_command("TTL", first._prefix + "done:edit-1")
    assert 0 < ttl <= redis_store.DONE_TTL == 600
    for id, most in (("edit-1", 1), ("delete-1", 120), ("sweep-1", 2000)):
        kept = await first._redis.execute_command("GET", first._prefix + "done:" + id)
        assert 0 < len(kept) <= most, (id, kept)
    await first._change(*edit[:5], "newer", "t2", 0, id="edit-2")
    assert (await second._change(*edit, id="edit-1"))["Message"] == "newer"  # the message as it is now
    await first._change(redis_scripts.EXPIRE, redis_store._expired_from, repr(NOW + 6), 10, "1", id="sweep-2")
    assert await first._redis.execute_command("EXISTS", first._prefix + "done:sweep-2") == 0


@pytest_twisted.ensureDeferred
async def test_a_change_redis_did_not_answer_is_sent_again_until_answered_and_applied_once() -> None:
    """Redis frozen behind a relay that lets a late run through: the edit times out (OutcomeUnknown, not
    StoreUnavailable); Redis runs it when it resumes, and the store's resend under the same id; ``outcome``
    fires with the edited message, which has one Activity item. A change past ``max_in_doubt`` (changes in
    doubt, and those sent and not answered yet, which may go in doubt) is refused unsent; a change while
    disconnected is StoreUnavailable."""
    with RedisServer() as server:
        relay = await Relay.start(server.port)
        redis = RedisCommands(reactor, relay.endpoint, reply_timeout=0.5, ping_interval=None)
        redis.startService()
        try:
            await redis.whenConnected().addTimeout(10, reactor)
            store = RedisChatStore(redis, "outcome:", max_in_doubt=1)
            room = await _room(store)
            await store.post_message(_message(room, 1), CAP)
            await store.edit_message(room["Uuid"], "m-1", "alice", "warm-up", "t0")  # Redis knows the script
            server.freeze()
            try:
                late = store.edit_message(room["Uuid"], "m-1", "alice", "late", "t1")
                with pytest.raises(StoreUnavailable):  # refused unsent: one change unanswered may go in doubt
                    await store.delete_message(room["Uuid"], "m-1", "alice")
                with pytest.raises(OutcomeUnknown) as unknown:
                    await late
                assert store.in_doubt == 1
                with pytest.raises(StoreUnavailable):
                    await store.delete_message(room["Uuid"], "m-1", "alice")  # refused unsent: one in doubt
                assert store.refused == 2
                await wait_until(lambda: store.resent >= 2, "a second resend")  # a resend got no answer either
            finally:
                server.thaw()
            edited = await unknown.value.outcome
            assert [i["markdown"] for i in edited["Activity"]["items"]] == ["text 1", "warm-up"]
            assert edited["Message"] == "late"
            assert store.in_doubt == 0
            (stored,) = await store.page(room["Uuid"], 0, 0)
            assert stored == edited
        finally:
            await redis.stopService()
            await relay.stop()


@pytest_twisted.ensureDeferred
async def test_only_message_changes_and_sweeps_keep_their_answer(store: Any) -> None:
    """Redis: JOIN and PING are frequent, and their changes idempotent by nature: find-or-create and presence
    keep no answer key; a post, an edit, a delete and a sweep that removed something each keep one (for
    DONE_TTL seconds); a sweep that removed nothing keeps none (every instance sweeps every second)."""
    if not isinstance(store, RedisChatStore):
        pytest.skip("the memory store keeps no answers")

    async def answers() -> list[bytes]:  # every SCAN step: one step covers only part of a big shared database
        cursor, found = b"", []
        while cursor != b"0":
            cursor, keys = await store._redis.execute_command("SCAN", cursor or 0, "MATCH", store._prefix + "done:*",
                                                              "COUNT", 10000)
            found += keys
        return sorted(found)

    room = await _room(store)
    await store.touch_user(room["Uuid"], "bob", NOW, NOW + 1)
    await store.touch_user(room["Uuid"], "bob", NOW + 1, NOW + 2)
    await store.remove_user(room["Uuid"], "bob", NOW + 2)
    assert await answers() == []
    await store.post_message(_message(room, 1), CAP)
    assert await answers() == [(store._prefix + "done:m-1").encode()]
    await store.edit_message(room["Uuid"], "m-1", "alice", "new", "t1")
    await store.delete_message(room["Uuid"], "m-1", "alice")
    await store.expire_users(NOW + 10, 10)
    assert len(await answers()) == 3
    await store.touch_user(room["Uuid"], "bob", NOW + 3, NOW + 4)
    await store.expire_users(NOW + 10, 10)
    assert len(await answers()) == 4
