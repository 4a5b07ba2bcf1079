"""Task events (PROTOCOL.md §4.2): who sees a job's progress.

A ``TaskChangeEvent`` goes unchanged to the sessions of the task's trigger
owner, and to every admin session when the owner is the system user.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

from wsgw.events import MalformedEvent, deliver, field
from wsgw.frames import encode
from wsgw.sessions import Session, SessionTable

SYSTEM_USER = "pydio.system.user"


class TaskHandler:
    """Handler of the tasks topic."""


    def __init__(self, table: SessionTable) -> None:
        self._table = table
        self.delivered = 0

    def handle(self, event: dict[str, Any]) -> None:
        """Send ``event`` to the task owner's sessions (and to admins for system tasks)."""
        if not isinstance(event, dict):
            raise MalformedEvent("a task event must be an object")
        task = field(event, "TaskUpdated", dict)
        if task is None:
            raise MalformedEvent("a task event needs TaskUpdated")
        field(event, "Job", dict)
        owner = field(task, "TriggerOwner", str, "")
        if not owner:
            return
        recipients: AbstractSet[Session] = self._table.with_login(owner)
        if owner == SYSTEM_USER:
            # A set union: an admin who is also the owner gets one copy.
            recipients = self._table.admins() | recipients
        if recipients:
            self.delivered += deliver(recipients, encode(event), "task")
