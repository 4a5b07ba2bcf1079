"""Validation of a ``NodeChangeEvent`` from the bus (PROTOCOL.md §4.1), before the rules of ``wsgw.events.nodes``.

``validate`` checks the event's and its nodes' fields and returns the event
with its enums as names (``wsgw.cells``); a node of the common shape (every
field of its JSON type, ``Type`` a name) is checked by exact type and returned
as is, any other node by the generic ``wsgw.frames.field`` checks, which name
what is wrong.
"""

from __future__ import annotations

from typing import Any, cast

from wsgw.cells import EVENT_TYPE, NODE_TYPE
from wsgw.frames import MalformedEvent, field


def validate(event: object) -> dict[str, Any]:
    """Check the shape of a ``NodeChangeEvent`` (PROTOCOL.md §4.1); return it with its enums as names.

    ``Type`` and the nodes' ``Type`` may be names (protojson) or numbers (Go's encoding/json), as
    ``wsgw.cells`` says; the event returned holds names (``Type`` absent stays absent: CREATE), and is the
    same dict when it held names already. Raises MalformedEvent naming the first offending field.
    """
    if not isinstance(event, dict):
        raise MalformedEvent("a node event must be an object")
    # event.get(...), not a bound ``get``: compiled (mypyc), a dict's get is a C call, a bound method a Python one
    kind = event.get("Type")
    if kind is not None and (type(kind) is not str or kind not in _EVENT_TYPE_NAMES):
        kind = EVENT_TYPE.name(kind, "Type")  # a number named, or MalformedEvent
    value = event.get("Silent")
    if value is not None and type(value) is not bool:
        field(event, "Silent", bool)  # raises, naming the field (a bool subclass cannot be: bool is final)
    value = event.get("Optimistic")
    if value is not None and type(value) is not bool:
        field(event, "Optimistic", bool)
    target = event.get("Target")
    if target is not None and not _plain_node(target):
        target = _validate_node(event, "Target")
    source = event.get("Source")
    if source is not None and not _plain_node(source):
        source = _validate_node(event, "Source")
    if target is None and source is None:
        raise MalformedEvent("a node event needs a Target or a Source")
    if kind is event.get("Type") and target is event.get("Target") and source is event.get("Source"):
        return event
    named = dict(event)
    if kind is not None:
        named["Type"] = kind
    for name, node in (("Target", target), ("Source", source)):
        if node is not None:
            named[name] = node
    return named


_NODE_TYPE_NAMES = frozenset(NODE_TYPE.names.values()) | NODE_TYPE.older
_EVENT_TYPE_NAMES = frozenset(EVENT_TYPE.names.values()) | EVENT_TYPE.older


def _plain_node(node: object) -> bool:
    """Whether ``node`` is well-formed with its ``Type`` a name (returned as is): the common case, checked by exact
    type for every node of every event; any other node takes ``_validate_node``'s checks, naming what is wrong."""
    if type(node) is not dict:
        return False
    fields = cast("dict[str, Any]", node)  # (compiled: the dict's own get, a C call)
    # unrolled (issue 13, goal 2: every node of every event passes here): str, or str or int, each when present
    value = fields.get("Uuid")
    if value is not None and type(value) is not str:
        return False
    value = fields.get("Path")
    if value is not None and type(value) is not str:
        return False
    value = fields.get("Etag")
    if value is not None and type(value) is not str:
        return False
    value = fields.get("Size")
    if value is not None and type(value) is not str and type(value) is not int:
        return False
    value = fields.get("MTime")
    if value is not None and type(value) is not str and type(value) is not int:
        return False
    value = fields.get("Mode")
    if value is not None and type(value) is not str and type(value) is not int:
        return False
    value, meta = fields.get("Type"), fields.get("MetaStore")
    if value is not None and (type(value) is not str or value not in _NODE_TYPE_NAMES):
        return False
    if meta is None:
        return True
    if type(meta) is not dict:
        return False
    for value in cast("dict[str, object]", meta).values():  # (compiled: walked in C)
        if type(value) is not str:
            return False
    return True


def _validate_node(event: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The node, checked; a copy with ``Type`` as a name when it was a number."""
    node = event.get(name)  # not annotated: any JSON value until checked (mypyc checks annotations at run time)
    if node is None or _plain_node(node):
        return node
    node = field(event, name, dict)
    assert node is not None
    try:
        field(node, "Uuid", str)
        field(node, "Path", str)
        field(node, "Etag", str)
        node_type = node.get("Type")
        if node_type is not None:
            named = NODE_TYPE.name(node_type, "Type")
            if named is not node_type:
                node = {**node, "Type": named}
        for number in ("Size", "MTime", "Mode"):
            field(node, number, (str, int))
        meta = field(node, "MetaStore", dict)
        if meta and not all(isinstance(v, str) for v in meta.values()):
            raise MalformedEvent("MetaStore values must be strings")
    except MalformedEvent as exc:
        raise MalformedEvent(f"{name}.{exc}") from None
    return node
