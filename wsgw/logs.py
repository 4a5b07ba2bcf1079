"""Logging: JSON lines (``[log] format = json``), and the budget of lines peers can cause.

``LineBudget`` bounds the log lines peers can make the daemon write (issue 11
§4): the lines about one peer's doings (a subscribe, a refusal, a close, a
WebSocket error, an HTTP request, a backend failure it triggered) are written
at most ``per_minute`` a minute for each kind, and the rest are counted.

JSON lines: one JSON object per log event, for journald and log shippers.

Each line holds ``time`` (ISO 8601, UTC), ``level``, ``namespace``,
``message`` (the event's text) and the event's named fields (``sid``,
``login``, ``topic``, ...), plus ``error`` and ``traceback`` for a failure.
Fields whose name says they hold a credential (token, jwt, secret, password,
authorization, cookie) are written as ``"[redacted]"``, in the fields and in
the message text; the gateway never passes a credential to a log call in the
first place, and the tests check both.

Under twistd the daemon's observer is wired through twistd's own ``--logger``
hook: ``wsgw.tap.Options.postOptions`` calls ``use_live_logs_for_twistd``, which
points twistd's ``logger`` option at ``wsgw.tap.twistd_observer`` (which passes
the reactor to ``observer_for_twistd``) unless ``--logger`` or ``--syslog`` was
given on the command line. That observer (``LiveLogs``)
writes text (as twistd's own) or JSON lines, and only events at or above
``[log] level``; both can change while the daemon runs (SIGHUP, wsgw.reload:
``set_live_logs``). The destination follows twistd's rules: standard output
with ``--nodaemon`` (no ``--logfile``) or ``--logfile -``, else the log file
(``twistd.log`` by default, reopened on SIGUSR1 as twistd does).

No line names an object by its default repr (``<... object at 0x...>``):
``LiveLogs`` writes each event as ``tidied`` makes it (a field holding such an
object is written as its class name; Twisted's "Starting factory" and "Stopping
factory" lines, one per outgoing connection, are debug lines naming the
factory's class).
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections import Counter
from collections.abc import MutableMapping
from typing import IO, Any

from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import FileLogObserver, ILogObserver, LogEvent, Logger, LogLevel, formatEvent, textFileLogObserver
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

REDACTED = "[redacted]"
_CREDENTIAL = re.compile(r"token|jwt|secret|password|passwd|authorization|cookie|credential", re.IGNORECASE)
# keys of legacy twisted.python.log events that are rendered into "message" or are noise
_LEGACY = frozenset({"message", "format", "isError", "time", "printed", "failure", "why", "log_legacy"})
_SCALARS = (str, int, float, bool, type(None))

# set by use_live_logs_for_twistd, read by observer_for_twistd: (log file name or "", nodaemon, format, level)
_twistd_destination: tuple[str, bool, str, str] = ("", True, "text", "info")

LEVELS = ("debug", "info", "warn", "error", "critical")
"""The values of ``[log] level``, least severe first: events below the configured one are not written."""


def _redacted(event: LogEvent) -> LogEvent:
    if not any(_CREDENTIAL.search(key) for key in event if isinstance(key, str) and not key.startswith("log_")):
        return event
    return {key: (REDACTED if isinstance(key, str) and not key.startswith("log_") and _CREDENTIAL.search(key)
                  else value) for key, value in event.items()}


def event_as_json(event: LogEvent) -> str:
    """One log event as one line of JSON (ending with a newline)."""
    event = _redacted(event)
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _iso(event.get("log_time")),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_") or key in _LEGACY or key in record:
            continue
        if key == "system" and value == "-":
            continue
        record[key] = value if isinstance(value, _SCALARS) else _plain(value)
    if isinstance(failure, Failure):
        record["error"] = f"{getattr(failure.type, '__name__', 'Error')}: {failure.getErrorMessage()}"
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def _plain(value: Any) -> Any:
    """A JSON-able rendering of a field value: lists and dicts of scalars as they are, anything else as text."""
    try:
        json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)
    return value


def _iso(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_observer(out: IO[str]) -> ILogObserver:
    """A log observer writing one JSON object per line to ``out``."""
    return FileLogObserver(out, event_as_json)


def use_live_logs_for_twistd(server_options: MutableMapping[str, Any] | None, log_format: str = "text",
                             level: str = "info") -> bool:
    """Make twistd's log observer ``LiveLogs`` (``log_format``, ``level``); a ``--logger`` or ``--syslog`` given
    on the command line wins (then the format and level settings are not applied).

    ``server_options`` is twistd's ServerOptions (the plugin Options' ``parent``); it must be called before
    twistd's own ``postOptions`` (which imports the named factory), i.e. from the plugin's ``postOptions``.
    Returns whether twistd will log through ``LiveLogs``.
    """
    global _twistd_destination
    if server_options is None or "logger" not in server_options:
        return False  # not under twistd
    if server_options["logger"] is not None or server_options.get("syslog"):
        return False
    _twistd_destination = (server_options.get("logfile") or "", bool(server_options.get("nodaemon")), log_format,
                           level)
    server_options["logger"] = "wsgw.tap.twistd_observer"  # (the entry point's: it has the reactor)
    return True


def use_json_for_twistd(server_options: MutableMapping[str, Any] | None) -> bool:
    """``use_live_logs_for_twistd`` with JSON lines."""
    return use_live_logs_for_twistd(server_options, "json")


_PRIORITY = {LogLevel.levelWithName(name): rank for rank, name in enumerate(LEVELS)}
_FACTORY_LINES = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})  # Factory.doStart


class _Name(str):
    """A class name standing for an object in a log line: its repr is the bare name (no quotes, no address)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def tidied(event: LogEvent) -> LogEvent:
    """``event`` as the daemon writes it: each field whose value has only the default repr (``<... object at
    0x...>``, an address, not a description) holds the value's class name instead; Twisted's factory start and
    stop lines (``Factory.doStart``, ``doStop``: one per outgoing connection, naming the factory by its repr) are
    debug lines naming the factory's class. The same event when nothing changes."""
    changes: dict[str, Any] = {}
    if event.get("log_format") in _FACTORY_LINES:
        changes["log_level"] = LogLevel.debug
        changes["factory"] = _Name(type(event.get("factory")).__name__)
    for key, value in event.items():
        if (type(value).__repr__ is object.__repr__ and isinstance(key, str) and not key.startswith("log_")
                and key not in changes):
            changes[key] = _Name(type(value).__name__)
    return {**event, **changes} if changes else event


def writes(level: LogLevel) -> bool:
    """Whether the daemon's log (``live_logs``) writes events of ``level`` now; True without ``live_logs`` (its
    observer then filters nothing)."""
    return live_logs is None or _PRIORITY.get(level, 1) >= LEVELS.index(live_logs.level)


@implementer(ILogObserver)
class LiveLogs:
    """The daemon's observer under twistd: ``format`` ``text`` (twistd's own lines) or ``json`` (``event_as_json``)
    to ``out``, only events at or above ``level`` (a name of ``LEVELS``); both attributes may change at any time.
    Events are written as ``tidied`` makes them."""

    def __init__(self, out: IO[str], log_format: str = "text", level: str = "info") -> None:
        self._observers = {"text": textFileLogObserver(out), "json": json_observer(out)}
        self.format = log_format
        self.level = level

    def __call__(self, event: LogEvent) -> None:
        event = tidied(event)
        level = event.get("log_level")
        if level is not None and _PRIORITY.get(level, 1) < LEVELS.index(self.level):
            return
        self._observers[self.format](event)


live_logs: LiveLogs | None = None
"""The observer ``observer_for_twistd`` made (None when twistd logs elsewhere: ``--logger``, ``--syslog``, no twistd)."""


def set_live_logs(log_format: str, level: str) -> bool:
    """Change the format and level of the daemon's log lines from now on; False when ``live_logs`` is None."""
    if live_logs is None:
        return False
    live_logs.format, live_logs.level = log_format, level
    return True


def observer_for_twistd(reactor: IReactorFromThreads) -> ILogObserver:
    """What twistd's ``--logger`` factory (``wsgw.tap.twistd_observer``) returns: ``LiveLogs`` where twistd would
    have written text; a log file is reopened on SIGUSR1 through ``reactor`` (``callFromThread``)."""
    global live_logs
    logfile, nodaemon, log_format, level = _twistd_destination
    out: IO[str]
    if logfile == "-" or (nodaemon and not logfile):
        out = sys.stdout
    else:
        log_file: LogFile = LogFile.fromFullPath(logfile or "twistd.log")  # type: ignore[no-untyped-call]
        _rotate_on_sigusr1(log_file, reactor)
        out = log_file  # type: ignore[assignment]
    live_logs = LiveLogs(out, log_format, level)
    return live_logs


def _rotate_on_sigusr1(logfile: LogFile, reactor: IReactorFromThreads) -> None:
    """Reopen (rotate) the log file on SIGUSR1, as twistd does for its own log file (twisted.scripts._twistd_unix):
    in the reactor's thread at its next turn, not inside whatever write the signal interrupted."""
    import signal

    if not signal.getsignal(signal.SIGUSR1):
        signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(logfile.rotate))


KINDS = ("subscribed", "refused", "too_slow", "access_backend", "chat_store", "websocket", "http", "internal_error",
         "control")
"""The kinds of lines a ``LineBudget`` counts (the ``kind`` label of ``wsgw_log_lines_suppressed_total``): subscribes
accepted, subscribes refused, readers closed 4008, access backend failures, chat frames refused while the store
is unavailable, Autobahn's lines about a socket (a failed handshake, a dropped connection, a protocol error), the
HTTP access log, and the tracebacks of a client frame or subscribe that failed unexpectedly (a bug, which a peer
repeating the frame must not turn into a flood of tracebacks), and control messages dropped (forged, malformed,
stale: PROTOCOL.md §3.1)."""


class LineBudget:
    """At most ``per_minute`` log lines of each kind a minute (0 = no limit).

    A kind's minute starts with its first line. The line that uses up the minute's budget comes with a notice
    that further ones are left out; those are counted (``suppressed``, by kind, read by /metrics), and
    the first line of the kind written after the minute is preceded by how many were left out. Kinds are the
    few names of ``KINDS``, so what the budget holds is bounded too.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, per_minute: int = 60) -> None:
        self._clock = clock
        self.per_minute = per_minute
        self._minutes: dict[str, list[float]] = {}  # kind -> [start of its minute, lines written, left out]
        self.suppressed: Counter[str] = Counter()

    def admit(self, kind: str) -> bool:
        """Whether one more line of ``kind`` may be written now (if not, it is counted as left out)."""
        if not self.per_minute:
            return True
        now = self._clock.seconds()
        minute = self._minutes.get(kind)
        if minute is None or now - minute[0] >= 60:
            if minute is not None and minute[2]:
                self._log.warn("left out {count} log lines of kind {kind} (over {limit} a minute)",
                               count=int(minute[2]), kind=kind, limit=self.per_minute)
            minute = self._minutes[kind] = [now, 0, 0]
        if minute[1] < self.per_minute:
            minute[1] += 1
            if minute[1] == self.per_minute:
                self._log.warn("{limit} log lines of kind {kind} this minute: the next ones are left out for "
                               "{seconds:.0f} s (counted in wsgw_log_lines_suppressed_total)", limit=self.per_minute,
                               kind=kind, seconds=minute[0] + 60 - now)
            return True
        minute[2] += 1
        self.suppressed[kind] += 1
        return False

    def info(self, log: Logger, kind: str, text: str, **fields: Any) -> None:
        """``log.info(text, **fields)`` within the budget of ``kind``."""
        if self.admit(kind):
            log.emit(LogLevel.info, text, **fields)

    def warn(self, log: Logger, kind: str, text: str, **fields: Any) -> None:
        """``log.warn(text, **fields)`` within the budget of ``kind``."""
        if self.admit(kind):
            log.emit(LogLevel.warn, text, **fields)

    def failure(self, log: Logger, text: str, failure: Any = None, **fields: Any) -> None:
        """``log.failure(text, failure, **fields)`` (a traceback, critical) within the budget of ``internal_error``."""
        if self.admit("internal_error"):
            log.failure(text, failure, **fields)


class BudgetedLog:
    """Autobahn's logger for the sockets of one factory: ``debug`` and ``trace`` are Autobahn's own (bound once,
    nothing added on the frame path); ``info``, ``warn`` and ``error`` lines are written within ``budget``
    (kind ``websocket``)."""

    def __init__(self, inner: Any, budget: LineBudget) -> None:
        self._inner = inner
        self._budget = budget
        self.debug = inner.debug
        self.trace = inner.trace

    def info(self, *args: Any, **kwargs: Any) -> None:
        if self._budget.admit("websocket"):
            self._inner.info(*args, **kwargs)

    def warn(self, *args: Any, **kwargs: Any) -> None:
        if self._budget.admit("websocket"):
            self._inner.warn(*args, **kwargs)

    def error(self, *args: Any, **kwargs: Any) -> None:
        if self._budget.admit("websocket"):
            self._inner.error(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
