"""A node's MetaStore as events carry it (PROTOCOL.md §4.1): cleaning it for the browser, and the user-meta
policies an UPDATE_USER_META carries in it.

The Cells client ``JSON.parse``s every MetaStore value and must not see the
reserved ``pydio:`` keys; ``EventWorkspaceId`` is the gateway's, set per
workspace view.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from wsgw.cells import POLICY_ACTION, POLICY_EFFECT

RESERVED_META_PREFIX = "pydio:"
POLICIES_META_KEY = "pydio:meta-policies"
WORKSPACE_META_KEY = "EventWorkspaceId"


def _reject_constant(name: str) -> None:
    raise ValueError(name)  # NaN / Infinity: Python accepts them, JSON.parse does not


def is_json(value: str) -> bool:
    """Whether ``value`` is a JSON text the browser's ``JSON.parse`` accepts."""
    try:
        json.loads(value, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    return True


def clean_meta_store(meta: dict[str, str] | None) -> dict[str, str]:
    """A new MetaStore without ``pydio:`` keys, every value valid JSON (others re-encoded as strings)."""
    if not meta:
        return {}
    return {
        k: v if is_json(v) else json.dumps(v, ensure_ascii=False)
        for k, v in meta.items()
        if not k.startswith(RESERVED_META_PREFIX)
    }


Policy = tuple[frozenset[str], frozenset[str]]  # the subjects allowed and denied READ


def read_policy(policies_json: str | None) -> Policy:
    """The subjects allowed and denied ``READ`` by a ``pydio:meta-policies`` value.

    Cells writes the value with Go's encoding/json (``idm/meta/grpc/handler.go``, ``UpdateUserMeta``):
    ``Action`` and ``Effect`` are numbers and their zero values are left out, so an absent ``Action`` is
    ``ANY`` (which grants no READ: Cells' ``MatchPolicies`` compares action names) and an absent ``Effect``
    is ``deny``; names (``"READ"``, ``"allow"``, any case) are read too (``wsgw.cells``). An entry whose
    subject, action or effect is anything else grants nothing; a value that is not a JSON list of
    policy objects allows nobody.
    """
    allow: set[str] = set()
    deny: set[str] = set()
    try:
        policies = json.loads(policies_json) if policies_json else None
    except (ValueError, RecursionError):
        policies = None
    if isinstance(policies, list):
        for policy in policies:
            if not isinstance(policy, dict) or not isinstance(policy.get("Subject"), str):
                continue
            action = POLICY_ACTION.lookup(policy.get("Action", 0))
            effect = POLICY_EFFECT.lookup(policy.get("Effect", 0))
            if action != "READ" or effect is None:
                continue
            (allow if effect == "allow" else deny).add(policy["Subject"])
    return frozenset(allow), frozenset(deny)


def subjects_allowed(policy: Policy, subjects: Collection[str]) -> bool:
    """Deny wins over allow, deny by default."""
    allow, deny = policy
    return deny.isdisjoint(subjects) and not allow.isdisjoint(subjects)
