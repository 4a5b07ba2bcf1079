"""Task events (PROTOCOL.md §4.2): who sees a job's progress.

A ``TaskChangeEvent`` goes to the sessions of the task's trigger owner, and to
every admin session when the owner is the system user, as published but for
``TaskUpdated.Status``, which reaches the frontend as a name (``wsgw.cells``).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

from wsgw.cells import TASK_STATUS
from wsgw.frames import MalformedEvent, encode, field
from wsgw.sessions import ForLogin, Session, SessionTable, fan_out

SYSTEM_USER = "pydio.system.user"


def validate(event: object) -> dict[str, Any]:
    """Check a ``TaskChangeEvent``'s shape; return it with ``TaskUpdated.Status`` as a jobs.TaskStatus name
    (a number, as Go's encoding/json writes it, is read as well; the same dict when it held a name).

    Raises MalformedEvent naming the offending field.
    """
    if not isinstance(event, dict):
        raise MalformedEvent("a task event must be an object")
    task = field(event, "TaskUpdated", dict)
    if task is None:
        raise MalformedEvent("a task event needs TaskUpdated")
    field(event, "Job", dict)
    field(task, "TriggerOwner", str)
    status = task.get("Status")
    if status is None:
        return event
    named = TASK_STATUS.name(status, "TaskUpdated.Status")
    return event if named is status else {**event, "TaskUpdated": {**task, "Status": named}}


class TaskHandler:
    """Handler of the tasks topic; ``delivered`` counts the frames handed to sessions."""

    def __init__(self, table: SessionTable) -> None:
        self._table = table
        self.delivered = 0

    def handle(self, event: dict[str, Any]) -> None:
        """Send ``event`` to the task owner's sessions (and to admins for system tasks)."""
        event = validate(event)
        owner: str = event["TaskUpdated"].get("TriggerOwner") or ""
        if not owner:
            return
        recipients: AbstractSet[Session] = self._table.with_login(owner)
        if owner == SYSTEM_USER:
            # A set union: an admin who is also the owner gets one copy.
            recipients = self._table.admins() | recipients
        if recipients:
            scope = ForLogin(owner, admins=owner == SYSTEM_USER)
            self.delivered += fan_out(recipients, encode(event), scope, what="task event")
