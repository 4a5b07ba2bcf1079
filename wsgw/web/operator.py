"""``POST /disconnect`` and ``POST /revoke`` on the operator listener (PROTOCOL.md §3.1).

Body: one JSON object, ``{"login"|"sub", "reason"?}`` for ``/disconnect``,
``{"login"|"sub"|"jti", "before"?: unix seconds}`` for ``/revoke`` (checked by
``wsgw.control.parse_request``); header ``Authorization: Bearer <token>`` with
the token of ``[admin] publish_token_file``, as ``/publish``. Answers: 202
``{"accepted":true}`` once the control message is on the bus (for ``/revoke``,
after the revocations were stored), 400 with the reason for a bad body, 401
without the right token, 403 when no token file is configured, 405 for another
method, 413 over ``MAX_PUBLISH_BYTES``, 503 when the store or the bus fails.
Every answer is counted by path and status (``counts``, for /metrics).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.web.server import Request

from wsgw.control import OPS, OUTCOMES, Operator, RequestError
from wsgw.reauth import OUTCOMES as REAUTH_OUTCOMES
from wsgw.web.publish import MAX_PUBLISH_BYTES, TokenPage


class OperatorPage(TokenPage):
    """``POST /<op>`` for ``op`` in ``disconnect``, ``revoke``: the request onto the control topic through
    ``operator`` (None when no operator token is configured: 403). ``token`` is the operator token."""

    def __init__(self, op: str, operator: Operator | None, token: bytes | None,
                 counts: Counter[tuple[str, int]]) -> None:
        super().__init__(token if operator is not None else None)
        self._op = op
        self._operator = operator
        self._counts = counts
        self.usage = f"use POST with the {op} request as a JSON object"
        self.off = f"/{op} is off: set [admin] publish_token_file"

    def set_token(self, token: bytes | None) -> None:
        super().set_token(token if self._operator is not None else None)

    def count(self, request: Request, status: int) -> None:
        self._counts[(f"/{self._op}", status)] += 1

    def post(self, request: Request) -> bytes | int:
        assert self._operator is not None
        if getattr(request, "too_large", False):
            return self._body(request, 413, {"error": f"the body is over {MAX_PUBLISH_BYTES} bytes"})
        assert request.content is not None
        try:
            fields = self._operator.parse(self._op, json.loads(request.content.read()))
        except (ValueError, RecursionError) as e:
            reason = str(e) if isinstance(e, RequestError) else f"not JSON: {str(e)[:80]}"
            return self._body(request, 400, {"error": reason})
        try:
            d = self._operator.request(fields)
        except Exception as e:  # noqa: BLE001 - e.g. the store failing synchronously: answer, never hang
            return self._body(request, 503, {"error": f"the request could not be sent: {e}"})
        return self.answer_when(request, d, lambda _: (202, {"accepted": True}), "store or bus")


def operator_metrics(requests: Mapping[tuple[str, int], int], control: Mapping[tuple[str, str], int] | None,
                     revoked: Mapping[str, int], revocations: int) -> Iterator[Metric]:
    """The /metrics families of PROTOCOL.md §3.1: operator requests by path and status, control messages by op and
    outcome (``None``: no control handler), sessions closed by revocation by why, revocations in force."""
    family = CounterMetricFamily("wsgw_operator_requests", "GET /info, POST /disconnect and /revoke requests on "
                                 "the operator listener, by path and HTTP status.", labels=["path", "status"])
    for (path, status), count in sorted(requests.items()):
        family.add_metric([path, str(status)], count)
    yield family
    if control is not None:
        family = CounterMetricFamily("wsgw_control_messages", "Control messages (operator /disconnect and /revoke "
                                     "from any instance) received, by op and outcome: applied, forged (wrong or "
                                     "missing mac, or no operator token here), malformed, stale (sent over 300 s "
                                     "away from now, or a replay).", labels=["op", "outcome"])
        counts = {(op, outcome): 0 for op in OPS for outcome in OUTCOMES}
        counts.update(control)
        for (op, outcome), count in sorted(counts.items()):
            family.add_metric([op, outcome], count)
        yield family
    family = CounterMetricFamily("wsgw_sessions_revoked", "Sessions closed because their access was revoked (4003, "
                                 "or 1013 when it could not be re-derived), by why.", labels=["why"])
    for why, count in sorted({"disconnect": 0, "revoke": 0, **revoked}.items()):
        family.add_metric([why], count)
    yield family
    yield GaugeMetricFamily("wsgw_revocations", "Revocations in force on this instance (operator /revoke, deleted "
                            "users and workspaces), until max_token_lifetime after their time.", value=revocations)


class ReauthCounts(Protocol):
    """Live re-authorization (``wsgw.reauth.Reauthorizer``)."""

    events: int
    sessions: Counter[str]

    @property
    def in_flight(self) -> int: ...

    @property
    def suspended(self) -> int: ...


def reauth_metrics(reauth: ReauthCounts) -> Iterator[Metric]:
    """The /metrics families of live re-authorization (PROTOCOL.md §3.1)."""
    yield CounterMetricFamily("wsgw_reauthorization_events", "IDM events that can change access (an Acl on a role, "
                              "a Role, a User or a Workspace; any Type but READ, LOGIN, LOGOUT), whether or not a "
                              "session here was affected.", value=reauth.events)
    family = CounterMetricFamily("wsgw_reauthorized_sessions", "Sessions whose access an IDM event made the gateway "
                                 "re-derive, by outcome: applied (the new access), refused (the backend refused the "
                                 "token: 4003), unavailable (no answer: 1013), gone (closed or re-subscribed "
                                 "meanwhile), deleted (user deleted, claims resolver: 4003).", labels=["outcome"])
    for outcome in REAUTH_OUTCOMES:
        family.add_metric([outcome], reauth.sessions[outcome])
    yield family
    yield GaugeMetricFamily("wsgw_reauthorization_requests_in_flight", "Requests to the access backend re-deriving "
                            "sessions' access now.", value=reauth.in_flight)
    yield GaugeMetricFamily("wsgw_reauthorization_sessions_suspended", "Sessions whose frames wait for the backend's "
                            "new answer about their access.", value=reauth.suspended)
