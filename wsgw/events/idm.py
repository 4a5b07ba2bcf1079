"""IDM events (PROTOCOL.md §4.3): tell users their roles, ACLs or workspaces changed.

The event is sent with ``"@type":"idm"`` added (and its ``Type`` as a name,
``wsgw.cells``); the first rule that applies picks the recipients (an ACL on a
role, a role, a user by login or by id, a workspace), all found through the
SessionTable indexes.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

import attrs

from wsgw.cells import IDM_CHANGE_TYPE
from wsgw.frames import MalformedEvent, encode, field
from wsgw.sessions import Session, SessionTable, fan_out

# ACLs on these actions change parameters and actions, not what a role can see: they fall through.
_FALL_THROUGH_ACTIONS = ("parameter:", "action:")
_NOBODY: frozenset[Session] = frozenset()


@attrs.frozen(eq=False)
class Announced:
    """The scope of an IDM frame (``wsgw.flow.Scope``): the sessions it was addressed to, on the access they had when
    the event came, keep it through the access change it announces (PROTOCOL.md §3.1: "The IDM frame goes first, to
    its recipients as computed on the old access; then the change applies"), e.g. while it waits behind an earlier
    re-derivation; a session that changed login or unsubscribed drops it (``wsgw.gateway``)."""

    recipients: frozenset[Session]

    def admits(self, session: Session) -> bool:
        return session.access is not None and session in self.recipients


def validate(event: object) -> dict[str, Any]:
    """Check an ``idm.ChangeEvent``'s shape; return it with ``Type`` as an idm.ChangeEventType name (a number,
    as Go's encoding/json writes it, is read as well; the same dict when it held a name).

    Raises MalformedEvent naming the offending field.
    """
    if not isinstance(event, dict):
        raise MalformedEvent("an IDM event must be an object")
    rule(event)
    kind = event.get("Type")
    if kind is None:
        return event
    named = IDM_CHANGE_TYPE.name(kind, "Type")
    return event if named is kind else {**event, "Type": named}


def rule(event: dict[str, Any]) -> tuple[str, str]:
    """The index and key of the first rule that applies: ``("role", RoleID or Role.Uuid)``,
    ``("login", User.Login)``, ``("sub", User.Uuid)``, ``("workspace", Workspace.UUID)``, or ``("", "")``
    for nobody (an empty key also names nobody). Raises MalformedEvent for a field it reads of a wrong type.
    """
    acl = field(event, "Acl", dict)
    role = field(event, "Role", dict)
    user = field(event, "User", dict)
    workspace = field(event, "Workspace", dict)
    if acl is not None:
        role_id = field(acl, "RoleID", str, "")
        name = field(field(acl, "Action", dict, {}), "Name", str, "")
        if role_id and not name.startswith(_FALL_THROUGH_ACTIONS):
            return "role", role_id
    if role is not None:
        return "role", field(role, "Uuid", str, "")
    if user is not None:
        login = field(user, "Login", str, "")
        if login:
            return "login", login
        return "sub", field(user, "Uuid", str, "")
    if workspace is not None:
        return "workspace", field(workspace, "UUID", str, "")
    return "", ""


class IdmHandler:
    """Handler of the IDM topic; ``delivered`` counts the frames handed to sessions. ``changed`` (None: nothing)
    is called with each event after its frame went out (``wsgw.reauth``: the access change applies then,
    PROTOCOL.md §3.1)."""

    def __init__(self, table: SessionTable, changed: Callable[[dict[str, Any]], object] | None = None) -> None:
        self._table = table
        self._changed = changed
        self.delivered = 0

    def handle(self, event: dict[str, Any]) -> None:
        """Send ``event`` (as ``"@type":"idm"``) to the sessions the first applicable rule names."""
        event = validate(event)
        index, key = rule(event)
        recipients = self._recipients(index, key)
        if recipients:
            frame = encode({**event, "@type": "idm"})
            self.delivered += fan_out(recipients, frame, Announced(frozenset(recipients)), what="IDM event")
        if self._changed is not None:
            self._changed(event)

    def _recipients(self, index: str, key: str) -> AbstractSet[Session]:
        table = self._table
        if not key:
            return _NOBODY
        if index == "role":
            return table.with_role(key)
        if index == "login":
            # A set union: an admin who is also the user gets one copy.
            return table.admins() | table.with_login(key)
        if index == "sub":
            return table.with_sub(key)
        return table.with_workspace(key)
