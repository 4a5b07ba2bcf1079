"""Live re-authorization (PROTOCOL.md §3.1): access follows the truth, not the client's goodwill.

An IDM event that can change what sessions may see (any ``Type`` but ``READ``,
``LOGIN`` and ``LOGOUT``, carrying an ``Acl`` with a ``RoleID`` that is not a
``parameter:`` or ``action:`` ACL, a ``Role``, a ``User`` or a ``Workspace``)
makes the gateway re-derive the access of every session those parts designate
(the role's, the login's or ``sub``'s, the workspace's; found through the
session table's indexes), after the IDM frame itself went out on the old access:

- with a resolver that can refresh (``http``): each designated session's
  frames are suspended, the backend is asked again past its cache (one request
  per distinct token, at most ``max_requests`` in flight, queued beyond), and
  the answer is applied as a re-subscribe would (``Gateway.reauthorized``); a
  refusal (401, 403, 404) closes the session 4003, any other failure 1013, and
  so does no answer it may apply within ``timeout`` seconds of its first request
  (IDM events coming faster than the backend answers make each answer
  predate the latest event: asked again, but never held forever);
- with the ``claims`` resolver: a ``Workspace`` ``DELETE`` withholds that
  workspace from every token issued before it, a ``User`` ``DELETE`` revokes
  that user's tokens (by ``Login`` and by ``Uuid`` as ``sub``) and closes their
  sessions 4003; both are ``Revocation`` entries, kept (``remember``) so that a
  re-subscribe with an old token does not undo them. Other changes cannot be
  known from a token: they wait for the client's own re-subscribe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from wsgw.access import Access, AccessError, AccessRefused
from wsgw.frames import CLOSE_TRY_AGAIN, field
from wsgw.gateway import Gateway
from wsgw.interfaces import IAccessResolver
from wsgw.revocations import Revocation
from wsgw.sessions import Session

SKIPPED = frozenset({"READ", "LOGIN", "LOGOUT"})
_FALL_THROUGH_ACTIONS = ("parameter:", "action:")

OUTCOMES = ("applied", "refused", "unavailable", "gone", "deleted")
"""What ``Reauthorizer.sessions`` counts, per session: a new access applied, closed 4003 on the backend's refusal,
closed 1013 for lack of an answer, closed or re-subscribed meanwhile (nothing to apply), closed 4003 because its
user was deleted (claims)."""


@attrs.frozen
class Designated:
    """The parts of an IDM event that designate sessions: logins, subs, role ids and workspace uuids."""

    logins: tuple[str, ...] = ()
    subs: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    workspaces: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.logins or self.subs or self.roles or self.workspaces)


def designated(event: dict[str, Any]) -> Designated:
    """What an IDM event (validated by ``wsgw.events.idm.validate``) designates (PROTOCOL.md §3.1, "Which events,
    which sessions"): nothing for ``READ``, ``LOGIN`` and ``LOGOUT``."""
    if event.get("Type") in SKIPPED:
        return Designated()
    acl, role = field(event, "Acl", dict), field(event, "Role", dict)
    user, workspace = field(event, "User", dict), field(event, "Workspace", dict)
    roles: list[str] = []
    if acl is not None:
        name = field(field(acl, "Action", dict, {}), "Name", str, "")
        if not name.startswith(_FALL_THROUGH_ACTIONS):
            roles.append(field(acl, "RoleID", str, ""))
    if role is not None:
        roles.append(field(role, "Uuid", str, ""))
    login = field(user, "Login", str, "") if user is not None else ""
    sub = field(user, "Uuid", str, "") if user is not None else ""
    uuid = field(workspace, "UUID", str, "") if workspace is not None else ""
    return Designated(_some(login), _some(sub), tuple(r for r in roles if r), _some(uuid))


def _some(key: str) -> tuple[str, ...]:
    return (key,) if key else ()


class Reauthorizer:
    """Re-derives the access of the sessions an IDM event designates (the module docstring says how).

    ``handle(event)`` is called with each validated IDM event after its frame was delivered. ``remember`` is
    called with each ``Revocation`` the claims rules add (to keep it where every instance and a restart find
    it). Counters: ``events`` (IDM events that designated someone), ``sessions`` (by ``OUTCOMES``);
    ``in_flight`` (backend requests now) and ``suspended`` (sessions waiting for one) are gauges. ``timeout``:
    the seconds a token's sessions stay suspended, from its first request, without an answer that may apply (then
    closed 1013; the resolver's own ``[access] timeout``).
    """

    def __init__(self, gateway: Gateway, resolver: IAccessResolver, clock: IReactorTime, *, max_requests: int = 32,
                 remember: Callable[[Revocation], object] = lambda revocation: None, timeout: float = 5.0) -> None:
        self._gateway = gateway
        self._resolver = resolver
        self._clock = clock
        self._max_requests = max(1, max_requests)
        self._remember = remember
        self._suspended: dict[Session, str] = {}  # session -> the token whose answer it waits for
        self._waiting: dict[str, set[Session]] = {}  # token -> the sessions waiting for its answer
        self._queued: dict[str, Access] = {}  # tokens to ask about (in order), with the access they gave
        self._asking: dict[str, bool] = {}  # tokens asked about now -> whether an event came since (ask again)
        self._deadlines: dict[str, IDelayedCall] = {}  # token -> when its waiting sessions are closed 1013
        self._timeout = timeout
        self._pumping = False
        self.events = 0
        self.sessions: Counter[str] = Counter()

    @property
    def in_flight(self) -> int:
        return len(self._asking)

    @property
    def suspended(self) -> int:
        return len(self._suspended)

    def handle(self, event: dict[str, Any]) -> None:
        """One validated IDM event, after its frame went out (PROTOCOL.md §3.1)."""
        parts = designated(event)
        if not parts:
            return
        self.events += 1
        if self._resolver.refreshes:
            self._resolver.invalidate()
            sessions = self._gateway.table.designated(logins=parts.logins, subs=parts.subs, roles=parts.roles,
                                                      workspaces=parts.workspaces)
            for session in sessions:
                self._suspend(session)
            self._ask()
        elif event.get("Type") == "DELETE":
            self._deleted(event, parts)

    # -- claims: what the event says -----------------------------------------

    def _deleted(self, event: dict[str, Any], parts: Designated) -> None:
        now = self._clock.seconds()
        gateway, table = self._gateway, self._gateway.table
        if field(event, "User", dict) is not None and (parts.logins or parts.subs):
            for kind, keys in (("login", parts.logins), ("sub", parts.subs)):
                for key in keys:
                    self._revoke(Revocation(kind, key, now))
            for session in table.designated(logins=parts.logins, subs=parts.subs):
                self.sessions["deleted"] += 1
                gateway.revoke(session, "user deleted", "user_deleted")
        if field(event, "Workspace", dict) is not None and parts.workspaces:
            self._revoke(Revocation("workspace", parts.workspaces[0], now))
            for session in table.designated(workspaces=parts.workspaces):
                assert session.access is not None
                self.sessions["applied"] += 1
                gateway.reauthorized(session, session.access)  # less the workspace its token predates

    def _revoke(self, revocation: Revocation) -> None:
        if self._gateway.revocations.add(revocation):
            self._remember(revocation)

    # -- http: ask the backend again ----------------------------------------

    def _suspend(self, session: Session) -> None:
        token, access = session.token, session.access
        if token is None or access is None or session.flow.stopped:  # (stopped: closing already)
            return
        session.flow.suspend()
        before = self._suspended.get(session)
        if before is not None and before != token:
            self._waiting[before].discard(session)
        self._suspended[session] = token
        self._waiting.setdefault(token, set()).add(session)
        if token in self._asking:
            self._asking[token] = True  # the answer on its way may predate this event: ask again
        else:
            self._queued.setdefault(token, access)

    def _ask(self) -> None:
        if self._pumping:  # an answer that came at once, within the loop below: the loop goes on
            return
        self._pumping = True
        try:
            while self._queued and len(self._asking) < self._max_requests:
                token, access = next(iter(self._queued.items()))
                del self._queued[token]
                self._asking[token] = False
                if token not in self._deadlines:  # from its first request (time queued behind max_requests is not)
                    self._deadlines[token] = self._clock.callLater(self._timeout, self._overdue, token)
                d = self._resolver.refresh(token, access.identity)
                d.addBoth(self._answered, token, access)
        finally:
            self._pumping = False

    def _answered(self, result: Access | Failure, token: str, access: Access) -> None:
        again = self._asking.pop(token)
        if again:
            self._queued.setdefault(token, access)
        else:
            self._settle(token, result)
        self._ask()

    def _overdue(self, token: str) -> None:
        """``timeout`` passed without an answer for ``token`` that may apply: its sessions are closed 1013; the
        request in flight, if any, settles nobody when it ends."""
        del self._deadlines[token]
        self._queued.pop(token, None)
        if token in self._asking:
            self._asking[token] = False
        self._settle(token, AccessError(f"access backend unavailable: no answer in {self._timeout:g} s"))
        self._ask()

    def _settle(self, token: str, result: Access | Failure | AccessError) -> None:
        deadline = self._deadlines.pop(token, None)
        if deadline is not None and deadline.active():
            deadline.cancel()
        for session in self._waiting.pop(token, ()):
            del self._suspended[session]
            self._apply(session, token, result)

    def _apply(self, session: Session, token: str, result: Access | Failure | AccessError) -> None:
        gateway = self._gateway
        if not session.open or session.token != token:  # closed, or re-subscribed meanwhile (that access holds)
            self.sessions["gone"] += 1
            session.flow.unsuspend()
        elif isinstance(result, Access):
            self.sessions["applied"] += 1
            gateway.reauthorized(session, result)
        elif isinstance(result.value if isinstance(result, Failure) else result, AccessRefused):
            self.sessions["refused"] += 1
            gateway.revoke(session, "the access backend refused the token", "backend_refused")
        else:
            self.sessions["unavailable"] += 1
            gateway.revoke(session, "the access backend could not confirm it, reconnect", "backend_unavailable",
                           code=CLOSE_TRY_AGAIN)
