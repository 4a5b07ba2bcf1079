"""A session's access (PROTOCOL.md §3): who the user is and which workspaces (and roots) they can see.

Also the two ways a subscribe is refused, as the core sees them: ``AuthError``
(the token) and ``AccessError`` (the access), whatever adapter raised them.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import weakref
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any, TypeVar

import attrs


class AuthError(Exception):
    """The token was refused; the message is a reason fit for the client and never contains the token."""


class AccessError(Exception):
    """The user's access could not be established (bad claims, resolver backend down)."""


class AccessRefused(AccessError):
    """The access backend refused the token (HTTP 401, 403, 404): the user may no longer connect (PROTOCOL.md §3.1,
    "Backend answers")."""


class AccessBusy(AccessError):
    """The access backend already has as many requests in flight as allowed: try again later (close 1013)."""


def login_claim(claims: Mapping[str, Any]) -> str | None:
    """The login a token names (PROTOCOL.md §2): ``name``, else ``preferred_username``; None when that is
    not a non-empty string."""
    login = claims.get("name")
    if login is None:
        login = claims.get("preferred_username")
    return login if isinstance(login, str) and login else None


def default_root_key(uuid: str, path: str) -> str:
    """Cells' default key of a root in a multi-root workspace: md5(uuid)[0:8] + '-' + basename."""
    return hashlib.md5(uuid.encode("utf-8")).hexdigest()[:8] + "-" + posixpath.basename(path.rstrip("/"))


@attrs.frozen(cache_hash=True)
class Root:
    """One root of a workspace: ``path`` is the full internal path events carry (its hash computed once)."""

    uuid: str
    path: str
    key: str


@attrs.frozen(cache_hash=True)
class Workspace:
    """A workspace as one user sees it; a frozen value, so equal views share shaped frames. Its hash is computed
    once (a node event looks its views up by it: ``SessionTable.views_for_paths``)."""

    uuid: str
    slug: str
    roots: tuple[Root, ...]


@attrs.frozen
class Identity:
    """Who a verified token names (PROTOCOL.md §2): ``login`` (``name``, else ``preferred_username``), ``sub``
    (empty when absent), ``exp``, ``iat`` (unix seconds, None when absent) and ``jti`` (None when absent)."""

    login: str
    sub: str
    exp: int | None = None
    iat: float | None = None
    jti: str | None = None


@attrs.frozen
class Access:
    """What a subscribed session holds about its user."""

    login: str
    sub: str
    profile: str
    roles: frozenset[str]
    workspaces: tuple[Workspace, ...]
    exp: int | None = None
    iat: float | None = None  # the token's issue time (unix seconds), for revocations (PROTOCOL.md §3.1)
    jti: str | None = None  # the token's id, for revocations

    @property
    def identity(self) -> Identity:
        """Who holds this access, as the token named them."""
        return Identity(self.login, self.sub, self.exp, self.iat, self.jti)

    def without_workspaces(self, uuids: AbstractSet[str]) -> Access:
        """This access less the workspaces ``uuids`` (self when it holds none of them)."""
        kept = tuple(ws for ws in self.workspaces if ws.uuid not in uuids)
        return self if len(kept) == len(self.workspaces) else attrs.evolve(self, workspaces=kept)

    @property
    def subjects(self) -> frozenset[str]:
        """Policy subjects: ``user:<login>``, ``profile:<profile>``, ``role:<id>`` and ``*``."""
        return frozenset(
            [f"user:{self.login}", f"profile:{self.profile}", "*"] + [f"role:{r}" for r in self.roles]
        )

    @property
    def is_admin(self) -> bool:
        """Whether the profile is ``admin`` (PROTOCOL.md §4.2, §4.3)."""
        return self.profile == "admin"


_T = TypeVar("_T")
_SHARED: weakref.WeakValueDictionary[Any, Any] = weakref.WeakValueDictionary()


def shared(value: _T) -> _T:
    """The copy of ``value`` (a hashable immutable value that supports weak references: a ``Workspace``, a
    frozenset) some session already holds, else ``value``, remembered while any session holds it: sessions with
    the same workspaces or roles hold one copy (a workspace is ~450 bytes with its roots and strings; bench/RESULTS.md,
    "Memory and GC")."""
    return _SHARED.setdefault(value, value)  # type: ignore[no-any-return]


def parse_roles(value: object) -> frozenset[str]:
    """Roles as a comma separated string or a list of role ids."""
    if value is None or value == "":
        return frozenset()
    if isinstance(value, str):
        return shared(frozenset(r.strip() for r in value.split(",") if r.strip()))
    if isinstance(value, list) and all(isinstance(r, str) for r in value):
        return shared(frozenset(value))
    raise AccessError("roles must be a string or a list of strings")


def parse_workspaces(value: object) -> tuple[Workspace, ...]:
    """Workspaces from their JSON form ``[{"uuid","slug","roots":[{"uuid","path","key"?}]}]``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise AccessError("workspaces must be a list")
    out: list[Workspace] = []
    for ws in value:
        if not isinstance(ws, dict):
            raise AccessError("a workspace must be an object")
        uuid, slug, roots = ws.get("uuid"), ws.get("slug"), ws.get("roots")
        if not isinstance(uuid, str) or not uuid or not isinstance(slug, str) or not slug:
            raise AccessError("a workspace needs a uuid and a slug")
        if not isinstance(roots, list):
            raise AccessError(f"workspace {slug}: roots must be a list")
        out.append(shared(Workspace(uuid, slug, tuple(_parse_root(slug, r) for r in roots))))
    return tuple(out)


def _parse_root(slug: str, root: object) -> Root:
    if not isinstance(root, dict):
        raise AccessError(f"workspace {slug}: a root must be an object")
    uuid, path, key = root.get("uuid", ""), root.get("path"), root.get("key")
    if not isinstance(uuid, str) or not isinstance(path, str) or not path.strip("/"):
        raise AccessError(f"workspace {slug}: a root needs a path")
    path = path.strip("/")
    if key is None:
        key = default_root_key(uuid, path)
    if not isinstance(key, str):
        raise AccessError(f"workspace {slug}: a root key must be a string")
    return Root(uuid, path, key)


def access_from_document(who: Identity, doc: Mapping[str, Any]) -> Access:
    """Build an Access from ``{"profile","roles","workspaces"}`` (claims or the http resolver's answer)."""
    profile = doc.get("profile") or "standard"
    if not isinstance(profile, str):
        raise AccessError("profile must be a string")
    return Access(who.login, who.sub, profile, parse_roles(doc.get("roles")), parse_workspaces(doc.get("workspaces")),
                  who.exp, who.iat, who.jti)


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """The Identity of verified claims; AccessError when the login is missing or ``sub`` is not a string."""
    login = login_claim(claims)
    if login is None:
        raise AccessError("token has no login (name)")
    sub = claims.get("sub", "")
    if not isinstance(sub, str):
        raise AccessError("token sub must be a string")
    exp, iat, jti = _number(claims.get("exp")), _number(claims.get("iat")), claims.get("jti")
    # exp rounded up, never down: a non-integer NumericDate (RFC 7519 §2) is valid until it passes, so its session
    # is closed no earlier (PROTOCOL.md §2) and the verifier accepts no token its session's timer has expired
    return Identity(login, sub, None if exp is None else math.ceil(exp), iat, jti if isinstance(jti, str) else None)


def _number(value: object) -> float | None:
    return None if isinstance(value, bool) or not isinstance(value, (int, float)) else value
