"""Cells' protobuf enums, as a Cells service writes them and as the stock Cells frontend reads them.

A Go service of Cells writes JSON two ways: ``protojson`` (enum names, zero
values omitted: the gateway's own frames) and ``encoding/json`` (enum numbers,
zero values omitted: e.g. the ``pydio:meta-policies`` MetaStore value, written
by ``idm/meta/grpc/handler.go`` ``UpdateUserMeta`` with ``json.Marshal``). The
daemon accepts both on the bus and always hands the frontend names, as Cells'
``gateway/websocket/ws-handler.go`` does (``protojson.Marshal``): the frontend
compares names (``Type === "LEAF"``, ``'DELETE'``, ``Room.Type + ':' + id``).

The values are read from Cells' proto files (github.com/pydio/cells), cited on
each enum; an absent key means the enum's zero value.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from wsgw.frames import MalformedEvent


@attrs.frozen
class ProtoEnum:
    """One enum: ``names`` maps each number to its name; ``source`` is the proto file it is read from;
    ``older`` are names older versions of the proto gave (accepted as written)."""

    proto: str
    names: Mapping[int, str]
    source: str
    older: frozenset[str] = frozenset()
    _by_name: frozenset[str] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_by_name", frozenset(self.names.values()) | self.older)

    @property
    def zero(self) -> str:
        """The name of 0, which an absent key means."""
        return self.names[0]

    def name(self, value: object, field: str) -> str:
        """The enum name ``value`` stands for: a name as written, or a number; MalformedEvent naming ``field``
        for anything else (a bool is no number here)."""
        if isinstance(value, int) and not isinstance(value, bool):
            found = self.names.get(value)
            if found is not None:
                return found
        elif isinstance(value, str) and value in self._by_name:
            return value
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise MalformedEvent(f"{field} {shown} is not a {self.proto} (a name or a number of it)")

    def lookup(self, value: object) -> str | None:
        """Like ``name`` but None instead of an error, and names matched whatever their case."""
        if isinstance(value, str):
            value = next((n for n in self._by_name if n.lower() == value.lower()), value)
        try:
            return self.name(value, "")
        except MalformedEvent:
            return None


_TREE = "common/proto/tree/cells-tree.proto @ 0c4b45884a9130299df1d21991b92efca27da8c0"

EVENT_TYPE = ProtoEnum("tree.NodeChangeEvent.EventType", {
    0: "CREATE", 1: "READ", 2: "UPDATE_PATH", 3: "UPDATE_CONTENT", 4: "UPDATE_META", 5: "DELETE",
    6: "UPDATE_USER_META",
}, _TREE)

NODE_TYPE = ProtoEnum("tree.NodeType", {0: "UNKNOWN", 1: "LEAF", 2: "COLLECTION"}, _TREE)

TASK_STATUS = ProtoEnum("jobs.TaskStatus", {
    0: "Unknown", 1: "Idle", 2: "Running", 3: "Finished", 4: "Interrupted", 5: "Paused", 6: "Any", 7: "Error",
    8: "Queued",
}, "common/proto/jobs/cells-jobs.proto @ 093cd26b71661773347c4aa59c4d06b71b90eb45")

IDM_CHANGE_TYPE = ProtoEnum("idm.ChangeEventType", {
    0: "CREATE", 1: "READ", 2: "UPDATE", 3: "DELETE", 4: "LOGIN", 5: "LOGOUT",
}, "common/proto/idm/cells-idm.proto @ 65fcd37ca6c407e9b85d472d7b9b1e1c0fcdd7e9",
    older=frozenset({"BIND"}))  # 4 in common/proto/idm/idm.proto @ 00a15b3072513b1789da9358800dfa08736a3924

_ACTIVITY = "common/proto/activity/cells-activitystream.proto @ 1b4f74d4da6f4ed6075c3f41b65462fece699309"

OWNER_TYPE = ProtoEnum("activity.OwnerType", {0: "NODE", 1: "USER"}, _ACTIVITY)

OBJECT_TYPE = ProtoEnum("activity.ObjectType", {
    0: "BaseObject", 1: "Activity", 2: "Application", 3: "Group", 4: "Organization", 5: "Person", 6: "Service",
    7: "Article", 8: "Audio", 9: "Document", 10: "Event", 11: "Image", 12: "Note", 13: "Page", 14: "Place",
    15: "Profile", 16: "Relationship", 17: "Tombstone", 18: "Video", 19: "Accept", 20: "Add", 21: "Announce",
    22: "Arrive", 23: "Block", 24: "Create", 25: "Delete", 26: "Dislike", 27: "Flag", 28: "Follow",
    29: "Ignore", 30: "Invite", 31: "Join", 32: "Leave", 33: "Like", 34: "Listen", 35: "Move", 36: "Offer",
    37: "Question", 38: "Reject", 39: "Read", 40: "Remove", 41: "TentativeReject", 42: "TentativeAccept",
    43: "Travel", 44: "Undo", 45: "Update", 46: "View", 47: "Link", 48: "Mention", 49: "Collection",
    50: "OrderedCollection", 51: "CollectionPage", 52: "OrderedCollectionPage", 53: "Workspace", 54: "Digest",
    55: "Folder", 56: "Cell", 57: "Share", 58: "UpdateComment", 59: "UpdateMeta",
}, _ACTIVITY)

ROOM_TYPE = ProtoEnum("chat.RoomType", {0: "GLOBAL", 1: "WORKSPACE", 2: "USER", 3: "NODE", 4: "ANY"},
                      "common/proto/chat/cells-chat.proto @ 22e3083e7790e779c390a1b1ec2c67a0a48f9744")

_SERVICE = "common/proto/service/cells-service.proto @ 29510444cb416b38eb3dda92a439c4f6ba70e08c"

POLICY_ACTION = ProtoEnum("service.ResourcePolicyAction", {
    0: "ANY", 1: "OWNER", 2: "READ", 3: "WRITE", 4: "EDIT_RULES",
}, _SERVICE)

POLICY_EFFECT = ProtoEnum("service.ResourcePolicy.PolicyEffect", {0: "deny", 1: "allow"}, _SERVICE)
