"""IDM events (PROTOCOL.md §4.3): tell users their roles, ACLs or workspaces changed.

The event is sent with ``"@type":"idm"`` added; the first rule that applies
picks the recipients (an ACL on a role, a role, a user by login or by id, a
workspace), all found through the SessionTable indexes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Any

from wsgw.events import MalformedEvent, deliver, field
from wsgw.frames import encode
from wsgw.sessions import Session, SessionTable

# ACLs on these actions change parameters and actions, not what a role can see: they fall through.
_FALL_THROUGH_ACTIONS = ("parameter:", "action:")
_NOBODY: frozenset[Session] = frozenset()


class IdmHandler:
    """Handler of the IDM topic."""


    def __init__(self, table: SessionTable) -> None:
        self._table = table
        self.delivered = 0

    def handle(self, event: dict[str, Any]) -> None:
        """Send ``event`` (as ``"@type":"idm"``) to the sessions the first applicable rule names."""
        if not isinstance(event, dict):
            raise MalformedEvent("an IDM event must be an object")
        recipients = self._recipients(event)
        if recipients:
            self.delivered += deliver(recipients, encode({**event, "@type": "idm"}), "IDM")

    def _recipients(self, event: dict[str, Any]) -> Iterable[Session]:
        table = self._table
        acl = field(event, "Acl", dict)
        role = field(event, "Role", dict)
        user = field(event, "User", dict)
        workspace = field(event, "Workspace", dict)
        if acl is not None:
            role_id = field(acl, "RoleID", str, "")
            action = field(acl, "Action", dict, {})
            name = field(action, "Name", str, "")
            if role_id and not name.startswith(_FALL_THROUGH_ACTIONS):
                return table.with_role(role_id)
        if role is not None:
            return _indexed(table.with_role, field(role, "Uuid", str, ""))
        if user is not None:
            login = field(user, "Login", str, "")
            if login:
                # A set union: an admin who is also the user gets one copy.
                return table.admins() | table.with_login(login)
            return _indexed(table.with_sub, field(user, "Uuid", str, ""))
        if workspace is not None:
            return _indexed(table.with_workspace, field(workspace, "UUID", str, ""))
        return _NOBODY


def _indexed(lookup: Callable[[str], AbstractSet[Session]], key: str) -> Iterable[Session]:
    """``lookup(key)``, or nobody for an empty key (the rule applies and names no one)."""
    return lookup(key) if key else _NOBODY
