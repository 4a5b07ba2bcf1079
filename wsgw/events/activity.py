"""Activity events (PROTOCOL.md §4.4): notify a user of what others did.

Only user inboxes are handled: an event is skipped when its ``BoxName`` is not
``inbox`` and its ``OwnerType`` is not ``USER`` (both must hold to skip, as in
Cells). ``OwnerType`` is activity.OwnerType ``{NODE=0, USER=1}``, a name or a
number (``wsgw.cells``): absent means ``NODE`` (the zero value is omitted in
JSON); anything else is malformed. The names of ``Activity.object``,
``origin`` and ``target`` are reduced to basenames, and the event is sent with
``"@type":"activity"`` (and ``OwnerType`` as a name) to the sessions of
``OwnerId``, unless the owner is the actor (nobody is notified of their own
action).
"""

from __future__ import annotations

from typing import Any

from wsgw.cells import OBJECT_TYPE, OWNER_TYPE
from wsgw.frames import MalformedEvent, encode, field
from wsgw.sessions import ForLogin, SessionTable, fan_out

_NAMED_OBJECTS = ("object", "origin", "target")
_TYPED_OBJECTS = ("actor", "object", "origin", "target")


def validate(event: object) -> tuple[str, dict[str, Any]] | None:
    """Check a ``PostActivityEvent``'s shape; None when it is not for a user inbox (skipped), else the login to
    notify (empty when there is none: no owner, or the owner is the actor) and the event as it is sent: its
    ``Activity`` names reduced to basenames and ``OwnerType`` a name (a copy; the event is untouched).

    Raises MalformedEvent naming the offending field.
    """
    if not isinstance(event, dict):
        raise MalformedEvent("an activity event must be an object")
    box = field(event, "BoxName", str, "")
    owner_type = OWNER_TYPE.name(0 if event.get("OwnerType") is None else event["OwnerType"], "OwnerType")
    if box != "inbox" and owner_type != "USER":
        return None
    owner: str = field(event, "OwnerId", str, "")
    activity = field(event, "Activity", dict)
    if activity is None:
        raise MalformedEvent("an activity event needs Activity")
    actor_id = field(field(activity, "actor", dict, {}), "id", str, "")
    shaped = {**event, "Activity": _with_basenames(activity)}
    if "OwnerType" in event:
        shaped["OwnerType"] = owner_type
    return ("" if owner == actor_id else owner), shaped


class ActivityHandler:
    """Handler of the activity topic; ``delivered`` counts the frames handed to sessions."""

    def __init__(self, table: SessionTable) -> None:
        self._table = table
        self.delivered = 0

    def handle(self, event: dict[str, Any]) -> None:
        """Send a user-inbox activity to its owner's sessions, names reduced to basenames."""
        parsed = validate(event)
        if parsed is None:
            return  # not for a user inbox
        owner, shaped = parsed
        if not owner:
            return
        recipients = self._table.with_login(owner)
        if recipients:
            frame = encode({**shaped, "@type": "activity"})
            self.delivered += fan_out(recipients, frame, ForLogin(owner), what="activity event")


def _with_basenames(activity: dict[str, Any]) -> dict[str, Any]:
    """``activity`` with object/origin/target names reduced to basenames, and the ``type`` of it and of its
    actor, object, origin and target as activity.ObjectType names (copies; input untouched)."""
    shaped = _named_type(activity, "Activity.type")
    for key in _TYPED_OBJECTS:
        obj = field(activity, key, dict)
        if obj is None:
            continue
        named = _named_type(obj, f"Activity.{key}.type")
        name = field(obj, "name", str) if key in _NAMED_OBJECTS else None
        if name is not None:
            named = {**named, "name": basename(name)}
        if named is not obj:
            if shaped is activity:
                shaped = dict(activity)
            shaped[key] = named
    return shaped


def _named_type(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """``obj`` with its ``type`` as an activity.ObjectType name (itself when it is one, or absent)."""
    kind = obj.get("type")
    if kind is None:
        return obj
    named = OBJECT_TYPE.name(kind, where)
    return obj if named is kind else {**obj, "type": named}


def basename(path: str) -> str:
    """The last element of a slash separated path, trailing slashes ignored (Go's ``path.Base``).

    Unlike ``path.Base`` an empty name stays empty rather than becoming ``"."``.
    """
    stripped = path.rstrip("/")
    if not stripped:
        return "/" if path else ""
    return stripped[stripped.rfind("/") + 1 :]
