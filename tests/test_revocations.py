"""wsgw.revocations: which tokens are refused and which workspaces a token no longer grants (PROTOCOL.md §3.1)."""

from __future__ import annotations

import time

import jwt
import pytest
from twisted.internet.task import Clock

from wsgw.access import Access, Identity, Workspace, identity_from_claims
from wsgw.devtoken import main
from wsgw.revocations import Revocation, Revocations

DAY = 86400.0


def make(now: float = 1000.0) -> tuple[Revocations, Clock]:
    clock = Clock()
    clock.advance(now)
    return Revocations(clock, DAY), clock


@pytest.mark.parametrize(("revocation", "who", "matches"), [
    (Revocation("login", "alice", 100), Identity("alice", "u1", iat=99), True),
    (Revocation("login", "alice", 100), Identity("alice", "u1", iat=100), False),  # strictly before
    (Revocation("login", "alice", 100), Identity("alice", "u1"), True),  # no iat: always
    (Revocation("login", "alice", 100), Identity("bob", "u1", iat=1), False),
    (Revocation("sub", "u1", 100), Identity("bob", "u1", iat=1), True),
    (Revocation("jti", "t-1", 0), Identity("alice", "u1", iat=5000, jti="t-1"), True),  # whatever before says
    (Revocation("jti", "t-1", 0), Identity("alice", "u1", jti="t-2"), False),
])
def test_a_revocation_matches_tokens_issued_strictly_before(revocation: Revocation, who: Identity,
                                                            matches: bool) -> None:
    assert revocation.matches(who) is matches


def test_revocations_refuse_keep_the_latest_and_expire_after_the_token_lifetime() -> None:
    revocations, clock = make()
    assert revocations.add(Revocation("login", "alice", 900))
    assert not revocations.add(Revocation("login", "alice", 800))  # an earlier one changes nothing
    assert revocations.refuses(Identity("alice", "", iat=850)) == Revocation("login", "alice", 900)
    assert revocations.add(Revocation("login", "alice", 950))
    assert revocations.refuses(Identity("alice", "", iat=920)) is not None
    assert revocations.refuses(Identity("alice", "", iat=950)) is None
    clock.advance(950 + DAY - 1000 - 1)
    assert len(revocations) == 1
    clock.advance(1)
    assert len(revocations) == 0 and revocations.refuses(Identity("alice", "")) is None
    assert not revocations.add(Revocation("sub", "u1", clock.seconds() - DAY))  # expired already


def test_a_deleted_workspace_is_withheld_from_tokens_issued_before() -> None:
    revocations, _ = make()
    a, b = Workspace("ws-a", "a", ()), Workspace("ws-b", "b", ())
    revocations.add(Revocation("workspace", "ws-a", 900))
    old = Access("alice", "u1", "standard", frozenset(), (a, b), iat=800)
    assert revocations.withheld(old) == {"ws-a"}
    assert old.without_workspaces(revocations.withheld(old)).workspaces == (b,)
    assert revocations.withheld(Access("alice", "u1", "standard", frozenset(), (a, b), iat=901)) == frozenset()


@pytest.mark.parametrize(("kind", "key"), [("user", "alice"), ("login", ""), ("login", 3)])
def test_a_revocation_needs_a_known_kind_and_a_key(kind: str, key: object) -> None:
    with pytest.raises(ValueError, match="revocation"):
        Revocation(kind, key, 0)  # type: ignore[arg-type]


def test_a_wsgw_token_minted_after_a_revocation_is_not_refused(capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``wsgw-token`` (the README's way to get a token) writes ``iat``: a token it mints after an operator's
    ``/revoke`` of the login is accepted, as the README says of a token issued after ``before``; without ``iat``
    every revocation matches it (PROTOCOL.md §3.1) and the login could not subscribe for max_token_lifetime."""
    monkeypatch.setenv("WSGW_HMAC_SECRET", "a-development-secret-of-32-bytes-at-least")
    revocations, _ = make(now=time.time())
    revocations.add(Revocation("login", "alice", time.time() - 1))
    assert main(["alice"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert abs(claims["iat"] - time.time()) < 5
    assert revocations.refuses(identity_from_claims(claims)) is None
