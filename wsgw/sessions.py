"""Sessions and the session table: who is connected, and indexes that find the sessions an event concerns."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from wsgw.access import Access, Workspace
from wsgw.interfaces import IConnection
from wsgw.pacing import Pacer

_ids = itertools.count(1)


class Session:
    """One client socket and, once subscribed, the user's Access."""

    __slots__ = ("sid", "endpoint", "connection", "access", "pacer", "token", "__weakref__")

    def __init__(self, connection: IConnection, endpoint: str = "ws") -> None:
        self.sid = next(_ids)
        self.endpoint = endpoint
        self.connection = connection
        self.access: Access | None = None
        self.token: str | None = None
        self.pacer: Pacer | None = None

    def send(self, payload: bytes) -> None:
        self.connection.send(payload)

    def send_now(self, payload: bytes) -> None:
        """Send a node event past the pacer (Optimistic), after whatever it still holds, so order is kept."""
        if self.pacer is None:
            self.connection.send(payload)
        else:
            self.pacer.bypass(payload)

    def send_paced(self, payload: bytes) -> None:
        """Send a node event through the session's pacer (straight out when it has none)."""
        if self.pacer is None:
            self.connection.send(payload)
        else:
            self.pacer.submit(payload)

    def __repr__(self) -> str:
        who = self.access.login if self.access else "-"
        return f"<Session {self.sid} {self.endpoint} {who}>"


def _ancestors(path: str) -> Iterator[str]:
    """``a/b/c`` -> ``a/b/c``, ``a/b``, ``a``."""
    while path:
        yield path
        cut = path.rfind("/")
        path = path[:cut] if cut > 0 else ""


class SessionTable:
    """The subscribed sessions of one endpoint, indexed by login, sub, role, workspace and root path.

    The login and sub indexes are nearly always one session per key: such a key maps to the session itself
    (a set only from the second one on), which saves two 216-byte sets per idle session.
    """

    def __init__(self) -> None:
        self._all: set[Session] = set()
        self._by_login: dict[str, Session | set[Session]] = {}
        self._by_sub: dict[str, Session | set[Session]] = {}
        self._by_role: dict[str, set[Session]] = {}
        self._by_workspace: dict[str, set[Session]] = {}
        self._admins: set[Session] = set()
        # root path -> workspace view -> sessions holding that view
        self._by_root: dict[str, dict[Workspace, set[Session]]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Session]:
        return iter(self._all)

    def __contains__(self, session: object) -> bool:
        return session in self._all

    @property
    def subscribed(self) -> int:
        return sum(1 for s in self._all if s.access is not None)

    def add(self, session: Session) -> None:
        self._all.add(session)

    def subscribe(self, session: Session, access: Access) -> None:
        """Index ``session`` under ``access``, replacing whatever it had before."""
        self.unsubscribe(session)
        session.access = access
        _index_one(self._by_login, access.login, session)
        _index_one(self._by_sub, access.sub, session)
        for role in access.roles:
            _index(self._by_role, role, session)
        if access.is_admin:
            self._admins.add(session)
        for ws in set(access.workspaces):
            _index(self._by_workspace, ws.uuid, session)
            for root in ws.roots:
                self._by_root.setdefault(root.path, {}).setdefault(ws, set()).add(session)

    def unsubscribe(self, session: Session) -> None:
        """Drop the session from every index; it stays connected and receives nothing."""
        access = session.access
        if access is None:
            return
        session.access = None
        _unindex_one(self._by_login, access.login, session)
        _unindex_one(self._by_sub, access.sub, session)
        for role in access.roles:
            _unindex(self._by_role, role, session)
        self._admins.discard(session)
        for ws in set(access.workspaces):
            _unindex(self._by_workspace, ws.uuid, session)
            for root in ws.roots:
                views = self._by_root.get(root.path)
                if views is not None:
                    _unindex(views, ws, session)  # type: ignore[arg-type]
                    if not views:
                        del self._by_root[root.path]

    def remove(self, session: Session) -> None:
        self.unsubscribe(session)
        self._all.discard(session)

    def with_login(self, login: str) -> frozenset[Session] | set[Session]:
        return _lookup_one(self._by_login, login)

    def with_sub(self, sub: str) -> frozenset[Session] | set[Session]:
        return _lookup_one(self._by_sub, sub)

    def with_role(self, role: str) -> frozenset[Session] | set[Session]:
        return self._by_role.get(role, _EMPTY)

    def with_workspace(self, uuid: str) -> frozenset[Session] | set[Session]:
        return self._by_workspace.get(uuid, _EMPTY)

    def admins(self) -> set[Session]:
        return self._admins

    def views_for_paths(self, paths: Iterable[str]) -> dict[Workspace, set[Session]]:
        """The workspace views having a root at or above any of ``paths``, with their sessions.

        Paths are internal paths without leading or trailing slash. The cost is the
        depth of the paths, not the number of sessions.
        """
        found: dict[Workspace, set[Session]] = {}
        for path in paths:
            for prefix in _ancestors(path):
                views = self._by_root.get(prefix)
                if views:
                    for ws, sessions in views.items():
                        if ws in found:
                            found[ws] = found[ws] | sessions
                        else:
                            found[ws] = sessions
        return found


_EMPTY: frozenset = frozenset()


def _index(index: dict, key: object, session: Session) -> None:
    index.setdefault(key, set()).add(session)


def _index_one(index: dict, key: object, session: Session) -> None:
    held = index.get(key)
    if held is None:
        index[key] = session
    elif isinstance(held, Session):
        if held is not session:
            index[key] = {held, session}
    else:
        held.add(session)


def _unindex_one(index: dict, key: object, session: Session) -> None:
    held = index.get(key)
    if held is session:
        del index[key]
    elif isinstance(held, set):
        held.discard(session)
        if len(held) == 1:
            index[key] = next(iter(held))


def _lookup_one(index: dict, key: object) -> frozenset[Session] | set[Session]:
    held = index.get(key)
    if held is None:
        return _EMPTY
    if isinstance(held, Session):
        return frozenset((held,))
    return held  # type: ignore[no-any-return]


def _unindex(index: dict, key: object, session: Session) -> None:
    sessions = index.get(key)
    if sessions is not None:
        sessions.discard(session)
        if not sessions:
            del index[key]
