"""The reactor's iteration and direct reads, compiled by mypyc (issue 13, goal 2; bench/RESULTS.md "The reactor
turn"): copies of Twisted 26.10's code, pinned by the source's hash in tests/test_reactor_loop.py and
tests/test_direct_reads.py.

An event that arrives alone costs one reactor turn: ``ReactorBase.mainLoop``'s iteration
(``runUntilCurrent``, ``timeout``, the ``_topHandler`` context), ``EPollReactor.doPoll``, the read. Interpreted, the
turn cost more instructions than the event's own rules. ``main_loop`` is that iteration with
``runUntilCurrent`` called only when it has something to do (a call from a thread, a new or due timed call, a
cancellation sweep, a stop to finish) and ``timeout`` computed here; ``poll``, ``read`` and ``recv`` are the
iteration ``wsgw.internals.twisted.read_directly`` installs.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import main
from twisted.python import failure, log

_EPOLLIN = 1  # select.EPOLLIN
EWOULDBLOCK = errno.EWOULDBLOCK  # as twisted.internet.tcp (POSIX)
_LONGEST = 2147483  # ReactorBase.timeout's longest sleep: 2 ** 31 ms, epoll_wait's int


def main_loop(reactor: Any, top_handler: Any, terminated: Callable[[], object]) -> None:
    """``ReactorBase.mainLoop``: until the reactor stops, run what is due, then wait for I/O at most until the next
    timed call. ``top_handler`` is Twisted's ``_topHandler`` (an exception out of an iteration is logged
    "Unexpected error in main loop" and the loop goes on, as its ``with`` does); ``terminated`` logs the end."""
    while reactor._started:
        try:
            if _due(reactor):
                reactor.runUntilCurrent()
            t2 = _timeout(reactor)
            t = reactor.running and t2
            reactor.doIteration(t)
        except BaseException as e:  # noqa: BLE001 - what `with _topHandler:` catches: everything, logged
            top_handler.__exit__(type(e), e, e.__traceback__)
    terminated()


def _due(reactor: Any) -> bool:
    """Whether ``ReactorBase.runUntilCurrent`` would do anything now: False when it would only read the clock."""
    if reactor.threadCallQueue or reactor._newTimedCalls or reactor._justStopped:
        return True
    pending = reactor._pendingTimedCalls
    if pending and pending[0].time <= reactor.seconds():
        return True
    cancellations: int = reactor._cancellations
    return cancellations > 50 and cancellations > len(pending) >> 1


def _timeout(reactor: Any) -> Any:
    """``ReactorBase.timeout``: seconds until the next timed call (0 when due, at most ``_LONGEST``); None
    without one."""
    if reactor._newTimedCalls:
        reactor._insertNewDelayedCalls()
    pending = reactor._pendingTimedCalls
    if not pending:
        return None
    delay = pending[0].time - reactor.seconds()
    return max(0, min(_LONGEST, delay))


def poll(reactor: Any, direct: dict[Any, Callable[[], Any]], timeout: Any) -> None:
    """``EPollReactor.doPoll``, the transports in ``direct`` read without the log context when only readable."""
    if timeout is None:
        timeout = -1  # Wait indefinitely.
    try:
        ready = reactor._poller.poll(timeout, len(reactor._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = reactor._selectables
    for fd, event in ready:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        reader = direct.get(selectable) if event == _EPOLLIN else None
        if reader is not None:
            read(reactor, selectable, fd, event, reader)
        else:
            log.callWithLogger(selectable, reactor._doReadOrWrite, selectable, fd, event)


def read(reactor: Any, selectable: Any, fd: int, event: int, reader: Callable[[], Any]) -> None:
    """``_doReadOrWrite`` for a descriptor only readable, still open, whose read goes well; anything else (a
    closed descriptor, a read that ends the connection or raises) as ``_doReadOrWrite`` handles it, in the
    selectable's log context."""
    try:
        closed = selectable.fileno() == -1
    except BaseException:  # noqa: BLE001 - _doReadOrWrite meets it again, and handles it
        closed = True
    if closed:
        log.callWithLogger(selectable, reactor._doReadOrWrite, selectable, fd, event)
        return
    try:
        why = reader()
    except BaseException:
        log.callWithLogger(selectable, _failed, reactor, selectable, failure.Failure())
        return
    if why:
        log.callWithLogger(selectable, reactor._disconnectSelectable, selectable, why, True)


def recv(transport: Any, data_received: Callable[[bytes], object]) -> Any:
    """``tcp.Connection.doRead`` and ``_dataReceived`` with the bytes handed to ``data_received``."""
    try:
        data = transport.socket.recv(transport.bufferSize)
    except OSError as se:
        if se.args[0] == EWOULDBLOCK:
            return None
        return main.CONNECTION_LOST
    if not data:
        return main.CONNECTION_DONE
    data_received(data)
    return None


def _failed(reactor: Any, selectable: Any, reason: failure.Failure) -> None:
    """What ``_doReadOrWrite`` does when ``doRead`` raises: log it, then disconnect with the exception (as not in
    a read: ``_doReadOrWrite`` marks the read only once ``doRead`` returned)."""
    log.err(reason)
    reactor._disconnectSelectable(selectable, reason.value, False)
