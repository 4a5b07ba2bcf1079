"""Task events (PROTOCOL.md §4.2): who sees a job's progress.

A ``TaskChangeEvent`` goes unchanged to the sessions of the task's trigger
owner, and to every admin session when the owner is the system user.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Any

from twisted.logger import Logger

from wsgw.events import MalformedEvent, field
from wsgw.frames import encode
from wsgw.sessions import Session, SessionTable

SYSTEM_USER = "pydio.system.user"


class TaskHandler:
    """Handler of the tasks topic."""

    _log = Logger()

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
            self._deliver(recipients, encode(event))

    def _deliver(self, recipients: Iterable[Session], frame: bytes) -> None:
        # A snapshot: a send may close a session and shrink the live index.
        for session in tuple(recipients):
            try:
                session.send(frame)
            except Exception:  # noqa: BLE001 - isolate a broken recipient
                self._log.failure("task event to session {sid} failed", sid=session.sid)
            else:
                self.delivered += 1
