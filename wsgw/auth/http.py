"""The non-blocking HTTP client the auth adapters use (the OIDC key set, the http access resolver, the node
metadata backend), on treq.

``TreqClient`` GETs ``(url, headers) -> Deferred((status, body))`` (and POSTs) with an overall
timeout and a body size cap; ``short_reason`` describes a failed fetch without
ever quoting a token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, cast

from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

HttpGet = Callable[[str, Mapping[str, str]], Deferred[tuple[int, bytes]]]
"""The getter the http resolver takes (and TreqClient is): ``(url, headers) -> Deferred((status, body))``."""


def short_reason(failure: Failure) -> str:
    """A short, token-free description of a fetch failure, for error frames and logs."""
    if failure.check(defer.TimeoutError, defer.CancelledError, error.TimeoutError):
        return "timeout"
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return "DNS lookup failed"
    if failure.check(BodyTooLarge):
        return "response too large"
    if failure.check(HttpStatusError):
        return str(failure.value)
    if failure.check(ValueError):  # includes json.JSONDecodeError
        return "bad JSON" if failure.check(json.JSONDecodeError) else str(failure.value)
    return failure.type.__name__ if failure.type else "error"


class BodyTooLarge(Exception):
    """An HTTP response body exceeded the getter's limit."""


class HttpStatusError(Exception):
    """An HTTP response had a status other than 200."""


def bytes_getter(get: HttpGet) -> Callable[[str], Deferred[bytes]]:
    """Adapt a (status, body) getter to the verifier's body getter: anything but 200 is an error."""

    def body(status_body: tuple[int, bytes]) -> bytes:
        status, payload = status_body
        if status != 200:
            raise HttpStatusError(f"HTTP {status}")
        return payload

    return lambda url: get(url, {}).addCallback(body)


class _CappedBody(Protocol):
    """Collects a response body up to ``limit`` bytes; cancelling the Deferred closes the connection."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self._close())

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._close()
            self.done.errback(BodyTooLarge(f"response body over {self._limit} bytes"))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


class TreqClient:
    """Non-blocking HTTP requests with an overall timeout and a body size cap, answering ``(status, body)``:
    ``client(url, headers)`` GETs (the ``HttpGet`` shape), ``client.post(url, body, headers)`` POSTs.

    No cookies are kept (the access backend must not see one user's cookies on another's request) and
    redirects are not followed unless asked. ``reactor`` must provide IReactorTime and IReactorTCP (the
    real reactor in production). ``close()`` drops idle keep-alive connections.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        timeout: float = 10.0,
        max_bytes: int = 1 << 20,
        follow_redirects: bool = False,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._follow_redirects = follow_redirects
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        agent = Agent(cast(Any, reactor), connectTimeout=timeout, pool=self._pool)
        no_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        self._client = HTTPClient(agent, cookiejar=cast(Any, no_cookies))

    def __call__(self, url: str, headers: Mapping[str, str] | None = None) -> Deferred[tuple[int, bytes]]:
        """GET ``url``."""
        return self._request("GET", url, headers, None)

    def post(self, url: str, body: bytes, headers: Mapping[str, str] | None = None) -> Deferred[tuple[int, bytes]]:
        """POST ``body`` to ``url``."""
        return self._request("POST", url, headers, body)

    def _request(self, method: str, url: str, headers: Mapping[str, str] | None,
                 body: bytes | None) -> Deferred[tuple[int, bytes]]:
        request_headers: dict[bytes | str, bytes | str] = {k: v for k, v in (headers or {}).items()}
        d: Deferred[Any] = self._client.request(
            method,
            url,
            headers=request_headers,
            data=body,
            allow_redirects=self._follow_redirects,
            unbuffered=True,
            reactor=cast(Any, self._reactor),
        )
        d.addCallback(self._read)
        d.addTimeout(self._timeout, self._reactor)
        return d

    def _read(self, response: IResponse) -> Deferred[tuple[int, bytes]]:
        body = _CappedBody(self._max_bytes)
        response.deliverBody(body)
        return body.done.addCallback(lambda payload: (response.code, payload))

    def close(self) -> Deferred[None]:
        """Close idle keep-alive connections."""
        return self._pool.closeCachedConnections()
