"""The chat rules (PROTOCOL.md §5) in memory: a fake clock, MemoryChatStore, and a bus that loops events back."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from wsgw.access import Access
from wsgw.chat.model import StoreUnavailable
from wsgw.flow import ENTRY_COST, Flow
from wsgw.frames import MalformedEvent
from wsgw.sessions import Session
from wsgw.testing import (
    START,
    WS,
    ChatHarness,
    RecordingConnection,
    frames,
    history,
    join,
    kinds,
    ping,
    post,
)


def assert_error(session: Session, *words: str) -> None:
    received = frames(session)
    assert len(received) == 1 and received[0]["@type"] == "error", received
    for word in words:
        assert word in received[0]["error"], received[0]["error"]
    assert session.connection.closed is None  # type: ignore[attr-defined]


def seed(chat: ChatHarness, room_uuid: str, count: int) -> list[dict]:
    """Store ``count`` messages straight into the room, one second apart."""
    messages = []
    for n in range(count):
        m = {"Uuid": f"m{n}", "RoomUuid": room_uuid, "Message": f"text {n}", "Author": "zed",
             "Timestamp": str(int(START) + n)}
        chat.store.post_message(m, 1000)
        messages.append(m)
    return messages


# --------------------------------------------------------------------------- conversation


def test_full_conversation() -> None:
    """Join, post, edit, delete, history and leave between two users, with every frame in order."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")

    chat.send(alice, join(RoomLabel="Common"))
    room = chat.room()
    got = frames(alice)
    assert got[0] == {"@type": "ROOM_UPDATE", "Room": dict(room, Users=["alice"])}
    assert kinds(got) == ["ROOM_UPDATE", "ROOM_UPDATE"]  # direct, then the broadcast of the JOIN
    assert room["RoomLabel"] == "Common"

    chat.send(bob, join())
    assert frames(alice) == [{"@type": "ROOM_UPDATE", "Room": dict(room, Users=["alice", "bob"])}]
    assert kinds(frames(bob)) == ["ROOM_UPDATE", "ROOM_UPDATE"]

    chat.clock.advance(5)
    chat.send(alice, post(room["Uuid"], "hello **bob** <script>alert(1)</script>"))
    [message] = frames(alice)
    assert frames(bob) == [message]
    assert message == {"Uuid": message["Uuid"], "RoomUuid": room["Uuid"], "Message": "hello **bob** ",
                       "Author": "alice", "Timestamp": str(int(START) + 5)}

    chat.send(bob, post(room["Uuid"], "hijack", Uuid=message["Uuid"]))
    assert_error(bob, "POST", "someone else")
    assert frames(alice) == []

    chat.clock.advance(10)
    chat.send(alice, post(room["Uuid"], "hello *bob*", Uuid=message["Uuid"], Author="bob"))
    [edited] = frames(alice)
    assert frames(bob) == [edited]
    assert edited == dict(message, Message="hello *bob*", Activity={
        "items": [{"markdown": "hello **bob** ", "updated": "2024-06-10T12:20:15Z"}]})

    chat.send(bob, {"@type": "DELETE_MSG", "Message": dict(edited, Author="bob")})
    assert_error(bob, "DELETE_MSG", "someone else")
    chat.send(alice, {"@type": "DELETE_MSG", "Message": {"Uuid": message["Uuid"], "RoomUuid": room["Uuid"]}})
    deleted = {"@type": "DELETE_MSG", "Message": edited}
    assert frames(alice) == [deleted] and frames(bob) == [deleted]
    assert chat.messages(room["Uuid"]) == []

    chat.send(bob, post(room["Uuid"], "bye"))
    chat.send(alice, history())
    got = frames(alice)
    assert kinds(got) == ["message", "ROOM_UPDATE", "message"]
    assert got[2]["Message"] == "bye"

    chat.send(bob, {"@type": "LEAVE", "Room": {"Type": "WORKSPACE", "RoomTypeObject": "ws-1"}})
    frames(bob)
    assert frames(alice) == [{"@type": "ROOM_UPDATE", "Room": dict(chat.room(), Users=["alice"])}]
    chat.send(alice, post(room["Uuid"], "still there?"))
    assert frames(bob) == []
    chat.send(bob, post(room["Uuid"], "I left"))
    assert_error(bob, "POST", "not joined")


def test_broadcast_frames_are_the_same_bytes_for_every_socket() -> None:
    """A broadcast is serialized once: every socket in the room gets the very same bytes object."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    room = chat.room()
    frames(alice), frames(bob)
    chat.send(alice, post(room["Uuid"], "hi"))
    assert alice.connection.sent[-1] is bob.connection.sent[-1]  # type: ignore[attr-defined]


def test_absent_type_is_the_global_room() -> None:
    """A JOIN without Type joins the GLOBAL room, the same as Type GLOBAL."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, {"@type": "JOIN", "Room": {"RoomTypeObject": ""}})
    chat.send(bob, {"@type": "JOIN", "Room": {"Type": "GLOBAL"}})
    room = chat.room("GLOBAL", "")
    assert room["Users"] == ["alice", "bob"]
    assert chat.rooms_of(alice) == chat.rooms_of(bob) == {room["Uuid"]}


def test_post_may_name_the_room_by_type_and_object() -> None:
    """A POST naming its room by Room {Type, RoomTypeObject} posts to that joined room."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join("NODE", "node-9"))
    frames(alice)
    chat.send(alice, {"@type": "POST", "Room": {"Type": "NODE", "RoomTypeObject": "node-9"},
                      "Message": {"Message": "about this file"}})
    [message] = frames(alice)
    assert message["RoomUuid"] == chat.room("NODE", "node-9")["Uuid"]


# --------------------------------------------------------------------------- history


def test_join_answers_room_update_only() -> None:
    """JOIN is answered with ROOM_UPDATE and no message (the stock unread badges count every message frame as
    new): a WORKSPACE room holding 3 messages sends a joiner nothing but ROOM_UPDATE until it asks HISTORY."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    room = chat.room()
    stored = seed(chat, room["Uuid"], 3)
    chat.send(bob, join())
    assert kinds(frames(bob)) == ["ROOM_UPDATE", "ROOM_UPDATE"]  # direct, then the JOIN's broadcast
    chat.send(bob, ping())
    assert kinds(frames(bob)) == []
    chat.send(bob, history())
    assert frames(bob)[1:] == stored


def test_join_sends_the_newest_page_then_may_have_more() -> None:
    """With history_on_join, JOIN sends ROOM_UPDATE, the newest 40 messages oldest first, then MAY_HAVE_MORE
    when there are more (the seed document's wording)."""
    chat = ChatHarness(history_on_join=True)
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    room = chat.room()
    stored = seed(chat, room["Uuid"], 45)
    chat.send(bob, join())
    got = frames(bob)
    assert got[0]["@type"] == "ROOM_UPDATE"
    assert got[1:41] == stored[5:]
    assert got[41] == {"@type": "MAY_HAVE_MORE", "RoomUuid": room["Uuid"], "Timestamp": int(START) + 5,
                       "Offset": 40, "Limit": 40}
    assert kinds(got[42:]) == ["ROOM_UPDATE"]


@pytest.mark.parametrize("count", [0, 40])
def test_join_without_more_history_sends_no_may_have_more(count: int) -> None:
    """With history_on_join, an empty room or exactly 40 messages: ROOM_UPDATE and the messages, no MAY_HAVE_MORE."""
    chat = ChatHarness(history_on_join=True)
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    stored = seed(chat, chat.room()["Uuid"], count)
    chat.send(bob, join())
    got = frames(bob)
    assert got[1:1 + count] == stored
    assert kinds(got) == ["ROOM_UPDATE"] + ["message"] * count + ["ROOM_UPDATE"]


def test_history_paging_edges() -> None:
    """HISTORY pages walk back from the newest: full pages announce more, past the end sends none."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    room = chat.room()

    frames(alice)
    chat.send(alice, history(Offset=0, Limit=40))
    assert kinds(frames(alice)) == ["ROOM_UPDATE"]

    stored = seed(chat, room["Uuid"], 10)
    chat.send(alice, history(Offset=0, Limit=4))
    got = frames(alice)
    assert got[1:5] == stored[6:]
    assert got[5] == {"@type": "MAY_HAVE_MORE", "RoomUuid": room["Uuid"], "Timestamp": int(START) + 6,
                      "Offset": 4, "Limit": 4}

    chat.send(alice, history(Offset=8, Limit=4))
    got = frames(alice)
    assert kinds(got) == ["ROOM_UPDATE", "message", "message"] and got[1:] == stored[:2]

    chat.send(alice, history(Offset=0, Limit=10))
    assert kinds(frames(alice))[-1] == "MAY_HAVE_MORE"  # an exact, full page may have more

    chat.send(alice, history(Offset=10, Limit=4))
    assert kinds(frames(alice)) == ["ROOM_UPDATE"]

    chat.send(alice, history())
    got = frames(alice)
    assert got[1:] == stored

    chat.send(alice, history(Offset=3))
    assert frames(alice)[1:] == stored[:7]


def test_history_by_room_uuid_checks_permission() -> None:
    """HISTORY names a room by Uuid too, and is refused for a room the user may not join with the very answer a
    missing room gets, by Uuid or by type and object: whether the room exists is not revealed."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    room = chat.room()
    seed(chat, room["Uuid"], 2)
    outsider = chat.connect("eve", workspaces=())
    missing = [{"@type": "error", "error": "HISTORY: no such room"}]
    for named in ({"Uuid": room["Uuid"]}, {"Uuid": "no-such-uuid"}, {"Type": "WORKSPACE", "RoomTypeObject": "ws-1"},
                  {"Type": "WORKSPACE", "RoomTypeObject": "ws-never"}):
        chat.send(outsider, history(named))
        assert outsider.connection.sent == [b'{"@type":"error","error":"HISTORY: no such room"}'], named
        assert frames(outsider) == missing
    chat.send(alice, history({"Uuid": room["Uuid"]}))
    assert kinds(frames(alice))[-3:] == ["ROOM_UPDATE", "message", "message"]


@pytest.mark.parametrize("text,words", [
    ("not json", ["HISTORY", "JSON"]),
    ("[1]", ["HISTORY", "JSON"]),
    ('{"Offset":-1}', ["HISTORY", "Offset"]),
    ('{"Limit":"40"}', ["HISTORY", "Limit"]),
    ('{"Limit":true}', ["HISTORY", "Limit"]),
    ('{"Offset":' + "[" * 3000 + "]" * 3000 + "}", ["HISTORY", "JSON"]),  # deeper than Python's recursion limit
])
def test_bad_history_paging_is_refused(text: str, words: list[str]) -> None:
    """HISTORY with paging that is not JSON {Offset, Limit} of non-negative integers gets an error."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    frames(alice)
    chat.send(alice, {"@type": "HISTORY", "Room": {"Type": "WORKSPACE", "RoomTypeObject": "ws-1"},
                      "Message": {"Message": text}})
    assert_error(alice, *words)


def test_history_of_a_missing_room_creates_nothing() -> None:
    """HISTORY of a room that does not exist is an error and does not create it."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, history({"Type": "NODE", "RoomTypeObject": "n1"}))
    assert_error(alice, "HISTORY", "no such room")
    assert chat.store.find_room("NODE", "n1").result is None


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("type,obj,allowed", [
    ("WORKSPACE", "ws-1", True),
    ("WORKSPACE", "ws-2", False),
    ("USER", "alice", True),
    ("USER", "sub-alice", True),
    ("USER", "bob", False),
    ("GLOBAL", "", True),
    ("NODE", "node-1", True),
])
def test_join_permissions_of_a_standard_user(type: str, obj: str, allowed: bool) -> None:
    """Workspace rooms need the workspace, user rooms the user's login or sub; GLOBAL and NODE are open."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join(type, obj))
    if allowed:
        assert kinds(frames(alice))[0] == "ROOM_UPDATE"
        assert chat.room(type, obj)["Users"] == ["alice"]
    else:
        assert_error(alice, "JOIN", "not allowed")
        assert chat.store.find_room(type, obj).result is None


@pytest.mark.parametrize("type,obj,allowed", [
    ("GLOBAL", "", False),
    ("NODE", "node-1", False),
    ("WORKSPACE", "ws-1", True),
    ("USER", "guest", True),
])
def test_join_permissions_of_an_anonymous_user(type: str, obj: str, allowed: bool) -> None:
    """An anon profile may not join GLOBAL or NODE rooms; its workspace and own user room stay open."""
    chat = ChatHarness()
    guest = chat.connect("guest", profile="anon")
    chat.send(guest, join(type, obj))
    if allowed:
        assert kinds(frames(guest))[0] == "ROOM_UPDATE"
    else:
        assert_error(guest, "JOIN", "not allowed")
        assert chat.store.find_room(type, obj).result is None


def test_losing_access_leaves_the_room() -> None:
    """After a re-subscribe without the workspace, the socket leaves its room and its presence goes."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    frames(alice), frames(bob)
    chat.resubscribe(alice, Access("alice", "sub-alice", "standard", frozenset(), ()))
    assert chat.rooms_of(alice) == frozenset()
    assert frames(bob) == [{"@type": "ROOM_UPDATE", "Room": dict(chat.room(), Users=["bob"])}]
    chat.send(bob, post(chat.room()["Uuid"], "secret"))
    assert frames(alice) == []


def test_a_new_login_on_the_socket_drops_the_old_logins_rooms() -> None:
    """When a socket's login changes, the next frame first leaves the rooms joined as the old login."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    alice.access = Access("bob", "sub-bob", "standard", frozenset(), (WS,))
    chat.send(alice, join("USER", "bob"))
    assert chat.room()["Users"] == []
    assert chat.rooms_of(alice) == {chat.room("USER", "bob")["Uuid"]}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("frame,words", [
    ({"@type": "DANCE"}, ["unknown @type", "DANCE"]),
    ({"Room": {}}, ["missing @type"]),
    ({"@type": 5}, ["missing @type"]),
    ({"@type": "JOIN"}, ["JOIN", "missing Room"]),
    ({"@type": "JOIN", "Room": "ws-1"}, ["JOIN", "Room must be an object"]),
    ({"@type": "JOIN", "Room": {"Type": "TEAM", "RoomTypeObject": "x"}}, ["JOIN", "unknown Room.Type"]),
    ({"@type": "JOIN", "Room": {"Type": ["GLOBAL"]}}, ["JOIN", "unknown Room.Type"]),
    ({"@type": "JOIN", "Room": {"Type": "WORKSPACE"}}, ["JOIN", "missing Room.RoomTypeObject"]),
    ({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": 7}}, ["JOIN", "RoomTypeObject"]),
    ({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": "x" * 600}}, ["JOIN", "RoomTypeObject"]),
    ({"@type": "JOIN", "Room": {"Type": "NODE", "RoomTypeObject": "n", "RoomLabel": []}}, ["JOIN", "RoomLabel"]),
    ({"@type": "POST"}, ["POST", "missing Message"]),
    ({"@type": "POST", "Message": "hi"}, ["POST", "Message must be an object"]),
    ({"@type": "POST", "Message": {"RoomUuid": "r"}}, ["POST", "Message.Message must be a string"]),
    ({"@type": "POST", "Message": {"Message": "hi"}}, ["POST", "missing Message.RoomUuid or Room"]),
    ({"@type": "POST", "Message": {"RoomUuid": "elsewhere", "Message": "hi"}}, ["POST", "not joined"]),
    ({"@type": "POST", "Message": {"RoomUuid": "r", "Message": "hi", "Uuid": 3}}, ["POST", "Uuid"]),
    ({"@type": "DELETE_MSG", "Message": {"RoomUuid": "r"}}, ["DELETE_MSG", "missing Message.Uuid"]),
    ({"@type": "DELETE_MSG", "Message": {"Uuid": "m", "RoomUuid": "elsewhere"}}, ["DELETE_MSG", "not joined"]),
    ({"@type": "LEAVE", "Room": {"Type": "NODE", "RoomTypeObject": "n"}}, ["LEAVE", "not joined"]),
    ({"@type": "LEAVE"}, ["LEAVE", "missing Message.RoomUuid or Room"]),
    ({"@type": "HISTORY"}, ["HISTORY", "missing Room"]),
])
def test_malformed_or_refused_frames_get_an_error_and_change_nothing(frame: dict, words: list[str]) -> None:
    """Each bad frame gets one error frame naming the action and the problem; the socket stays and nothing changes."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    room = chat.room()
    seed(chat, room["Uuid"], 1)
    before = (chat.room(), chat.messages(room["Uuid"]), chat.rooms_of(alice), len(chat.bus.events))
    frames(alice)
    chat.send(alice, frame)
    assert_error(alice, *words)
    assert (chat.room(), chat.messages(room["Uuid"]), chat.rooms_of(alice), len(chat.bus.events)) == before


def test_a_room_type_number_names_the_same_room() -> None:
    """Room.Type as a chat.RoomType number (Go's encoding/json) joins the room its name does, and ROOM_UPDATE
    names it (the frontend keys rooms by the name); ANY (4) and unknown numbers name no room."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join(1, "ws-1"))  # WORKSPACE
    assert frames(alice)[0]["Room"]["Type"] == "WORKSPACE" and chat.room("WORKSPACE", "ws-1")
    for bad in (4, 9, True):
        chat.send(alice, join(bad, "x"))  # type: ignore[arg-type]
        assert_error(alice, "JOIN", "unknown Room.Type")


def test_a_room_event_with_a_type_number_is_broadcast_with_its_name() -> None:
    """A {"Room"} chat event whose Type a Go service wrote as a number reaches the room's sockets as ROOM_UPDATE
    with the name; an unknown number is malformed."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    room = chat.room()
    frames(alice)
    chat.service.handle({"Room": {**room, "Type": 1}})
    assert frames(alice) == [{"@type": "ROOM_UPDATE", "Room": room}]
    with pytest.raises(MalformedEvent, match="Room.Type"):
        chat.service.handle({"Room": {**room, "Type": 7}})


def test_frames_before_subscribe_are_refused() -> None:
    """A chat frame on a socket without access is answered 'not subscribed' and does nothing."""
    chat = ChatHarness()
    anonymous = Session(RecordingConnection(), chat.service)
    chat.service.opened(anonymous)
    chat.send(anonymous, join())
    assert_error(anonymous, "JOIN", "not subscribed")
    assert chat.store.find_room("WORKSPACE", "ws-1").result is None


def test_a_frame_before_subscribe_without_a_string_type_is_named_chat_in_the_refusal() -> None:
    """A frame with no "@type", or a number there, is refused as "chat: not subscribed, ..." (as the other chat
    refusals name it), not "None: ..." or "1: ..." (a Python value in the error frame)."""
    chat = ChatHarness()
    anonymous = Session(RecordingConnection(), chat.service)
    chat.service.opened(anonymous)
    for frame in ({"Room": {}}, {"@type": 1}, {"@type": None}):
        chat.send(anonymous, frame)
        assert frames(anonymous) == [{"@type": "error",
                                      "error": "chat: not subscribed, send subscribe with a token first"}]


def test_message_length_limit() -> None:
    """A message over max_message_chars is refused; one at the limit is posted."""
    chat = ChatHarness(max_message_chars=10)
    alice = chat.connect("alice")
    chat.send(alice, join())
    room = chat.room()
    frames(alice)
    chat.send(alice, post(room["Uuid"], "x" * 11))
    assert_error(alice, "POST", "too long", "11")
    chat.send(alice, post(room["Uuid"], "x" * 10))
    assert frames(alice)[0]["Message"] == "x" * 10


def test_a_message_that_sanitizes_to_nothing_is_refused() -> None:
    """A POST whose text is only HTML (or blank) is refused as empty and not stored."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    room = chat.room()
    frames(alice)
    chat.send(alice, post(room["Uuid"], "<img src=x onerror=alert(1)>  "))
    assert_error(alice, "POST", "empty")
    assert chat.messages(room["Uuid"]) == []


def test_edit_and_delete_of_missing_messages() -> None:
    """Editing or deleting a message that is not in the room is an error naming the action."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    room = chat.room()
    frames(alice)
    chat.send(alice, post(room["Uuid"], "new text", Uuid="nope"))
    assert_error(alice, "POST", "no such message")
    chat.send(alice, {"@type": "DELETE_MSG", "Message": {"Uuid": "nope", "RoomUuid": room["Uuid"]}})
    assert_error(alice, "DELETE_MSG", "no such message")


def test_ping_never_creates_a_room() -> None:
    """JOIN with PING for a room that does not exist is an error and creates nothing."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, ping("NODE", "n1"))
    assert_error(alice, "JOIN", "does not exist")
    assert chat.store.find_room("NODE", "n1").result is None


def test_a_store_failure_answers_an_error_and_keeps_the_socket() -> None:
    """When the store fails, the socket gets an 'internal error' frame for that action and stays open."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.store.find_or_create_room = lambda *a: fail(RuntimeError("redis down"))  # type: ignore[method-assign]
    chat.send(alice, join())
    assert_error(alice, "JOIN", "internal error")
    assert chat.rooms_of(alice) == frozenset()


def test_a_stored_change_the_bus_refused_is_broadcast_once_the_bus_is_back() -> None:
    """§5: a stored change is always broadcast. When the bus refuses a post, the message is stored, the poster
    is told it will be broadcast once the bus is back, and it is published again every second until the bus
    takes it: then the room gets it, once. A presence change's ROOM_UPDATE is published again the same way."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    room = chat.room()
    frames(alice)
    chat.bus.events.clear()
    chat.bus.failure = ConnectionError("bus down")
    chat.send(alice, post(room["Uuid"], "hi"))
    assert_error(alice, "POST", "saved", "broadcast once the bus is back")
    chat.send(bob, join())  # bob's presence changes the room: its ROOM_UPDATE waits for the bus too
    assert [m["Message"] for m in chat.messages(room["Uuid"])] == ["hi"]
    chat.clock.advance(5)
    assert frames(alice) == [] and chat.bus.events == []
    assert chat.service.unpublished == 2
    chat.bus.failure = None
    chat.clock.advance(1)
    assert [e["Message"]["Message"] for e in chat.bus.events if "Message" in e] == ["hi"]
    assert [e["Room"]["Users"] for e in chat.bus.events if "Room" in e] == [["alice", "bob"]]
    got = frames(alice)
    assert [f["Message"] for f in got if "Message" in f and "@type" not in f] == ["hi"]
    chat.clock.advance(10)
    assert len(chat.bus.events) == 2 and chat.service.unpublished == 0
    assert chat.service.republished == 2


def test_frames_waiting_behind_a_slow_one_are_bounded_in_number_and_bytes() -> None:
    """Frames waiting behind a slow one are bounded (by default 60, inbound_burst's default): all of them are
    served in order; one more is answered with an error naming the bound and the socket is closed 4029, and
    those still waiting are then dropped unhandled, however long the peer takes to answer the close. The bytes
    on the wire of the waiting frames are bounded too; the frame running counts for neither."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    room_uuid = chat.room()["Uuid"]
    frames(alice)
    pending: Deferred = Deferred()
    real = chat.store.post_message
    chat.store.post_message = lambda *a: pending  # type: ignore[method-assign]
    for i in range(61):  # one running, 60 waiting
        chat.service.receive(alice, post(room_uuid, f"m{i}"), 100)
    assert frames(alice) == [] and chat.service.queued_frames == 60
    chat.store.post_message = real  # type: ignore[method-assign]
    pending.callback(None)  # the first one's store call answers: the 60 others follow, in order
    assert [f["Message"] for f in frames(alice)] == [f"m{i}" for i in range(61)]
    assert chat.service.queued_frames == 0 and alice.state.queued_bytes == 0
    assert alice.connection.closed is None

    chat.store.post_message = lambda *a: pending  # type: ignore[method-assign]
    pending = Deferred()
    for i in range(61):
        chat.service.receive(alice, post(room_uuid, f"n{i}"))
    assert chat.service.receive(alice, post(room_uuid, "one too many")) is None
    assert frames(alice) == [{"@type": "error", "error": "POST: too many chat frames waiting for the previous ones "
                                                         "(at most 60 frames, 983040 bytes): slow down"}]
    assert alice.connection.closed == (4029, "too many chat frames waiting")
    assert chat.service.limits_refused == {"queued_frames": 1}
    chat.store.post_message = real  # type: ignore[method-assign]
    stored = len(chat.messages(room_uuid))
    pending.callback(None)  # the one running ends; the 60 waiting are not handled: the socket is closing
    assert len(chat.messages(room_uuid)) == stored and chat.service.queued_frames == 0

    small = ChatHarness(max_queued_frames=10, max_queued_bytes=1000)
    bob = small.connect("bob")
    small.send(bob, join())
    small.store.post_message = lambda *a: Deferred()  # type: ignore[method-assign]
    for _ in range(3):  # one running (its size is not counted), two waiting: 800 bytes
        small.service.receive(bob, post(small.room()["Uuid"], "x"), 400)
    frames(bob)
    small.service.receive(bob, post(small.room()["Uuid"], "x"), 201)
    assert "at most 10 frames, 1000 bytes" in frames(bob)[0]["error"]
    assert small.service.limits_refused == {"queued_bytes": 1}


# --------------------------------------------------------------------------- presence


def test_presence_expires_without_join_or_ping() -> None:
    """A login leaves Users (with a ROOM_UPDATE) 20 s after its last JOIN or PING; a PING re-adds it."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.clock.advance(10)
    chat.send(bob, join())
    frames(alice), frames(bob)
    chat.clock.advance(9.9)
    assert chat.room()["Users"] == ["alice", "bob"]
    chat.clock.advance(0.1)
    assert chat.room()["Users"] == ["bob"]
    assert frames(bob) == [{"@type": "ROOM_UPDATE", "Room": dict(chat.room(), Users=["bob"])}]
    assert kinds(frames(alice)) == ["ROOM_UPDATE"]  # still attached: it still hears the room
    chat.clock.advance(5)
    chat.send(bob, ping())
    chat.clock.advance(15)
    assert chat.room()["Users"] == ["bob"]  # refreshed by the PING at 25 s
    chat.send(alice, ping())
    assert chat.room()["Users"] == ["alice", "bob"]
    assert frames(bob) == [{"@type": "ROOM_UPDATE", "Room": dict(chat.room(), Users=["alice", "bob"])}]
    chat.clock.advance(5)
    assert chat.room()["Users"] == ["alice"]


def test_a_ping_that_changes_nothing_publishes_nothing() -> None:
    """A PING from a present login refreshes presence without broadcasting."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    events = len(chat.bus.events)
    chat.send(alice, ping())
    assert len(chat.bus.events) == events
    assert frames(alice)[-1]["@type"] == "ROOM_UPDATE"


def test_presence_ends_when_the_logins_last_socket_closes() -> None:
    """Closing one of two sockets of a login keeps it present; closing the last removes it at once."""
    chat = ChatHarness()
    tab1, tab2, bob = chat.connect("alice"), chat.connect("alice"), chat.connect("bob")
    for s in (tab1, tab2, bob):
        chat.send(s, join())
    frames(bob)
    chat.close(tab1)
    assert chat.room()["Users"] == ["alice", "bob"]
    assert frames(bob) == []
    chat.close(tab2)
    assert chat.room()["Users"] == ["bob"]
    assert frames(bob) == [{"@type": "ROOM_UPDATE", "Room": dict(chat.room(), Users=["bob"])}]
    chat.close(bob)
    assert chat.room()["Users"] == []


def test_leave_keeps_presence_while_another_socket_of_the_login_stays() -> None:
    """LEAVE from one tab detaches that tab only; the login stays present through its other tab."""
    chat = ChatHarness()
    tab1, tab2 = chat.connect("alice"), chat.connect("alice")
    chat.send(tab1, join())
    chat.send(tab2, join())
    chat.send(tab1, {"@type": "LEAVE", "Room": {"Type": "WORKSPACE", "RoomTypeObject": "ws-1"}})
    assert chat.room()["Users"] == ["alice"]
    frames(tab1), frames(tab2)
    chat.send(tab2, post(chat.room()["Uuid"], "hi"))
    assert frames(tab1) == [] and len(frames(tab2)) == 1


def test_closing_after_expiry_changes_nothing() -> None:
    """A socket closing after its presence expired does not publish a second removal."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    chat.clock.advance(20)
    events = len(chat.bus.events)
    chat.close(alice)
    assert len(chat.bus.events) == events
    assert chat.room()["Users"] == []


def test_stop_cancels_presence_timers() -> None:
    """stop() stops the presence sweep: nothing is left on the clock."""
    chat = ChatHarness()
    chat.send(chat.connect("alice"), join())
    assert chat.clock.getDelayedCalls()
    chat.service.stop()
    assert chat.clock.getDelayedCalls() == []


def test_idle_sockets_cost_no_timer() -> None:
    """Presence costs no timer per login or socket: with 60 sockets in 6 rooms the sweep is the one call
    on the clock."""
    chat = ChatHarness()
    for n in range(60):
        chat.send(chat.connect(f"user{n}"), join("NODE", f"node-{n % 6}"))
    assert len(chat.clock.getDelayedCalls()) == 1


def test_presence_of_a_dead_instance_ends_on_the_others() -> None:
    """Issue 11 §6: the instance holding alice's only socket dies without closing it; with nobody touching the
    room afterwards, the other instance's sweep takes her out of Users at her deadline (20 s after her last
    JOIN, within one sweep) and bob gets the ROOM_UPDATE, once."""
    chat = ChatHarness(instances=2)
    alice, bob = chat.connect("alice"), chat.connect("bob", instance=1)
    chat.send(alice, join())
    chat.clock.advance(10)
    chat.send(bob, join())
    chat.kill(0)
    frames(bob)
    chat.clock.advance(9.5)
    assert chat.room()["Users"] == ["alice", "bob"] and frames(bob) == []
    chat.clock.advance(1)
    assert chat.room()["Users"] == ["bob"]
    assert frames(bob) == [{"@type": "ROOM_UPDATE", "Room": dict(chat.room(), Users=["bob"])}]
    assert chat.services[1].presences_expired == 1


def test_a_restarted_instance_ends_the_presence_of_its_previous_life() -> None:
    """The only instance dies and another starts on the same store, knowing nothing of alice: its sweep ends
    her presence at her deadline, and bob, who joined the new instance meanwhile, gets the ROOM_UPDATE."""
    chat = ChatHarness()
    chat.send(chat.connect("alice"), join())
    chat.clock.advance(5)
    chat.kill(0)
    chat.restart(0)
    bob = chat.connect("bob")
    chat.send(bob, join())
    assert chat.room()["Users"] == ["alice", "bob"]
    frames(bob)
    chat.clock.advance(15)
    assert chat.room()["Users"] == ["bob"]
    assert frames(bob) == [{"@type": "ROOM_UPDATE", "Room": dict(chat.room(), Users=["bob"])}]


def test_a_sweep_removes_a_bounded_number_of_presences() -> None:
    """When many presences are due at once (a large instance died), one sweep removes at most 1000 of them,
    in store calls of 100, and the next sweep goes on with the rest; each changed room is announced."""
    chat = ChatHarness()
    for r in range(3):
        seed = chat.connect("seed")
        chat.send(seed, join("NODE", f"n{r}"))
        chat.close(seed)
    uuids = [chat.room("NODE", f"n{r}")["Uuid"] for r in range(3)]
    for n in range(1500):
        chat.store.touch_user(uuids[n % 3], f"user{n}", START, START + 20)
    calls = []
    expire = chat.store.expire_users
    chat.store.expire_users = lambda now, limit: (calls.append(limit), expire(now, limit))[1]  # type: ignore
    events = len(chat.bus.events)
    chat.clock.advance(20)
    assert calls == [100] * 10 and chat.service.presences_expired == 1000
    announced = chat.bus.events[events:]
    assert 10 <= len(announced) <= 30  # each changed room, once per store call
    stored = {room["Uuid"]: room["Users"] for room in (chat.room("NODE", f"n{r}") for r in range(3))}
    latest = {e["Room"]["Uuid"]: e["Room"]["Users"] for e in announced}  # each room's latest announcement
    assert latest == {u: stored[u] for u in latest}
    chat.clock.advance(1)
    assert calls == [100] * 16 and chat.service.presences_expired == 1500  # the 16th found none left
    assert all(chat.room("NODE", f"n{r}")["Users"] == [] for r in range(3))
    assert {e["Room"]["Uuid"]: e["Room"]["Users"] for e in chat.bus.events[events:]} == {u: [] for u in uuids}


def test_the_sweep_goes_on_after_the_store_fails() -> None:
    """A sweep that finds the store unavailable changes nothing and the next sweeps retry until it answers."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    expire = chat.store.expire_users
    chat.store.expire_users = lambda now, limit: fail(StoreUnavailable("redis is down"))  # type: ignore
    chat.clock.advance(25)
    assert chat.room()["Users"] == ["alice", "bob"]
    chat.store.expire_users = expire  # type: ignore
    chat.clock.advance(1)
    assert chat.room()["Users"] == []


# --------------------------------------------------------------------------- ordering


def test_broadcasts_during_a_join_wait_for_its_room_update() -> None:
    """While a JOIN waits on the store, room broadcasts are held: the joiner gets ROOM_UPDATE, then them."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    room = chat.room()
    frames(alice)
    pending = chat.stall("touch_user", bob, join())
    chat.send(alice, post(room["Uuid"], "during the join"))
    assert frames(bob) == []
    pending.callback((dict(room, Users=["alice", "bob"]), True))
    got = frames(bob)
    assert kinds(got) == ["ROOM_UPDATE", "message", "ROOM_UPDATE"]
    assert got[1]["Message"] == "during the join"


def test_broadcasts_held_during_a_history_count_against_the_sockets_byte_bound() -> None:
    """While a HISTORY of a joined room waits on the store, every broadcast of the room is held (1500 of them:
    none dropped, as past 1000 before) and counted in the socket's flow; released after the page, in order.
    Past the flow's byte bound the socket overflows (the gateway closes it 4008): nothing is dropped silently."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    room_uuid = chat.room()["Uuid"]
    frames(alice), frames(bob)
    pending: Deferred = Deferred()
    chat.store.page = lambda *a: pending  # type: ignore[method-assign]
    chat.service.receive(bob, history())
    for i in range(1500):
        chat.send(alice, post(room_uuid, f"m{i}"))
    assert frames(bob) == []
    held_bytes = bob.flow.waiting[1]
    assert held_bytes == sum(len(p) + ENTRY_COST for p in bob.state.held[room_uuid]) > 1500 * ENTRY_COST
    pending.callback([])
    got = frames(bob)
    assert kinds(got[:1]) == ["ROOM_UPDATE"] and [f["Message"] for f in got[1:]] == [f"m{i}" for i in range(1500)]
    assert bob.flow.waiting == (0, 0) and bob.state.held == {}

    overflows: list[str] = []
    bob.flow = Flow(bob.connection.write, lambda: overflows.append("4008"), max_bytes=held_bytes // 2)
    pending = Deferred()
    chat.service.receive(bob, history())
    for i in range(1500):
        chat.send(alice, post(room_uuid, f"n{i}"))
    assert overflows == ["4008"] and bob.flow.stopped


def test_broadcasts_during_a_join_wait_for_its_history() -> None:
    """With history_on_join, while a JOIN loads history, room broadcasts are held: the joiner gets ROOM_UPDATE,
    history, then them."""
    chat = ChatHarness(history_on_join=True)
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    room = chat.room()
    seed(chat, room["Uuid"], 2)
    frames(alice)
    snapshot = chat.messages(room["Uuid"])
    pending: Deferred = Deferred()
    chat.store.page = lambda *a: pending  # type: ignore[method-assign]
    d = chat.service.receive(bob, join())
    chat.send(alice, post(room["Uuid"], "during the join"))
    assert frames(bob) == []
    pending.callback(snapshot)
    assert d is not None and d.called
    got = frames(bob)
    assert kinds(got) == ["ROOM_UPDATE", "message", "message", "message", "ROOM_UPDATE"]
    assert got[3]["Message"] == "during the join"


def test_a_ping_reattaching_a_room_sends_room_update_before_messages() -> None:
    """After a reconnect, the PING that re-attaches a room sends ROOM_UPDATE before any message of it."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.close(alice)
    again = chat.connect("alice")
    chat.bus.hold()
    chat.send(again, ping())
    chat.send(bob, join())
    chat.send(bob, post(chat.room()["Uuid"], "welcome back"))
    chat.bus.flush()
    got = frames(again)
    assert got[0] == {"@type": "ROOM_UPDATE", "Room": dict(chat.room(), Users=["alice"])}
    assert "welcome back" in [f.get("Message") for f in got]


def test_no_message_reaches_a_socket_without_a_room_update_first() -> None:
    """Across a whole conversation, every message a socket gets follows a ROOM_UPDATE of that room."""
    chat = ChatHarness(instances=2)
    alice, bob = chat.connect("alice"), chat.connect("bob", instance=1)
    chat.send(alice, join())
    chat.send(bob, ping())  # refused: nothing to re-attach yet
    chat.send(bob, join())
    room = chat.room()
    for n in range(3):
        chat.send(alice, post(room["Uuid"], f"m{n}"))
        chat.send(bob, post(room["Uuid"], f"b{n}"))
    chat.send(bob, history())
    for session in (alice, bob):
        seen: set[str] = set()
        for f in frames(session):
            if f.get("@type") == "ROOM_UPDATE":
                seen.add(f["Room"]["Uuid"])
            elif "RoomUuid" in f and f.get("@type") is None:
                assert f["RoomUuid"] in seen


def test_frames_of_a_socket_run_in_order() -> None:
    """A POST sent right after a JOIN whose store call is still pending runs after the JOIN, and succeeds."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    pending = chat.stall("find_or_create_room", alice, join())
    d = chat.service.receive(alice, {"@type": "POST", "Room": {"Type": "WORKSPACE", "RoomTypeObject": "ws-1"},
                                          "Message": {"Message": "first!"}})
    assert frames(alice) == []
    pending.callback(chat.store.find_or_create_room("WORKSPACE", "ws-1", "", START).result)
    assert d is not None and d.called
    assert kinds(frames(alice)) == ["ROOM_UPDATE", "ROOM_UPDATE", "message"]


def test_a_socket_closing_during_a_join_leaves_no_presence() -> None:
    """A socket that closes while its JOIN is in flight ends with no presence and no frames."""
    chat = ChatHarness(history_on_join=True)  # the JOIN's last store call, held here, is the history page
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(bob, join())
    frames(bob)
    pending = chat.stall("page", alice, join())
    chat.close(alice)
    pending.callback([])
    assert chat.room()["Users"] == ["bob"]
    assert frames(alice) == []
    assert chat.rooms_of(alice) == frozenset()


# --------------------------------------------------------------------------- several instances


def test_a_post_on_one_instance_reaches_sockets_on_the_other() -> None:
    """Two instances on one store and bus: a room spans them, and so do its messages and presence."""
    chat = ChatHarness(instances=2)
    alice, bob = chat.connect("alice"), chat.connect("bob", instance=1)
    chat.send(alice, join())
    chat.send(bob, join())
    assert frames(alice)[-1]["Room"]["Users"] == ["alice", "bob"]
    frames(bob)
    chat.send(alice, post(chat.room()["Uuid"], "across"))
    assert [f["Message"] for f in frames(bob)] == ["across"]
    frames(alice)
    chat.close(bob)
    assert frames(alice) == [{"@type": "ROOM_UPDATE", "Room": dict(chat.room(), Users=["alice"])}]


def test_each_instance_expires_only_its_own_logins() -> None:
    """Instance A expiring its login leaves the logins kept alive on instance B in Users."""
    chat = ChatHarness(instances=2)
    alice, bob = chat.connect("alice"), chat.connect("bob", instance=1)
    chat.send(alice, join())
    chat.clock.advance(10)
    chat.send(bob, join())
    chat.clock.advance(10)
    assert chat.room()["Users"] == ["bob"]
    chat.clock.advance(10)
    assert chat.room()["Users"] == []


def test_a_fresher_presence_on_another_instance_survives_a_close() -> None:
    """A login on two instances: closing its socket on one keeps it when the other refreshed it later."""
    chat = ChatHarness(instances=2)
    here, there = chat.connect("carol"), chat.connect("carol", instance=1)
    chat.send(here, join())
    chat.clock.advance(5)
    chat.send(there, join())
    chat.close(here)
    assert chat.room()["Users"] == ["carol"]
    chat.clock.advance(20)
    assert chat.room()["Users"] == []


# --------------------------------------------------------------------------- bus events


def test_events_from_other_services_are_broadcast_to_the_room() -> None:
    """Message, DELETE and Room events published by anyone reach this instance's sockets in that room only."""
    chat = ChatHarness()
    alice, outsider = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(outsider, join("NODE", "elsewhere"))
    room = chat.room()
    frames(alice), frames(outsider)
    message = {"Uuid": "x1", "RoomUuid": room["Uuid"], "Message": "from a bot", "Author": "bot", "Timestamp": "1"}
    chat.service.handle({"Message": message})
    chat.service.handle({"Message": message, "Details": "DELETE"})
    chat.service.handle({"Room": dict(room, RoomLabel="Renamed")})
    assert frames(alice) == [
        message, {"@type": "DELETE_MSG", "Message": message},
        {"@type": "ROOM_UPDATE", "Room": dict(room, RoomLabel="Renamed")},
    ]
    assert frames(outsider) == []
    chat.service.handle({"Room": {"Uuid": "no-sockets-here"}})


@pytest.mark.parametrize("event", [
    [],
    {},
    {"Details": "DELETE"},
    {"Message": "text"},
    {"Message": {"Message": "no room"}},
    {"Message": {"RoomUuid": 5}},
    {"Message": {"RoomUuid": "r"}, "Details": 1},
    {"Room": {"Users": []}},
    {"Room": ["x"]},
])
def test_malformed_chat_events_raise(event: Any) -> None:
    """A chat event of the wrong shape raises MalformedEvent (the dispatcher logs and drops it)."""
    chat = ChatHarness()
    with pytest.raises(MalformedEvent):
        chat.service.handle(event)


def test_unsubscribed_sockets_receive_nothing() -> None:
    """A socket whose access was cleared receives no broadcast of rooms it had joined."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    frames(bob)
    bob.access = None
    chat.send(alice, post(chat.room()["Uuid"], "anyone?"))
    assert frames(bob) == []


def test_frames_queued_behind_a_close_do_nothing() -> None:
    """Frames still queued when their socket closes are dropped: no room joined, nothing sent."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    pending = chat.stall("find_or_create_room", alice, join())
    queued = chat.service.receive(alice, join("NODE", "n1"))
    chat.close(alice)
    pending.callback(chat.store.find_or_create_room("WORKSPACE", "ws-1", "", START).result)
    assert queued is not None and queued.called
    assert frames(alice) == []
    assert chat.store.find_room("NODE", "n1").result is None
    assert chat.room()["Users"] == []


def test_long_messages_with_markup_are_sanitized_off_the_reactor() -> None:
    """A long POST holding markup is sanitized through the offload hook (a worker thread in the daemon);
    a short one, or one without markup, is sanitized inline."""
    calls: list[int] = []

    def offload(f: Any, *args: Any) -> Deferred[Any]:
        calls.append(len(args[0]))
        return succeed(f(*args))

    chat = ChatHarness(offload=offload)
    alice = chat.connect("alice")
    chat.send(alice, join())
    room = chat.room()
    frames(alice)
    long_markup = "x" * 1500 + "<img src=x onerror=alert(1)> **bold**"
    for text in ("short <b>bold</b>", "y" * 3000, long_markup):
        chat.send(alice, post(room["Uuid"], text))
    assert calls == [len(long_markup)]
    assert [m["Message"] for m in chat.messages(room["Uuid"])] == ["short bold", "y" * 3000, "x" * 1500 + " **bold**"]


def test_an_edit_is_checked_before_its_text_is_sanitized(monkeypatch: pytest.MonkeyPatch) -> None:
    """Who may edit (a stored message of this room, written by the login, edits left) is checked before costly
    work on the text (a long one with markup): a peer cannot make the server spend it on a message it may not
    edit. A short edit goes straight to the store, which checks the same (one store call, not two)."""
    import wsgw.chat.actions as actions

    sanitized: list[str] = []
    real = actions.sanitize_markdown
    monkeypatch.setattr(actions, "sanitize_markdown", lambda text: sanitized.append(text) or real(text))
    chat = ChatHarness(max_edits_per_message=1)
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    room_uuid = chat.room()["Uuid"]
    sanitized.clear()  # (the JOINs' labels)
    chat.send(alice, post(room_uuid, "mine"))
    uuid_ = chat.messages(room_uuid)[0]["Uuid"]
    chat.send(alice, post(room_uuid, "mine, edited", Uuid=uuid_))
    assert sanitized == ["mine", "mine, edited"]
    frames(alice), frames(bob)
    for who, target, words in ((bob, uuid_, ("someone else",)), (bob, "no-such", ("no such message",)),
                               (alice, uuid_, ("edited too many times", "at most 1 edits"))):
        chat.send(who, post(room_uuid, "<b>" + "x" * 5000 + "</b>", Uuid=target))
        assert_error(who, "POST", *words)
    assert sanitized == ["mine", "mine, edited"]
    assert chat.service.limits_refused == {"edits_per_message": 1}


def test_ids_that_utf8_cannot_hold_are_refused_clearly() -> None:
    """A lone surrogate (valid in a JSON escape) in a room's type object or uuid, or in a message uuid, is
    refused with the field's rule, never passed to the store (Redis cannot encode it: "internal error" and a
    traceback, before); in a label it becomes U+FFFD like in a message."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    room_uuid = chat.room()["Uuid"]
    frames(alice)
    bad = "x\ud800"
    for frame, words in (
        (join("NODE", bad), ("JOIN", "Room.RoomTypeObject must be a string of at most 512")),
        (history({"Uuid": bad}), ("HISTORY", "Room.Uuid must be a string of at most 512")),
        (post(room_uuid, "edit", Uuid=bad), ("POST", "Message.Uuid must be a string of at most 512")),
        ({"@type": "DELETE_MSG", "Message": {"RoomUuid": room_uuid, "Uuid": bad}},
         ("DELETE_MSG", "Message.Uuid must be a string of at most 512")),
        ({"@type": "DELETE_MSG", "Message": {"RoomUuid": room_uuid, "Uuid": "m" * 513}},
         ("DELETE_MSG", "Message.Uuid must be a string of at most 512")),
    ):
        chat.send(alice, frame)
        assert_error(alice, *words)
    chat.send(alice, join("NODE", "n-1", RoomLabel="label \ud800"))
    assert chat.room("NODE", "n-1")["RoomLabel"] == "label \ufffd"
