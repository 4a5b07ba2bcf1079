"""Revocations (PROTOCOL.md §3.1, "Revocations" and "`claims` resolver"): which tokens are refused, which
workspaces a token no longer grants.

A ``Revocation`` names a kind and a key:

- ``login`` / ``sub``: every token of that user issued (``iat``) strictly before ``before`` is refused; a token
  without ``iat`` always matches (an operator's ``POST /revoke``, or a ``User`` deleted under the claims
  resolver);
- ``jti``: that token, whatever ``before`` says;
- ``workspace``: a ``Workspace`` deleted under the claims resolver: tokens issued before ``before`` no longer
  grant it (it is taken out of their access).

Each entry expires ``max_token_lifetime`` seconds after ``before``, plus the verifier's ``leeway`` on ``exp`` (a
token that old has expired anyway, leeway included; the verifier refuses tokens living longer). ``Revocations`` is this instance's copy, read on every subscribe and
access change without I/O; ``IRevocationStore`` keeps them where every instance and a restart find them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import attrs
from twisted.internet.interfaces import IReactorTime

from wsgw.access import Access, Identity

KINDS = ("login", "sub", "jti", "workspace")


@attrs.frozen
class Revocation:
    """One revocation: ``kind`` (one of ``KINDS``), ``key`` (the login, sub, jti or workspace uuid), ``before``
    (unix seconds: tokens issued strictly before it match; ignored for ``jti``)."""

    kind: str
    key: str
    before: float

    def __attrs_post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"revocation kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"a {self.kind} revocation needs a non-empty string")

    def matches(self, who: Identity) -> bool:
        """Whether a token of ``who`` is covered (for ``workspace``: whether the token predates the deletion)."""
        if self.kind == "jti":
            return who.jti == self.key
        if self.kind == "login" and who.login != self.key or self.kind == "sub" and who.sub != self.key:
            return False
        return who.iat is None or who.iat < self.before


class Revocations:
    """This instance's revocations, each kept until ``before + max_token_lifetime + leeway`` (seconds, on
    ``clock``; ``leeway``: the ``[auth] leeway`` the verifier allows past ``exp``, so a revoked token is refused for
    as long as the verifier would accept it).

    ``add`` keeps, per kind and key, the latest ``before``. ``refuses(who)`` and ``withheld(access)`` answer
    without I/O. ``len()`` is the number of live entries (for /metrics).
    """

    def __init__(self, clock: IReactorTime, max_token_lifetime: float, leeway: float = 0.0) -> None:
        self._clock = clock
        self.max_token_lifetime = max_token_lifetime
        self._kept = max_token_lifetime + leeway
        self._entries: dict[tuple[str, str], float] = {}  # (kind, key) -> before
        self._expiry: list[tuple[float, str, str]] = []  # heap of (expires, kind, key)

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def add(self, revocation: Revocation) -> bool:
        """Keep ``revocation`` (a later ``before`` replaces an earlier one); False when it changes nothing (already
        known, or expired already)."""
        self._expire()
        entry = (revocation.kind, revocation.key)
        known = self._entries.get(entry)
        expires = self.expires(revocation)
        if known is not None and known >= revocation.before or expires <= self._clock.seconds():
            return False
        self._entries[entry] = revocation.before
        heapq.heappush(self._expiry, (expires, *entry))
        return True

    def add_all(self, revocations: Iterable[Revocation]) -> None:
        """Keep every one of ``revocations`` (loaded from the store)."""
        for revocation in revocations:
            self.add(revocation)

    def expires(self, revocation: Revocation) -> float:
        """When ``revocation`` stops mattering: ``before + max_token_lifetime + leeway`` (a jti's ``before`` is when
        it was revoked)."""
        return revocation.before + self._kept

    def refuses(self, who: Identity) -> Revocation | None:
        """The revocation that refuses a token of ``who`` (by login, sub or jti), or None."""
        self._expire()
        entries = self._entries
        for kind, key in (("jti", who.jti), ("login", who.login), ("sub", who.sub)):
            if key:
                before = entries.get((kind, key))
                if before is not None:
                    revocation = Revocation(kind, key, before)
                    if revocation.matches(who):
                        return revocation
        return None

    def withheld(self, access: Access) -> frozenset[str]:
        """The uuids of ``access``'s workspaces deleted after its token was issued (to be taken out of it)."""
        if not self._entries:
            return frozenset()
        self._expire()
        who = access.identity
        return frozenset(
            ws.uuid for ws in access.workspaces
            if (before := self._entries.get(("workspace", ws.uuid))) is not None
            and Revocation("workspace", ws.uuid, before).matches(who))

    def _expire(self) -> None:
        expiry, now = self._expiry, self._clock.seconds()
        while expiry and expiry[0][0] <= now:
            _, kind, key = heapq.heappop(expiry)
            before = self._entries.get((kind, key))
            if before is not None and before + self._kept <= now:
                del self._entries[(kind, key)]
