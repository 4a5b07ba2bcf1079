"""Sessions, the session table, the one fan-out loop and the scopes frames are produced for.

``Session`` is one client socket and what the core holds for it (its frames wait in
its ``wsgw.flow.Flow``). ``SessionTable``
is the one registry of the open sessions of every endpoint, and the indexes
(login, sub, role, workspace, admin, root path) through which the topic handlers
find the sessions an event concerns, never by scanning. ``fan_out`` hands one
frame to many sessions, isolating each recipient's failure. A frame's scope
(``ForLogin``, and the node, IDM and chat scopes of their modules) says what
access produced it, so that an access change
drops the frames still waiting that the new access would not produce (PROTOCOL.md
§3.1, §4.1).
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
from mypy_extensions import mypyc_attr
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsgw.access import Access, Workspace
from wsgw.flow import Flow, Scope
from wsgw.interfaces import IConnection, IEndpoint

if TYPE_CHECKING:
    from collections.abc import Set as AbstractSet

_ids = itertools.count(1)
_log = Logger(namespace=__name__)  # named: compiled (mypyc), Logger() finds no module


@attrs.frozen
class Census:
    """The open sessions right now: ``open`` and ``subscribed`` by endpoint name; ``waiting_frames`` and
    ``waiting_bytes``, what their flows hold (paced, or blocked by a client that reads slowly)."""

    open: Counter[str]
    subscribed: Counter[str]
    waiting_frames: int
    waiting_bytes: int


class Session:
    """One client socket of an endpoint and, once subscribed, the user's Access.

    ``flow`` holds its frames not yet written (made by the gateway; None for a session that was never
    opened by one); ``state`` belongs to the endpoint (the chat keeps its per-socket state there);
    ``timer``, ``attempt``, ``waiting`` and ``token`` to the gateway (the token's expiry, the count of
    subscribe attempts, the client frames waiting for a subscribe in flight, the token its access came from when
    the resolver can re-derive it).
    """

    __slots__ = ("sid", "endpoint", "connection", "access", "flow", "state", "timer", "attempt", "waiting", "open",
                 "token", "__weakref__")

    def __init__(self, connection: IConnection, endpoint: IEndpoint | None = None, flow: Flow | None = None) -> None:
        self.sid = next(_ids)
        self.endpoint = endpoint
        self.connection = connection
        self.access: Access | None = None
        self.flow = flow if flow is not None else Flow(connection.write)
        self.state: Any = None
        self.timer: IDelayedCall | None = None
        self.attempt = 0
        self.waiting: deque[tuple[dict[str, Any], int]] | None = None  # (frame, size on the wire)
        self.open = True
        self.token: str | None = None

    def send(self, payload: bytes, scope: Scope | None = None) -> None:
        """Send one frame, not paced (a reply, a chat frame); ``scope``: what access produced it (None: a reply)."""
        self.flow.send(payload, scope)

    def __repr__(self) -> str:
        who = self.access.login if self.access else "-"
        where = self.endpoint.name if self.endpoint is not None else "-"
        return f"<Session {self.sid} {where} {who}>"


def fan_out(recipients: Iterable[Session], frame: bytes, scope: Scope | None, *, paced: bool = False,
            optimistic: bool = False, what: str = "event") -> int:
    """Hand the same ``frame`` bytes, produced for ``scope``, to each recipient's flow; returns how many took it.

    ``paced`` frames (node events, PROTOCOL.md §4.1) are paced, ``optimistic`` ones go past the pacing but
    after what it holds; others (tasks, IDM, activity, chat) are not paced. A recipient whose send raises
    is logged (``what`` names the kind of frame) and skipped: one broken socket never stops the others.
    Iterates over a snapshot, since a send may close a session and shrink the live index ``recipients``
    came from. (The choice is made once here, not per recipient: this loop runs once per delivery.)
    """
    sent = 0
    for session in tuple(recipients):
        try:
            if not paced:
                session.flow.send(frame, scope)
            elif optimistic:
                session.flow.optimistic(frame, scope)
            else:
                session.flow.paced(frame, scope)
        except Exception:  # noqa: BLE001 - isolate a broken recipient
            _log.failure("{what} to session {sid} failed", what=what, sid=session.sid)
        else:
            sent += 1
    return sent


def take_census(sessions: Iterable[Session]) -> Census:
    """Count ``sessions`` by endpoint name, subscribed or not, and what their flows hold (``wsgw.gateway.Gateway``'s
    census: a scan, for /metrics at scrape time, never per event)."""
    # plain dicts while counting (compiled, a dict's item set is a C call, a Counter's a Python slot: ~1,000
    # instructions each, callgrind), Counters once counted
    open_: dict[str, int] = {}
    subscribed: dict[str, int] = {}
    frames = size = 0
    for session in sessions:
        name = session.endpoint.name if session.endpoint is not None else "-"
        open_[name] = open_.get(name, 0) + 1
        if session.access is not None:
            subscribed[name] = subscribed.get(name, 0) + 1
        waiting = session.flow.waiting
        frames += waiting[0]
        size += waiting[1]
    return Census(Counter(open_), Counter(subscribed), frames, size)


class Deadlines:
    """Sessions held until a deadline ``timeout`` s after each is added (the gateway's auth timeout, PROTOCOL.md §2),
    then handed to ``expire(session)`` unless ``discard``-ed first (``timeout`` 0: none is held).

    One reactor timer for all, not one each: held in the order added, which is their deadlines' order, only the
    first deadline is scheduled; a discard is a dict deletion, not a timer's cancel or move. (A reactor timer per
    session, moved on to the token's expiry at subscribe, came due 30 s after each connect anyway: a re-sort of the
    reactor's heap in Twisted's runUntilCurrent, ~1.6 µs a socket, 16 ms for a storm of 10,000; bench/RESULTS.md
    "Auth deadlines".) When the clock went back (the reactor's is the wall clock: NTP, a restored VM), those held
    are due no later than the one added, which would otherwise wait behind them (they have waited longer).
    The timer is left to fire when the last session is discarded (a cancel costs the heap as much): at most one
    is pending. ``expire`` raising is logged; the other sessions due still expire."""

    def __init__(self, clock: IReactorTime, timeout: float, expire: Callable[[Session], object]) -> None:
        self._clock = clock
        self._timeout = timeout
        self._expire = expire
        self._held: dict[Session, float] = {}  # session -> deadline (s, the clock's), in the order added = theirs
        self._call: IDelayedCall | None = None
        self._latest = 0.0  # the latest deadline added

    def __len__(self) -> int:
        return len(self._held)

    def add(self, session: Session) -> None:
        if self._timeout <= 0:  # no deadline
            return
        now = self._clock.seconds()
        deadline = self._held[session] = now + self._timeout
        if deadline < self._latest:  # the clock went back: none held is due later than this one (none early)
            for held, due in self._held.items():
                if due > deadline:
                    self._held[held] = deadline
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = None
        self._latest = deadline
        if self._call is None:
            self._call = self._clock.callLater(max(0.0, next(iter(self._held.values())) - now), self._due)

    def discard(self, session: Session) -> None:
        self._held.pop(session, None)

    def _due(self) -> None:
        self._call = None
        held, now = self._held, self._clock.seconds()
        due: list[Session] = []
        for session, deadline in held.items():
            if deadline > now:
                break
            due.append(session)
        for session in due:
            del held[session]
        for session in due:
            try:
                self._expire(session)
            except Exception:  # noqa: BLE001 - the other sessions due still expire
                _log.failure("the deadline of session {sid} failed", sid=session.sid)
        if held and self._call is None:
            self._call = self._clock.callLater(max(0.0, next(iter(held.values())) - now), self._due)


@attrs.frozen
class ForLogin:
    """Frames for a login's sessions (tasks, activity), and for admins too when ``admins``."""

    login: str
    admins: bool = False

    def admits(self, session: Session) -> bool:
        access = session.access
        return access is not None and (access.login == self.login or (self.admins and access.is_admin))


@mypyc_attr(allow_interpreted_subclasses=True)  # wsgw.testing.IndexOnlyTable, when compiled (README)
class SessionTable:
    """Every open session (``add``/``remove``), and the subscribed event sessions indexed by login, sub, role,
    workspace and root path (``subscribe``/``unsubscribe``).

    The login and sub indexes are nearly always one session per key: such a key maps to the session itself
    (a set only from the second one on), which saves two 216-byte sets per idle session.
    """

    def __init__(self) -> None:
        self._all: set[Session] = set()
        self._events = _Holders()  # subscribed sessions that receive bus events (/ws)
        self._quiet = _Holders()  # subscribed sessions that receive none (chat): for designated() only
        self._admins: set[Session] = set()
        # root path -> workspace view -> sessions holding that view
        self._by_root: dict[str, dict[Workspace, set[Session]]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Session]:
        return iter(self._all)

    def add(self, session: Session) -> None:
        """Register an open session (of any endpoint)."""
        self._all.add(session)

    def subscribe(self, session: Session, access: Access, *, events: bool = True) -> None:
        """Index ``session`` under ``access``, replacing whatever it had before. A session of an endpoint that
        receives no bus events (``events=False``: chat) is found by ``designated`` only."""
        self.unsubscribe(session)
        session.access = access
        if not events:
            self._quiet.add(session, access)
            return
        self._events.add(session, access)
        if access.is_admin:
            self._admins.add(session)
        for ws in set(access.workspaces):
            for root in ws.roots:
                self._by_root.setdefault(root.path, {}).setdefault(ws, set()).add(session)

    def unsubscribe(self, session: Session) -> None:
        """Drop the session from every index; it stays connected and receives nothing."""
        access = session.access
        if access is None:
            return
        session.access = None
        if self._quiet.remove(session, access):
            return
        self._events.remove(session, access)
        self._admins.discard(session)
        for ws in set(access.workspaces):
            for root in ws.roots:
                views = self._by_root.get(root.path)
                if views is not None:
                    _unindex(views, ws, session)
                    if not views:
                        del self._by_root[root.path]

    def remove(self, session: Session) -> None:
        """Forget a closed session (its endpoint has unsubscribed it)."""
        self._all.discard(session)

    def with_login(self, login: str) -> AbstractSet[Session]:
        """The subscribed sessions of ``login`` (a live index: copy it before sending)."""
        return _lookup_one(self._events.login, login)

    def with_sub(self, sub: str) -> AbstractSet[Session]:
        """The subscribed sessions whose user id is ``sub``."""
        return _lookup_one(self._events.sub, sub)

    def with_role(self, role: str) -> AbstractSet[Session]:
        """The subscribed sessions having role ``role``."""
        return self._events.role.get(role, _EMPTY)

    def with_workspace(self, uuid: str) -> AbstractSet[Session]:
        """The subscribed sessions having workspace ``uuid``."""
        return self._events.workspace.get(uuid, _EMPTY)

    def designated(self, *, logins: Iterable[str] = (), subs: Iterable[str] = (), roles: Iterable[str] = (),
                   workspaces: Iterable[str] = ()) -> set[Session]:
        """The subscribed sessions of every endpoint that any of these designate: of a login, of a user id, having
        a role or a workspace (PROTOCOL.md §3.1: whose access an IDM event or an operator may change)."""
        found: set[Session] = set()
        for holders in (self._events, self._quiet):
            for login in logins:
                found |= _lookup_one(holders.login, login)
            for sub in subs:
                found |= _lookup_one(holders.sub, sub)
            for role in roles:
                found |= holders.role.get(role, _EMPTY)
            for uuid in workspaces:
                found |= holders.workspace.get(uuid, _EMPTY)
        return found

    def admins(self) -> AbstractSet[Session]:
        """The subscribed sessions of ``admin`` profile."""
        return self._admins

    def views_for_paths(self, paths: Iterable[str]) -> dict[Workspace, set[Session]]:
        """The workspace views having a root at or above any of ``paths``, with their sessions.

        Paths are internal paths without leading or trailing slash. The cost is the
        depth of the paths, not the number of sessions.
        """
        found: dict[Workspace, set[Session]] = {}
        by_root = self._by_root
        walked = ""  # the path walked before: its ancestors are not looked up again (a rename in one folder)
        for full in paths:
            path = full
            while path:  # ``a/b/c``, then ``a/b``, then ``a``
                if walked.startswith(path) and (len(walked) == len(path) or walked[len(path)] == "/"):
                    break
                views = by_root.get(path)
                if views:
                    for ws, sessions in views.items():
                        held = found.get(ws)
                        if held is None:
                            found[ws] = sessions
                        elif held is not sessions:  # (a Target and Source under one root: the same set again)
                            found[ws] = held | sessions
                cut = path.rfind("/")
                path = path[:cut] if cut > 0 else ""
            walked = full
        return found


_EMPTY: frozenset[Session] = frozenset()


class _Holders:
    """Subscribed sessions indexed by login, sub, role and workspace uuid (the login and sub indexes hold the
    session itself while it is the key's only one)."""

    __slots__ = ("login", "sub", "role", "workspace")

    def __init__(self) -> None:
        self.login: dict[str, Session | set[Session]] = {}
        self.sub: dict[str, Session | set[Session]] = {}
        self.role: dict[str, set[Session]] = {}
        self.workspace: dict[str, set[Session]] = {}

    def add(self, session: Session, access: Access) -> None:
        _index_one(self.login, access.login, session)
        _index_one(self.sub, access.sub, session)
        for role in access.roles:
            _index(self.role, role, session)
        for ws in access.workspaces:
            _index(self.workspace, ws.uuid, session)

    def remove(self, session: Session, access: Access) -> bool:
        """Unindex ``session`` (held under ``access``); False when it was not here."""
        if session not in _lookup_one(self.login, access.login):
            return False
        _unindex_one(self.login, access.login, session)
        _unindex_one(self.sub, access.sub, session)
        for role in access.roles:
            _unindex(self.role, role, session)
        for ws in access.workspaces:
            _unindex(self.workspace, ws.uuid, session)
        return True


def _index(index: dict[Any, set[Session]], key: object, session: Session) -> None:
    index.setdefault(key, set()).add(session)


def _index_one(index: dict[str, Session | set[Session]], key: str, session: Session) -> None:
    held = index.get(key)
    if held is None:
        index[key] = session
    elif isinstance(held, Session):
        if held is not session:
            index[key] = {held, session}
    else:
        held.add(session)


def _unindex_one(index: dict[str, Session | set[Session]], key: str, session: Session) -> None:
    held = index.get(key)
    if held is session:
        del index[key]
    elif isinstance(held, set):
        held.discard(session)
        if len(held) == 1:
            index[key] = next(iter(held))


def _lookup_one(index: dict[str, Session | set[Session]], key: str) -> AbstractSet[Session]:
    held = index.get(key)
    if held is None:
        return _EMPTY
    if isinstance(held, Session):
        return frozenset((held,))
    return held


def _unindex(index: dict[Any, set[Session]], key: object, session: Session) -> None:
    sessions = index.get(key)
    if sessions is not None:
        sessions.discard(session)
        if not sessions:
            del index[key]
