"""Fakes shipped with the package, for tests of the core and of code built on it.

- ``RecordingConnection``: an ``IConnection`` that records what is sent and how it closed;
- ``IndexOnlyTable``: a ``SessionTable`` that fails a test whose code scans every session;
- ``ChatHarness``: chat instances (``ChatService``) on one in-memory store, one ``task.Clock`` and a bus
  that loops chat events back to every instance, driven as the gateway drives its endpoints; its store
  can hold chosen calls until released (a slow Redis); the builders ``join``, ``ping``, ``post`` and
  ``history`` make client chat frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from wsgw.access import Access, Root, Workspace
from wsgw.chat.membership import ChatSocket
from wsgw.chat.memory_store import MemoryChatStore
from wsgw.chat.model import Message, Room
from wsgw.chat.service import ChatService
from wsgw.interfaces import IChatStore, IConnection
from wsgw.sessions import Session, SessionTable

_trial = SynchronousTestCase()  # for its successResultOf
START = 1718022000.0  # the harness clock's start (unix seconds)
WS = Workspace("ws-1", "common", (Root("r1", "pydiods1/common", "common"),))  # the harness users' workspace


@implementer(IConnection)
class RecordingConnection:
    """An IConnection that records what is sent and how it was closed."""

    def __init__(self, peer: str = "test") -> None:
        self.peer = peer
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.aborted = False

    def write(self, payload: bytes) -> None:
        assert isinstance(payload, bytes)
        self.sent.append(payload)

    def close(self, code: int, reason: str) -> bool:
        if self.closed is not None:
            return False
        self.closed = (code, reason)
        return True

    def abort(self) -> None:
        self.aborted = True

    @property
    def frames(self) -> list[Any]:
        """What was sent, decoded."""
        return [json.loads(p) for p in self.sent]

    def clear(self) -> list[Any]:
        """What was sent since the last call, decoded."""
        frames = self.frames
        self.sent.clear()
        return frames


class IndexOnlyTable(SessionTable):
    """A SessionTable that fails the test if the code under test scans every session (PROTOCOL.md §4:
    recipients are found through the indexes)."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("recipients must be found through the indexes, never by scanning every session")


class LoopBus:
    """A chat topic shared by several ChatService instances; delivers at once, or on ``flush()`` after ``hold()``,
    or refuses every publish with ``failure`` while it is set (a bus that is down)."""

    def __init__(self) -> None:
        self.services: list[ChatService] = []
        self.events: list[dict[str, Any]] = []
        self.held: list[bytes] | None = None
        self.failure: Exception | None = None

    def publish(self, payload: bytes) -> Deferred[None]:
        assert isinstance(payload, bytes)
        if self.failure is not None:
            return fail(self.failure)
        if self.held is not None:
            self.held.append(payload)
        else:
            self._deliver(payload)
        return succeed(None)

    def _deliver(self, payload: bytes) -> None:
        event = json.loads(payload)
        self.events.append(event)
        for service in self.services:
            service.handle(event)

    def hold(self) -> None:
        """Keep what is published until ``flush()``."""
        self.held = []

    def flush(self) -> None:
        """Deliver what was held, in order, and stop holding."""
        held, self.held = self.held or [], None
        for payload in held:
            self._deliver(payload)


class DelayedStore(MemoryChatStore):
    """The memory store, but the ``slow`` methods answer only when ``release()`` is called (a slow Redis).
    Like one Redis connection it answers in order: while a call waits, every later call waits behind it."""

    def __init__(self, *slow: str) -> None:
        super().__init__()
        self.slow = set(slow)
        self.pending: list[tuple[Deferred[Any], Callable[[], Deferred[Any]]]] = []

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name in IChatStore.names() and (name in self.slow or self.pending):
            def delayed(*args: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                self.pending.append((d, lambda: value(*args)))
                return d
            return delayed
        return value

    def release(self) -> int:
        """Answer the calls waiting so far, in order (calls they cause wait for the next release);
        the number answered."""
        count = len(self.pending)
        for _ in range(count):
            d, call = self.pending.pop(0)
            call().chainDeferred(d)
        return count


class ChatHarness:
    """``instances`` chat services on one store, one clock and one loop bus; ``slow`` names store methods
    that wait for ``settle()`` (see ``DelayedStore``); ``options`` go to every ChatService."""

    def __init__(self, instances: int = 1, *, slow: tuple[str, ...] = (), **options: Any) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = DelayedStore(*slow)
        self.bus = LoopBus()
        self.services = [ChatService(self.clock, self.store, self.bus.publish, **options) for _ in range(instances)]
        self.bus.services.extend(self.services)
        for service in self.services:
            service.start()

    @property
    def service(self) -> ChatService:
        """The first instance."""
        return self.services[0]

    def connect(self, login: str, *, instance: int = 0, profile: str = "standard", sub: str | None = None,
                workspaces: tuple[Workspace, ...] = (WS,)) -> Session:
        """A socket of ``login`` opened on ``instance`` and subscribed."""
        service = self.services[instance]
        session = Session(RecordingConnection(login), service)
        service.opened(session)
        service.subscribe(session, Access(login, sub or f"sub-{login}", profile, frozenset(), workspaces))
        return session

    def resubscribe(self, session: Session, access: Access | None) -> None:
        """A subscribe with ``access`` (None: an unsubscribe), as the gateway hands it over."""
        assert session.endpoint is not None
        if access is None:
            session.endpoint.unsubscribe(session)
        else:
            session.endpoint.subscribe(session, access)

    def close(self, session: Session) -> None:
        """The socket closed, as the gateway reports it."""
        session.open = False
        assert session.endpoint is not None
        session.endpoint.closed(session)

    def send(self, session: Session, frame: dict[str, Any]) -> Deferred[None] | None:
        """A client frame; with no slow store method, it is done when this returns."""
        assert session.endpoint is not None
        d = session.endpoint.receive(session, frame)
        assert self.store.slow or d is None or d.called, "the in-memory store answers at once"
        return d

    def stall(self, method: str, session: Session, frame: dict[str, Any]) -> Deferred[Any]:
        """Send ``frame`` while the store's ``method`` answers with a Deferred the test fires; return it."""
        real = getattr(self.store, method)
        pending: Deferred[Any] = Deferred()
        setattr(self.store, method, lambda *a: pending)
        try:
            self.service.receive(session, frame)
        finally:
            setattr(self.store, method, real)
        return pending

    def kill(self, instance: int) -> None:
        """The instance dies at once (SIGKILL): its sockets are never closed, its presence sweep stops,
        it hears the bus no more; what it stored stays in the store."""
        service = self.services[instance]
        service.stop()
        self.bus.services.remove(service)

    def restart(self, instance: int, **options: Any) -> ChatService:
        """A new instance in the place of a killed one, on the same store and bus, knowing nothing of its
        previous life; started, like a restarted daemon."""
        service = self.services[instance] = ChatService(self.clock, self.store, self.bus.publish, **options)
        self.bus.services.append(service)
        service.start()
        return service

    def rooms_of(self, session: Session) -> frozenset[str]:
        """The room uuids the socket has joined."""
        state = session.state
        return frozenset(state.rooms) if isinstance(state, ChatSocket) else frozenset()

    def settle(self) -> None:
        """Release the slow store until nothing waits any more."""
        for _ in range(20):
            if not self.store.release():
                return
        raise AssertionError("the store never settled")

    def room(self, type: str = "WORKSPACE", obj: str = "ws-1") -> Room:
        """The stored room ``(type, obj)``, which must exist."""
        found: Room | None = _trial.successResultOf(MemoryChatStore.find_room(self.store, type, obj))
        assert found is not None
        return found

    def messages(self, room_uuid: str) -> list[Message]:
        """The room's stored history, oldest first."""
        history: list[Message] = _trial.successResultOf(MemoryChatStore.page(self.store, room_uuid, 0, 0))
        return history


def frames(session: Session) -> list[Any]:
    """Frames the socket (on a ``RecordingConnection``) received since the last call, decoded."""
    connection = session.connection
    assert isinstance(connection, RecordingConnection)
    return connection.clear()


def kinds(received: list[Any]) -> list[str]:
    """The ``@type`` of each frame, ``message`` for a chat message."""
    return [f.get("@type", "message") for f in received]


def join(type: str = "WORKSPACE", obj: str = "ws-1", **room: Any) -> dict[str, Any]:
    """A JOIN frame."""
    return {"@type": "JOIN", "Room": {"Type": type, "RoomTypeObject": obj, **room}}


def ping(type: str = "WORKSPACE", obj: str = "ws-1") -> dict[str, Any]:
    """A JOIN frame carrying the PING heartbeat."""
    return {"@type": "JOIN", "Room": {"Type": type, "RoomTypeObject": obj}, "Message": {"Message": "PING"}}


def post(room_uuid: str, text: str, **fields: Any) -> dict[str, Any]:
    """A POST frame (an edit with ``Uuid=``)."""
    return {"@type": "POST", "Message": {"RoomUuid": room_uuid, "Message": text, **fields}}


def history(room: dict[str, Any] | None = None, **paging: int) -> dict[str, Any]:
    """A HISTORY frame, with ``Offset``/``Limit`` when given."""
    frame: dict[str, Any] = {"@type": "HISTORY", "Room": room or {"Type": "WORKSPACE", "RoomTypeObject": "ws-1"}}
    if paging:
        frame["Message"] = {"Message": json.dumps(paging)}
    return frame
