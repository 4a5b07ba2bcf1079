"""The one operator listener of N workers (``[admin] listen``), served by the supervisor.

Each worker serves its own operator Site (wsgw/web/site.py, unchanged) on a
private UNIX socket, ``<run dir>/worker-<slot>.sock`` (mode 0600, in a 0700
directory made for the run). The supervisor's Site, on ``[admin] listen``:

- ``GET /metrics``: every running worker's ``/metrics`` fetched at once (each
  within ``SCRAPE_TIMEOUT`` s) and merged (wsgw/workers/aggregate.py), plus
  per-worker families: ``wsgw_workers`` (configured), ``wsgw_worker_up``,
  ``wsgw_worker_restarts_total``, ``wsgw_worker_pid``,
  ``wsgw_worker_connections`` (open sockets), ``wsgw_worker_deliveries_total``
  and ``wsgw_worker_cpu_seconds_total``, each labelled ``worker`` (0 to N-1);
- ``GET /healthz``: 200 ``ok`` when every worker runs and answers its own
  ``/healthz`` 200, else 503 naming each worker that does not (``worker 1
  restarting``, ``worker 0: bus connecting``);
- anything else (``POST /publish/<topic>``, ``/disconnect``, ``/revoke``): the
  request passed as it came (method, path, ``Authorization``, ``Content-Type``,
  body) to one running worker, the next one each time, and its answer passed
  back (status, headers but the hop-by-hop ones, body): ``GET /info`` and the
  operator page too (every worker is an instance in the registry). Any
  worker can take them: they go onto the bus and the control channel, which
  every worker reads (PROTOCOL.md §3.1). A body over 1 MiB is answered 413 here,
  503 when no worker runs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from wsgw.web.listener import GuardedSite, ListenerGuard
from wsgw.web.metrics import listener_metrics
from wsgw.web.publish import MAX_PUBLISH_BYTES, CappedRequest
from wsgw.web.site import Router
from wsgw.workers.aggregate import Aggregate, Families, parse, per_worker

SCRAPE_TIMEOUT = 5.0  # seconds one worker has to answer /metrics or /healthz
PASSED_HEADERS = (b"authorization", b"content-type")
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server",
                        b"upgrade", b"te", b"trailer", b"proxy-authenticate"})


class Pool(Protocol):
    """The supervisor's workers, as the operator Site sees them."""

    count: int

    def alive(self) -> Sequence[tuple[int, int]]:
        """``(slot, pid)`` of every worker process running now, by slot."""

    def restarts(self) -> Mapping[int, int]:
        """Restarts so far, by slot."""

    def socket_path(self, slot: int) -> str:
        """The private UNIX socket of worker ``slot``'s operator Site."""


@implementer(IAgentEndpointFactory)
class _WorkerSockets:
    """Routes ``http://worker<slot>/...`` to worker ``slot``'s private UNIX socket."""

    def __init__(self, reactor: Any, pool: Pool) -> None:
        self._reactor = reactor
        self._pool = pool

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        slot = int(uri.host.decode("ascii").removeprefix("worker"))
        return UNIXClientEndpoint(self._reactor, self._pool.socket_path(slot), timeout=SCRAPE_TIMEOUT)


class WorkersView:
    """Asks the workers over their private sockets; keeps the merged metrics (``aggregate``)."""

    _log = Logger()

    def __init__(self, reactor: Any, pool: Pool, guard: ListenerGuard) -> None:
        self._reactor = reactor
        self._pool = pool
        self._agent = Agent.usingEndpointFactory(reactor, _WorkerSockets(reactor, pool))
        self.aggregate = Aggregate()
        self.publish_requests: Counter[int] = Counter()  # answered here: 413, 503
        self._registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._registry)
        self._registry.register(Families(lambda: listener_metrics([guard])))
        self._next = 0

    def ask(self, slot: int, method: bytes, path: bytes, headers: Headers | None = None,
            body: bytes | None = None) -> Deferred[tuple[int, Headers, bytes]]:
        """``(status, headers, body)`` of worker ``slot``'s answer to the request; fails after SCRAPE_TIMEOUT."""
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        d = self._agent.request(method, b"http://worker%d%s" % (slot, path), headers, producer)

        def read(response: Any) -> Deferred[tuple[int, Headers, bytes]]:
            return readBody(response).addCallback(lambda data: (response.code, response.headers, data))

        d.addCallback(read)
        d.addTimeout(SCRAPE_TIMEOUT, self._reactor, onTimeoutCancel=_no_answer)
        return d

    def next_worker(self) -> int | None:
        """The slot of the running worker to pass the next request to (each in turn), None when none runs."""
        running = [slot for slot, _ in self._pool.alive()]
        if not running:
            return None
        self._next = (self._next + 1) % len(running)
        return running[self._next]

    @inlineCallbacks
    def metrics(self) -> Any:
        """The merged families (with the per-worker ones) once every running worker answered or timed out."""
        running = list(self._pool.alive())
        answers = yield DeferredList([self.ask(slot, b"GET", b"/metrics") for slot, _ in running],
                                     consumeErrors=True)
        fresh = []
        for (slot, pid), (ok, answer) in zip(running, answers, strict=True):
            if ok and answer[0] == 200:
                try:
                    self.aggregate.record(slot, pid, parse(answer[2].decode("utf-8")))
                except ValueError as e:
                    self._log.warn("worker {worker}: /metrics is not a Prometheus exposition: {error}", worker=slot,
                                   error=str(e))
                    continue
                fresh.append(slot)
            else:
                self._log.warn("worker {worker} did not answer /metrics: {error}", worker=slot,
                               error=answer.getErrorMessage() if not ok else f"status {answer[0]}")
        own = list(self._registry.collect())
        own.append(_publish_family(self.publish_requests))
        families = self.aggregate.merged(fresh, own)
        return families + self._per_worker(fresh, running)

    def _per_worker(self, fresh: list[int], running: list[tuple[int, int]]) -> list[Metric]:
        slots = range(self._pool.count)
        total = self.aggregate.total
        return [
            _gauge("wsgw_workers", "Worker processes configured ([server] workers).", self._pool.count),
            per_worker("wsgw_worker_up", "1 while the worker runs and answered this scrape.", "gauge",
                       {slot: 1 if slot in fresh else 0 for slot in slots}),
            per_worker("wsgw_worker_pid", "Process id of the worker (0 while it is down).", "gauge",
                       {slot: dict(running).get(slot, 0) for slot in slots}),
            per_worker("wsgw_worker_restarts", "Times the supervisor started the worker again after it ended.",
                       "counter", {slot: self._pool.restarts().get(slot, 0) for slot in slots}),
            per_worker("wsgw_worker_connections", "Open WebSocket connections of the worker.", "gauge",
                       {slot: total(slot, "wsgw_connections") if slot in fresh else 0 for slot in slots}),
            per_worker("wsgw_worker_deliveries", "Frames the worker's current process handed to its sockets.",
                       "counter", {slot: total(slot, "wsgw_deliveries_total") for slot in slots}),
            per_worker("wsgw_worker_cpu_seconds", "CPU seconds of the worker's current process.", "counter",
                       {slot: total(slot, "process_cpu_seconds_total") for slot in slots}),
        ]

    @inlineCallbacks
    def problem(self) -> Any:
        """None when every worker runs and is healthy, else what is wrong, one part per worker."""
        running = dict(self._pool.alive())
        problems = [f"worker {slot} restarting" for slot in range(self._pool.count) if slot not in running]
        slots = sorted(running)
        answers = yield DeferredList([self.ask(slot, b"GET", b"/healthz") for slot in slots], consumeErrors=True)
        for slot, (ok, answer) in zip(slots, answers, strict=True):
            if not ok:
                problems.append(f"worker {slot} not answering: {answer.getErrorMessage()}")
            elif answer[0] != 200:
                problems.append(f"worker {slot}: {answer[2].decode('utf-8', 'replace').strip()}")
        return "; ".join(sorted(problems)) or None


def _no_answer(result: Any, timeout: float) -> Any:
    """``ask``'s timeout: the agent fails a cancelled request with ``ResponseNeverReceived([CancelledError])``,
    which ``addTimeout`` leaves as is (its message a list of failures' reprs); TimeoutError names the wait."""
    if isinstance(result, Failure):
        raise TimeoutError(f"no answer within {timeout:g} s")
    return result


def _gauge(name: str, doc: str, value: float) -> Metric:
    family = Metric(name, doc, "gauge")
    family.add_sample(name, {}, value)
    return family


def _publish_family(counts: Counter[int]) -> Metric:
    family = Metric("wsgw_publish_requests", "POST /publish requests on the operator listener, by HTTP status.",
                    "counter")
    for status, count in sorted(counts.items()):
        family.add_sample("wsgw_publish_requests_total", {"status": str(status)}, count)
    return family


def _answer(request: Request, d: Deferred[Any], write: Callable[[Any], None]) -> int:
    finished = [False]
    request.notifyFinish().addErrback(lambda _: finished.__setitem__(0, True))

    def done(result: Any) -> None:
        if not finished[0]:
            write(result)
            request.finish()

    d.addCallback(done)
    d.addErrback(lambda f: Logger().failure("operator request failed", f))
    return NOT_DONE_YET


class MergedMetrics(Resource):
    """``GET /metrics``: the workers' metrics merged."""

    isLeaf = True

    def __init__(self, view: WorkersView) -> None:
        super().__init__()
        self._view = view

    def render_GET(self, request: Request) -> int:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")

        def write(families: list[Metric]) -> None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(Families(lambda: families))
            request.setHeader(b"content-type", content_type.encode())
            request.setHeader(b"cache-control", b"no-store")
            request.write(encoder(registry))

        return _answer(request, self._view.metrics(), write)


class WorkersHealth(Resource):
    """``GET /healthz``: 200 ``ok`` or 503 with what is wrong."""

    isLeaf = True

    def __init__(self, view: WorkersView) -> None:
        super().__init__()
        self._view = view

    def render_GET(self, request: Request) -> int:
        def write(problem: str | None) -> None:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            if problem is not None:
                request.setResponseCode(503)
            request.write(b"ok\n" if problem is None else f"{problem}\n".encode())

        return _answer(request, self._view.problem(), write)


class PassToWorker(Resource):
    """Any other request: passed to one running worker's operator Site, its answer passed back."""

    isLeaf = True

    def __init__(self, view: WorkersView) -> None:
        super().__init__()
        self._view = view

    def render(self, request: Request) -> bytes | int:
        if getattr(request, "too_large", False):
            return self._json(request, 413, {"error": f"the body is over {MAX_PUBLISH_BYTES} bytes"})
        slot = self._view.next_worker()
        if slot is None:
            return self._json(request, 503, {"error": "no worker is running"})
        headers = Headers()
        for name in PASSED_HEADERS:
            for value in request.requestHeaders.getRawHeaders(name, []):
                headers.addRawHeader(name, value)
        assert request.content is not None
        body = request.content.read() if request.method == b"POST" else None
        d = self._view.ask(slot, request.method, request.uri, headers, body)

        def write(answer: tuple[int, Headers, bytes]) -> None:
            status, got, data = answer
            request.setResponseCode(status)
            for name, values in got.getAllRawHeaders():
                if name.lower() not in HOP_BY_HOP:
                    for value in values:
                        request.responseHeaders.addRawHeader(name, value)
            request.write(data)

        def failed(failure: Any) -> tuple[int, Headers, bytes]:
            text = json.dumps({"error": f"worker {slot} did not answer: {failure.getErrorMessage()}"})
            return 503, Headers({b"content-type": [b"application/json"]}), text.encode() + b"\n"

        d.addErrback(failed)
        return _answer(request, d, write)

    def _json(self, request: Request, status: int, answer: dict[str, Any]) -> bytes:
        if request.path.startswith(b"/publish/"):
            self._view.publish_requests[status] += 1
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(answer).encode() + b"\n"


def make_supervisor_site(view: WorkersView, guard: ListenerGuard, *, access_log: bool = False) -> GuardedSite:
    """The operator Site of the supervisor (the module docstring)."""
    passed = PassToWorker(view)
    routes = {b"/metrics": MergedMetrics(view), b"/healthz": WorkersHealth(view)}
    return GuardedSite(Router(routes, {b"/": passed}), guard, CappedRequest, access_log=access_log, debug_gets=True)
