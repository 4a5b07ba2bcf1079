"""Chat changes whose store call got no answer (issue 11, section 5): an unknown outcome is not a failure.

A private Redis is frozen (SIGSTOP) while a client changes something; the chat store's timeout
(``[chat] store_timeout``) is short so that the call times out within the freeze. The change may still be
applied when Redis resumes: the peer is told that the outcome is unknown (never "failed"), and once Redis
answers the change is stored once and broadcast once to the room's other sockets. The daemon reaches Redis
through a relay that ends each connection with a FIN, so a command the daemon gave up on still runs when
Redis resumes (a direct RST would make the kernel drop it unread).

Then the service on the test harness, the store's answer fired by the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from tests.support.daemon import Daemon, StartGateway, scrape, token, value
from tests.support.redis_server import RedisServer
from tests.support.relay import Relay
from tests.support.waiting import wait_until
from tests.support.wsclient import Client, connect
from wsgw.chat.model import NotAuthor, OutcomeUnknown
from wsgw.sessions import Session
from wsgw.testing import ChatHarness, frames, join, kinds, post

STORE_TIMEOUT = 2.0  # [chat] store_timeout of the daemon under test (seconds): short, but never hit unfrozen

Frame = dict[str, Any]


async def chat_client(daemon: Daemon, login: str) -> Client:
    client = await connect(daemon.port, "/chat")
    answer = await client.subscribe(token(login))
    assert answer["@type"] == "subscribed"
    client.login = login  # type: ignore[attr-defined]
    return client


async def next_matching(client: Client, match: Callable[[Frame], bool], limit: int = 50) -> Frame:
    for _ in range(limit):
        frame = await client.next(timeout=15)
        if match(frame):
            return frame
    raise AssertionError(f"no matching frame within {limit} frames")


def is_update(frame: Frame) -> bool:
    return frame.get("@type") == "ROOM_UPDATE"


def is_error(frame: Frame) -> bool:
    return frame.get("@type") == "error"


def is_message(frame: Frame) -> bool:
    return "@type" not in frame and "RoomUuid" in frame


async def joined(client: Client, room: Frame, *others: Client) -> str:
    """JOIN and wait until it is done and this socket and ``others`` (already in the room) got a ROOM_UPDATE
    listing the login (earlier ROOM_UPDATEs may still be on their way: they are skipped)."""
    client.send_json({"@type": "JOIN", "Room": room})
    update = await next_matching(client, lambda f: is_update(f) and client.login in f["Room"]["Users"])
    client.send_json({"@type": "marker"})  # answered once the JOIN is done: frames are handled in order
    await next_matching(client, lambda f: is_error(f) and "marker" in f["error"])
    for other in others:
        await next_matching(other, lambda f: is_update(f) and client.login in f["Room"]["Users"])
    return str(update["Room"]["Uuid"])


async def stored_until_marker(client: Client, room: Frame) -> list[Frame]:
    """The room's whole history, asked with HISTORY on ``client`` (its end known by an unknown frame sent after)."""
    client.send_json({"@type": "HISTORY", "Room": room, "Message": {"Message": ""}})
    client.send_json({"@type": "marker"})
    await next_matching(client, is_update)
    messages: list[Frame] = []
    while True:
        frame = await client.next(timeout=15)
        if is_error(frame) and "marker" in frame["error"]:
            return messages
        assert is_message(frame) or frame.get("@type") == "MAY_HAVE_MORE", frame
        messages.append(frame)


async def posted(sender: Client, other: Client, room_uuid: str, text: str, edit: str | None = None) -> Frame:
    """POST (an edit with ``edit``) before any freeze, and wait until both sockets got it. Each kind of change
    is made once before the freeze, so Redis knows its script: a late run of it then does the change instead of
    answering NOSCRIPT to nobody."""
    message = {"RoomUuid": room_uuid, "Message": text, **({"Uuid": edit} if edit else {})}
    sender.send_json({"@type": "POST", "Message": message})
    await next_matching(sender, lambda f: is_message(f) and f["Message"] == text)
    return await next_matching(other, lambda f: is_message(f) and f["Message"] == text)


async def drained(daemon: Daemon) -> None:
    """Until the daemon knows the outcome of every change it sent."""
    store = daemon.service.chat_store
    await wait_until(lambda: store.in_doubt == 0, "every change settled", timeout=20)


async def frames_until_marker(client: Client, sender: Client, room_uuid: str) -> list[Frame]:
    """Everything ``client`` receives up to a marker message ``sender`` posts now."""
    sender.send_json({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Message": "marker"}})
    got: list[Frame] = []
    while True:
        frame = await client.next(timeout=15)
        if frame.get("Message") == "marker":
            return got
        got.append(frame)


@pytest_twisted.async_yield_fixture
async def frozen_setup(gateway: StartGateway) -> AsyncIterator[tuple[RedisServer, Daemon]]:
    """A daemon on a private Redis, through a relay: a change the daemon gave up on still reaches Redis, which
    runs it when it resumes (as across most proxies, or a partition); its own resends reach Redis too."""
    with RedisServer() as redis:
        relay = await Relay.start(redis.port)
        try:
            daemon = await gateway(redis=relay.endpoint, overrides={"chat.store_timeout": str(STORE_TIMEOUT)},
                               admin="tcp:0:interface=127.0.0.1")
            yield redis, daemon
            await daemon.stop()
        finally:
            redis.thaw()
            await relay.stop()


async def answer_while_frozen(redis: RedisServer, sender: Client, frame: Frame) -> Frame:
    """Freeze Redis, send ``frame``, return the answer the sender gets, then thaw Redis."""
    redis.freeze()
    try:
        sender.send_json(frame)
        return await next_matching(sender, is_error)
    finally:
        redis.thaw()


ROOM = {"Type": "GLOBAL", "RoomTypeObject": "outcome"}


@pytest_twisted.ensureDeferred
async def test_a_post_during_a_freeze_is_stored_once_and_broadcast_once(
        frozen_setup: tuple[RedisServer, Daemon]) -> None:
    """The issue's input: the POST's store call times out; the answer says the outcome is unknown and not to
    send it again; once Redis resumes the message is stored once and bob gets it once."""
    redis, daemon = frozen_setup
    alice, bob = await chat_client(daemon, "alice"), await chat_client(daemon, "bob")
    room_uuid = await joined(alice, ROOM)
    await joined(bob, ROOM, alice)
    await posted(alice, bob, room_uuid, "warm-up")
    answer = await answer_while_frozen(redis, alice, {"@type": "POST", "Message": {"RoomUuid": room_uuid,
                                                                                  "Message": "in doubt"}})
    assert answer["error"] == ("POST: the chat store did not answer in time; the message will be posted once it "
                               "answers: do not send it again")
    got = await next_matching(bob, is_message)
    assert (got["Message"], got["Author"]) == ("in doubt", "alice")
    await drained(daemon)
    samples = await scrape(daemon)
    assert value(samples, "wsgw_chat_changes_resent_total") >= 1  # the daemon sent it again
    assert value(samples, "wsgw_chat_changes_in_doubt") == 0
    assert value(samples, "wsgw_chat_changes_refused_total") == 0
    assert [f for f in await frames_until_marker(bob, alice, room_uuid) if is_message(f)] == []
    history = await stored_until_marker(bob, ROOM)
    assert [m["Message"] for m in history] == ["warm-up", "in doubt", "marker"]
    assert history[1]["Uuid"] == got["Uuid"]


@pytest_twisted.ensureDeferred
async def test_an_edit_during_a_freeze_is_applied_once_and_broadcast_once(
        frozen_setup: tuple[RedisServer, Daemon]) -> None:
    redis, daemon = frozen_setup
    alice, bob = await chat_client(daemon, "alice"), await chat_client(daemon, "bob")
    room_uuid = await joined(alice, ROOM)
    await joined(bob, ROOM, alice)
    original = await posted(alice, bob, room_uuid, "zeroth")
    await posted(alice, bob, room_uuid, "first", edit=original["Uuid"])
    answer = await answer_while_frozen(redis, alice, {"@type": "POST", "Message": {
        "RoomUuid": room_uuid, "Uuid": original["Uuid"], "Message": "second"}})
    assert answer["error"] == ("POST: the chat store did not answer in time; the edit will be applied once it "
                               "answers: do not send it again")
    edited = await next_matching(bob, is_message)
    assert edited["Message"] == "second"
    assert [item["markdown"] for item in edited["Activity"]["items"]] == ["zeroth", "first"]
    await drained(daemon)
    assert [f for f in await frames_until_marker(bob, alice, room_uuid) if is_message(f)] == []
    history = await stored_until_marker(bob, ROOM)
    assert [(m["Message"], len(m.get("Activity", {}).get("items", []))) for m in history] == [
        ("second", 2), ("marker", 0)]


@pytest_twisted.ensureDeferred
async def test_a_delete_during_a_freeze_is_applied_and_broadcast_once(
        frozen_setup: tuple[RedisServer, Daemon]) -> None:
    redis, daemon = frozen_setup
    alice, bob = await chat_client(daemon, "alice"), await chat_client(daemon, "bob")
    room_uuid = await joined(alice, ROOM)
    await joined(bob, ROOM, alice)
    warm_up = await posted(alice, bob, room_uuid, "warm-up")
    alice.send_json({"@type": "DELETE_MSG", "Message": {"RoomUuid": room_uuid, "Uuid": warm_up["Uuid"]}})
    await next_matching(bob, lambda f: f.get("@type") == "DELETE_MSG")
    await next_matching(alice, lambda f: f.get("@type") == "DELETE_MSG")
    original = await posted(alice, bob, room_uuid, "doomed")
    answer = await answer_while_frozen(redis, alice, {"@type": "DELETE_MSG", "Message": {
        "RoomUuid": room_uuid, "Uuid": original["Uuid"]}})
    assert answer["error"] == ("DELETE_MSG: the chat store did not answer in time; the message will be deleted "
                               "once it answers: do not send it again")
    deleted = await next_matching(bob, lambda f: f.get("@type") == "DELETE_MSG")
    assert deleted["Message"]["Uuid"] == original["Uuid"]
    await drained(daemon)
    assert [f for f in await frames_until_marker(bob, alice, room_uuid)
            if f.get("@type") == "DELETE_MSG"] == []
    assert [m["Message"] for m in await stored_until_marker(bob, ROOM)] == ["marker"]


@pytest_twisted.ensureDeferred
async def test_a_join_during_a_freeze_is_announced_once_it_is_stored_and_may_be_repeated(
        frozen_setup: tuple[RedisServer, Daemon]) -> None:
    """JOIN's presence change (carol in Users) is idempotent: the answer says to try again; the presence
    stored late is announced to the room, and carol's JOIN again lists her once."""
    redis, daemon = frozen_setup
    alice, carol = await chat_client(daemon, "alice"), await chat_client(daemon, "carol")
    await joined(alice, ROOM)
    # carol's JOIN finds the room (it exists) and then times out storing her presence, or earlier
    answer = await answer_while_frozen(redis, carol, {"@type": "JOIN", "Room": ROOM})
    assert answer["error"] == ("JOIN: the chat store did not answer in time; send it again (a JOIN may be "
                               "repeated safely)")
    await drained(daemon)
    carol.send_json({"@type": "JOIN", "Room": ROOM})
    update = await next_matching(carol, is_update)
    assert update["Room"]["Users"] == ["alice", "carol"]
    await next_matching(alice, lambda f: is_update(f) and f["Room"]["Users"] == ["alice", "carol"])


@pytest_twisted.ensureDeferred
async def test_a_leave_during_a_freeze_is_announced_once_it_is_stored(
        frozen_setup: tuple[RedisServer, Daemon]) -> None:
    """Presence: carol's LEAVE detaches her socket at once; her removal from Users, stored when Redis
    resumes, is announced to alice once (before: the LEAVE was answered "unavailable", and the removal
    Redis made later was never announced)."""
    redis, daemon = frozen_setup
    alice, carol = await chat_client(daemon, "alice"), await chat_client(daemon, "carol")
    room_uuid = await joined(alice, ROOM)
    await joined(carol, ROOM, alice)
    carol.send_json({"@type": "LEAVE", "Room": ROOM})  # once before the freeze: Redis knows the script
    await next_matching(alice, lambda f: is_update(f) and f["Room"]["Users"] == ["alice"])
    await joined(carol, ROOM, alice)
    redis.freeze()
    try:
        carol.send_json({"@type": "LEAVE", "Room": ROOM})
        carol.send_json({"@type": "marker"})
        answer = await next_matching(carol, is_error)
        assert "marker" in answer["error"], answer  # the LEAVE itself was not refused
        await wait_until(lambda: daemon.service.chat_store.in_doubt >= 1, "the removal in doubt", timeout=10)
    finally:
        redis.thaw()
    await next_matching(alice, lambda f: is_update(f) and f["Room"]["Users"] == ["alice"])
    await drained(daemon)
    assert [f for f in await frames_until_marker(alice, alice, room_uuid) if is_update(f)] == []


# --------------------------------------------------------------------------- the service, on the test harness
# The store's call fails with OutcomeUnknown; the test fires its ``outcome`` when "Redis answers".


def _unknown(chat: ChatHarness, method: str, session: Session, frame: Frame) -> Deferred[Any]:
    """Send ``frame`` while the store's ``method`` has no answer (OutcomeUnknown); its outcome, to fire."""
    outcome: Deferred[Any] = Deferred()
    chat.stall(method, session, frame).errback(OutcomeUnknown("no answer in 10 s", outcome))
    return outcome


def _errors(session: Session) -> list[str]:
    return [f["error"] for f in frames(session) if f.get("@type") == "error"]


def test_a_post_in_doubt_is_published_once_when_the_store_answers() -> None:
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    room_uuid = chat.room()["Uuid"]
    frames(alice), frames(bob)
    outcome = _unknown(chat, "post_message", alice, post(room_uuid, "hello"))
    assert _errors(alice) == ["POST: the chat store did not answer in time; the message will be posted once it "
                              "answers: do not send it again"]
    assert frames(bob) == []
    assert len(chat.service._pending) == 1  # stop() waits for it  # type: ignore[attr-defined]
    outcome.callback(None)
    (got,) = frames(bob)
    assert (got["Message"], got["Author"]) == ("hello", "alice")
    assert frames(bob) == [] and kinds(frames(alice)) == ["message"]
    assert not chat.service._pending  # type: ignore[attr-defined]


def test_a_change_in_doubt_that_the_store_refuses_after_all_is_told_to_the_socket() -> None:
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    room_uuid = chat.room()["Uuid"]
    chat.send(bob, post(room_uuid, "bob's"))
    (mine,) = [f for f in frames(alice) if f.get("Author") == "bob"]
    frames(bob)
    outcome = _unknown(chat, "delete_message", alice, {"@type": "DELETE_MSG", "Message": {
        "RoomUuid": room_uuid, "Uuid": mine["Uuid"]}})
    assert _errors(alice) == ["DELETE_MSG: the chat store did not answer in time; the message will be deleted "
                              "once it answers: do not send it again"]
    outcome.errback(NotAuthor(mine["Uuid"]))
    assert _errors(alice) == ["DELETE_MSG: not done after all (the message was written by someone else)"]
    assert frames(bob) == []


def test_a_join_whose_presence_is_in_doubt_is_answered_try_again_and_announced_once_stored() -> None:
    """The presence of a JOIN in doubt: the socket is not attached (the answer: send it again); when the
    store answers that the login was added, the room is announced to its sockets."""
    chat = ChatHarness()
    alice, carol = chat.connect("alice"), chat.connect("carol")
    chat.send(alice, join())
    frames(alice)
    outcome = _unknown(chat, "touch_user", carol, join())
    assert _errors(carol) == ["JOIN: the chat store did not answer in time; send it again (a JOIN may be "
                              "repeated safely)"]
    assert chat.rooms_of(carol) == frozenset()
    room = chat.room()
    outcome.callback(({**room, "Users": ["alice", "carol"]}, True))
    (update,) = frames(alice)
    assert (update["@type"], update["Room"]["Users"]) == ("ROOM_UPDATE", ["alice", "carol"])
    assert frames(carol) == []  # not attached: it gets the room again when its JOIN is sent again


def test_a_leave_in_doubt_is_announced_once_stored() -> None:
    chat = ChatHarness()
    alice, carol = chat.connect("alice"), chat.connect("carol")
    chat.send(alice, join())
    chat.send(carol, join())
    frames(alice), frames(carol)
    room = chat.room()
    outcome = _unknown(chat, "remove_user", carol, {"@type": "LEAVE", "Room": {"Type": "WORKSPACE",
                                                                               "RoomTypeObject": "ws-1"}})
    assert frames(carol) == [] and chat.rooms_of(carol) == frozenset()  # left here; no error
    assert frames(alice) == []
    outcome.callback(({**room, "Users": ["alice"]}, True))
    (update,) = frames(alice)
    assert update["Room"]["Users"] == ["alice"]
