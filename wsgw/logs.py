"""JSON-lines logging (``[log] format = json``): one JSON object per log event, for journald and log shippers.

Each line holds ``time`` (ISO 8601, UTC), ``level``, ``namespace``,
``message`` (the event's text) and the event's named fields (``sid``,
``login``, ``topic``, ...), plus ``error`` and ``traceback`` for a failure.
Fields whose name says they hold a credential (token, jwt, secret, password,
authorization, cookie) are written as ``"[redacted]"``, in the fields and in
the message text; the gateway never passes a credential to a log call in the
first place, and the tests check both.

Under twistd the option is wired through twistd's own ``--logger`` hook:
``wsgw.tap.Options.postOptions`` calls ``use_json_for_twistd``, which points
twistd's ``logger`` option at ``twistd_observer`` unless ``--logger`` or
``--syslog`` was given on the command line. The destination follows twistd's
rules: standard output with ``--nodaemon`` (no ``--logfile``) or
``--logfile -``, else the log file (``twistd.log`` by default).
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import MutableMapping
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

REDACTED = "[redacted]"
_CREDENTIAL = re.compile(r"token|jwt|secret|password|passwd|authorization|cookie|credential", re.IGNORECASE)
# keys of legacy twisted.python.log events that are rendered into "message" or are noise
_LEGACY = frozenset({"message", "format", "isError", "time", "printed", "failure", "why", "log_legacy"})
_SCALARS = (str, int, float, bool, type(None))

# set by use_json_for_twistd, read by twistd_observer: (log file name or "", nodaemon)
_twistd_destination: tuple[str, bool] = ("", True)


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
        record["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
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
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_observer(out: IO[str]) -> ILogObserver:
    """A log observer writing one JSON object per line to ``out``."""
    return FileLogObserver(out, event_as_json)


def use_json_for_twistd(server_options: MutableMapping[str, Any] | None) -> bool:
    """Make twistd's log observer the JSON one; a ``--logger`` or ``--syslog`` given on the command line wins.

    ``server_options`` is twistd's ServerOptions (the plugin Options' ``parent``); it must be called before
    twistd's own ``postOptions`` (which imports the named factory), i.e. from the plugin's ``postOptions``.
    Returns whether twistd will log JSON.
    """
    global _twistd_destination
    if server_options is None or "logger" not in server_options:
        return False  # not under twistd
    if server_options["logger"] is not None or server_options.get("syslog"):
        return False
    _twistd_destination = (server_options.get("logfile") or "", bool(server_options.get("nodaemon")))
    server_options["logger"] = f"{__name__}.twistd_observer"
    return True


def twistd_observer() -> ILogObserver:
    """twistd's ``--logger`` factory: JSON lines where twistd would have written text."""
    logfile, nodaemon = _twistd_destination
    out: IO[str]
    if logfile == "-" or (nodaemon and not logfile):
        out = sys.stdout
    else:
        out = LogFile.fromFullPath(logfile or "twistd.log")
    return json_observer(out)
