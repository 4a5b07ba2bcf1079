"""Chat frames racing the socket's life: a JOIN or HISTORY waiting on the store while the socket
re-subscribes, unsubscribes or changes login, and presence removals still in flight when the service stops.
The store answers only when the test releases it (``wsgw.testing.DelayedStore``).
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from wsgw.access import Access
from wsgw.sessions import Session
from wsgw.testing import WS, ChatHarness, frames, history, join, kinds, ping, post

# --------------------------------------------------------------------------- access changing mid-frame


def _access(login: str, workspaces: tuple = (WS,)) -> Access:
    return Access(login, f"sub-{login}", "standard", frozenset(), workspaces)


def _errors(session: Session) -> list[str]:
    return [f["error"] for f in frames(session) if f.get("@type") == "error"]


@pytest.mark.parametrize("slow", ["find_or_create_room", "touch_user", "page"])
def test_join_refused_when_the_access_loses_the_room_while_the_store_answers(slow: str) -> None:
    """A JOIN waiting on the store when a re-subscribe removes the workspace attaches nothing, is answered
    with an error, and the socket hears no message of that room afterwards."""
    chat = ChatHarness(slow=(slow,), history_on_join=True)  # every store call of a JOIN, the page too
    mallory, bob = chat.connect("mallory"), chat.connect("bob")
    done = chat.send(mallory, join())
    chat.resubscribe(mallory, _access("mallory", ()))
    chat.settle()
    assert done.called
    received = frames(mallory)
    assert kinds(received) == ["error"], received
    assert "JOIN" in received[0]["error"] and "not allowed" in received[0]["error"]
    assert chat.rooms_of(mallory) == frozenset()
    chat.send(bob, join())
    chat.settle()
    room_uuid = next(iter(chat.rooms_of(bob)))
    chat.send(bob, post(room_uuid, "the secret plan"))
    chat.settle()
    assert frames(mallory) == []
    assert chat.room()["Users"] == ["bob"]


@pytest.mark.parametrize("slow", ["find_or_create_room", "touch_user", "page"])
def test_join_refused_when_the_socket_unsubscribes_while_the_store_answers(slow: str) -> None:
    """A JOIN waiting on the store when the socket unsubscribes ends with a 'not subscribed' error,
    no attached room, no stored presence, and no internal error."""
    chat = ChatHarness(slow=(slow,), history_on_join=True)  # every store call of a JOIN, the page too
    alice = chat.connect("alice")
    done = chat.send(alice, join())
    chat.resubscribe(alice, None)
    chat.settle()
    assert done.called
    assert _errors(alice) == ["JOIN: not subscribed"]
    assert chat.rooms_of(alice) == frozenset()
    assert chat.room()["Users"] == []


@pytest.mark.parametrize("slow", ["find_or_create_room", "touch_user", "page"])
def test_join_refused_when_the_login_changes_while_the_store_answers(slow: str) -> None:
    """A JOIN sent as alice that completes after the socket re-subscribed as bob attaches nothing for either."""
    chat = ChatHarness(slow=(slow,), history_on_join=True)  # every store call of a JOIN, the page too
    tab = chat.connect("alice")
    done = chat.send(tab, join())
    chat.resubscribe(tab, _access("bob"))
    chat.settle()
    assert done.called
    errors = _errors(tab)
    assert len(errors) == 1 and errors[0].startswith("JOIN:"), errors
    assert chat.rooms_of(tab) == frozenset()
    assert chat.room()["Users"] == []


def test_join_goes_on_when_a_resubscribe_keeps_the_room() -> None:
    """A re-subscribe that still allows the room (token refresh) does not disturb a JOIN in flight."""
    chat = ChatHarness(slow=("find_or_create_room", "touch_user", "page"))
    alice = chat.connect("alice")
    done = chat.send(alice, join())
    chat.resubscribe(alice, _access("alice"))
    chat.settle()
    assert done.called
    assert set(kinds(frames(alice))) == {"ROOM_UPDATE"}  # its own, then the JOIN's broadcast
    assert len(chat.rooms_of(alice)) == 1
    assert chat.room()["Users"] == ["alice"]


def test_ping_refused_when_the_access_loses_the_room_while_the_store_answers() -> None:
    """A PING of a joined room waiting on the store when the room is revoked ends detached, with an error."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    frames(alice)
    chat.store.slow.add("touch_user")
    done = chat.send(alice, ping())
    chat.resubscribe(alice, _access("alice", ()))
    chat.settle()
    assert done.called
    assert [e for e in _errors(alice) if "not allowed" in e], "the PING is refused"
    assert chat.rooms_of(alice) == frozenset()
    assert chat.room()["Users"] == []


@pytest.mark.parametrize("slow", ["find_room", "page"])
def test_history_refused_when_the_access_loses_the_room_while_the_store_answers(slow: str) -> None:
    """A HISTORY waiting on the store when the room is revoked sends no message of it, only an error."""
    chat = ChatHarness()
    alice = chat.connect("alice")
    chat.send(alice, join())
    chat.send(alice, post(next(iter(chat.rooms_of(alice))), "secret"))
    chat.resubscribe(alice, _access("alice", ()))
    frames(alice)
    chat.resubscribe(alice, _access("alice"))  # the workspace is back: the HISTORY may start
    chat.store.slow.add(slow)
    done = chat.send(alice, history())
    chat.resubscribe(alice, _access("alice", ()))
    chat.settle()
    assert done.called
    received = frames(alice)
    assert kinds(received) == ["error"], received
    assert "HISTORY" in received[0]["error"] and "not allowed" in received[0]["error"]


def test_history_of_a_joined_room_refused_when_revoked_while_loading() -> None:
    """HISTORY of a joined room whose access is revoked while the page loads sends neither the page
    nor the broadcasts held meanwhile."""
    chat = ChatHarness()
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    room_uuid = next(iter(chat.rooms_of(alice)))
    frames(alice)
    chat.store.slow.add("page")
    done = chat.send(alice, history())
    chat.send(bob, post(room_uuid, "said while alice loads"))
    chat.resubscribe(alice, _access("alice", ()))
    chat.settle()
    assert done.called
    received = frames(alice)
    assert kinds(received) == ["error"], received


# --------------------------------------------------------------------------- 3. stop waits for presence


def test_stop_waits_for_the_presence_removals_of_closed_sockets() -> None:
    """stop() fires only once the leave started by a closing socket is stored and published."""
    chat = ChatHarness()
    store, service = chat.store, chat.service
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    chat.settle()
    store.slow.add("remove_user")
    chat.close(alice)
    chat.close(bob)
    stopped = service.stop()
    assert isinstance(stopped, Deferred) and not stopped.called
    assert store.release() == 2
    assert stopped.called
    assert chat.bus.events[-1]["Room"]["Users"] == []
    assert chat.clock.getDelayedCalls() == []


def test_stop_waits_for_an_expiry_in_flight() -> None:
    """stop() also waits for a presence expiry whose store update is still running."""
    chat = ChatHarness()
    store, service = chat.store, chat.service
    alice = chat.connect("alice")
    chat.send(alice, join())
    store.slow.add("expire_users")
    chat.clock.advance(20)
    assert store.pending
    stopped = service.stop()
    assert not stopped.called
    store.release()
    assert stopped.called
    assert chat.bus.events[-1]["Room"]["Users"] == []


def test_stop_fires_at_once_when_nothing_is_pending_and_survives_a_failed_leave() -> None:
    """stop() fires at once with nothing in flight, and a leave whose store call fails still lets it fire."""
    assert ChatHarness().service.stop().called
    chat = ChatHarness()
    store, service = chat.store, chat.service
    alice = chat.connect("alice")
    chat.send(alice, join())
    store.slow.add("remove_user")
    chat.close(alice)
    stopped = service.stop()
    (d, _), = store.pending
    d.errback(ConnectionError("redis went away"))
    assert stopped.called and stopped.result is None


def test_a_timed_out_stop_leaves_the_pending_leave_alone() -> None:
    """Cancelling stop()'s Deferred (its caller's timeout) neither cancels the leave nor breaks it later."""
    chat = ChatHarness()
    store, service = chat.store, chat.service
    alice = chat.connect("alice")
    chat.send(alice, join())
    store.slow.add("remove_user")
    chat.close(alice)
    stopped = service.stop()
    stopped.cancel()
    stopped.addErrback(lambda f: None)
    store.release()
    assert chat.bus.events[-1]["Room"]["Users"] == []
