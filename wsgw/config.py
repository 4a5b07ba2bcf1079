"""The daemon's configuration: an INI file plus command-line overrides, validated once and frozen.

Every key is declared once, as a field of ``Config`` (section, key, parser, default); an
unknown section or key, or a value that does not parse, is refused at startup
with a message naming the key and the file. Secrets come from files or the
environment (``WSGW_HMAC_SECRET``, ``WSGW_REDIS_PASSWORD``), never from argv.
"""

from __future__ import annotations

import configparser
import math
import os
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from wsgw.logs import LEVELS

DEFAULT_TOPICS = {
    "tree": "topic.pydio.tree.nodes.changes",
    "meta": "topic.pydio.meta.nodes.changes",
    "tasks": "topic.pydio.tasks.event",
    "idm": "topic.pydio.idm.event",
    "activity": "topic.pydio.activity.event",
    "chat": "topic.pydio.chat.event",
    "control": "topic.wsgw.control",
}


class ConfigError(ValueError):
    """A configuration problem, with the file and key it comes from."""


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # float() takes nan and inf, and nan < 0 is False
        raise ValueError("must be a finite number")
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


MAX_WORKERS = 1024  # a typo's bound (each worker is a whole gateway process, ~60 MB): more than any machine's cores


def _count_or_auto(text: str) -> int:
    """A count of at least 1, or ``auto`` (0)."""
    if text.strip().lower() == "auto":
        return 0
    value = int(text)
    if value < 1:
        raise ValueError("must be auto or at least 1")
    return value


def _workers(text: str) -> int:
    """``_count_or_auto``, at most ``MAX_WORKERS``."""
    value = _count_or_auto(text)
    if value > MAX_WORKERS:
        raise ValueError(f"must be auto or at most {MAX_WORKERS}")
    return value


def _size(text: str) -> int:
    value = int(text)
    if value < 64:
        raise ValueError("must be at least 64 bytes")
    return value


def _words(text: str) -> tuple[str, ...]:
    return tuple(w for w in text.replace(",", " ").split() if w)


def _lines(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.splitlines() if w.strip())


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return parse


def _text(text: str) -> str:
    return text.strip()


def _http_url(text: str) -> str:
    """An absolute http(s) URL, or empty."""
    url = text.strip()
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("must be an absolute http:// or https:// URL")
    return url


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError("must be yes or no")


Parser = Callable[[str], Any]


def _key(section: str, key: str, parse: Parser, default: str) -> Any:
    """The one declaration of a configuration key: its ``[section] key``, parser and default as a file writes it."""
    return attrs.field(metadata={"ini": (section, key, parse, default)})


@attrs.frozen
class Config:
    """The validated configuration (``etc/wsgw.ini`` documents every key)."""

    listen: tuple[str, ...] = _key("server", "listen", _lines, "tcp6:5050")
    redis: str = _key("server", "redis", _text, "")
    redis_password_file: str = _key("server", "redis_password_file", _text, "")
    redis_db: int = _key("server", "redis_db", _positive_int, "0")
    shutdown_timeout: float = _key("server", "shutdown_timeout", _positive_float, "10")
    max_connections: int = _key("server", "max_connections", _count_or_auto, "auto")
    handshake_timeout: float = _key("server", "handshake_timeout", _positive_float, "10")
    workers: int = _key("server", "workers", _workers, "1")  # 0: auto (worker_count)
    gc_freeze: bool = _key("server", "gc_freeze", _bool, "yes")
    algorithms: tuple[str, ...] = _key("auth", "algorithms", _words, "HS256")
    hmac_secret_file: str = _key("auth", "hmac_secret_file", _text, "")
    public_key_file: str = _key("auth", "public_key_file", _text, "")
    oidc_issuer: str = _key("auth", "oidc_issuer", _text, "")
    issuer: str = _key("auth", "issuer", _text, "")
    audience: str = _key("auth", "audience", _text, "")
    leeway: float = _key("auth", "leeway", _positive_float, "30")
    max_token_lifetime: float = _key("auth", "max_token_lifetime", _positive_float, "86400")
    revocation_prefix: str = _key("auth", "revocation_prefix", _text, "wsgw:revoked:")
    resolver: str = _key("access", "resolver", _choice("claims", "http"), "claims")
    access_url: str = _key("access", "url", _http_url, "")
    access_cache_ttl: float = _key("access", "cache_ttl", _positive_float, "10")
    access_refusal_ttl: float = _key("access", "refusal_ttl", _positive_float, "5")
    access_timeout: float = _key("access", "timeout", _positive_float, "5")
    access_max_requests: int = _key("access", "max_requests", _positive_int, "32")
    node_meta_url: str = _key("access", "node_meta_url", _http_url, "")
    node_meta_token_file: str = _key("access", "node_meta_token_file", _text, "")
    node_meta_timeout: float = _key("access", "node_meta_timeout", _positive_float, "0.5")
    batch_window: float = _key("delivery", "batch_window", _positive_float, "1.0")
    silent_rate: float = _key("delivery", "silent_rate", _positive_float, "20")
    silent_burst: float = _key("delivery", "silent_burst", _positive_float, "10")
    pacing_rate: float = _key("delivery", "pacing_rate", _positive_float, "30")
    pacing_burst: float = _key("delivery", "pacing_burst", _positive_float, "20")
    pacing_max_delay: float = _key("delivery", "pacing_max_delay", _positive_float, "2")
    max_queued_bytes: int = _key("delivery", "max_queued_bytes", _positive_int, "4194304")
    max_frame_ws: int = _key("websocket", "max_frame_ws", _size, "2048")
    max_frame_chat: int = _key("websocket", "max_frame_chat", _size, "16384")
    ping_interval: float = _key("websocket", "ping_interval", _positive_float, "30")
    pong_timeout: float = _key("websocket", "pong_timeout", _positive_float, "60")
    auth_timeout: float = _key("websocket", "auth_timeout", _positive_float, "30")
    inbound_rate: float = _key("websocket", "inbound_rate", _positive_float, "20")
    inbound_burst: float = _key("websocket", "inbound_burst", _positive_float, "60")
    max_connections_per_ip: int = _key("websocket", "max_connections_per_ip", _positive_int, "0")
    max_connections_per_user: int = _key("websocket", "max_connections_per_user", _positive_int, "64")
    allowed_origins: tuple[str, ...] = _key("websocket", "allowed_origins", _words, "")
    admin_listen: tuple[str, ...] = _key("admin", "listen", _lines, "tcp:5051:interface=127.0.0.1")
    publish_token_file: str = _key("admin", "publish_token_file", _text, "")
    admin_max_connections: int = _key("admin", "max_connections", _positive_int, "64")
    log_format: str = _key("log", "format", _choice("text", "json"), "text")
    log_level: str = _key("log", "level", _choice(*LEVELS), "info")
    access_log: bool = _key("log", "access_log", _bool, "no")
    peer_lines_per_minute: int = _key("log", "peer_lines_per_minute", _positive_int, "60")
    live_page: bool = _key("web", "live_page", _bool, "no")
    operator_page: bool = _key("operator", "page", _bool, "no")
    instance_name: str = _key("operator", "instance_name", _text, "")
    heartbeat: float = _key("operator", "heartbeat", _positive_float, "5")
    instance_prefix: str = _key("operator", "key_prefix", _text, "wsgw:instances:")
    history_cap: int = _key("chat", "history_cap", _positive_int, "1000")
    history_on_join: bool = _key("chat", "history_on_join", _bool, "no")
    presence_timeout: float = _key("chat", "presence_timeout", _positive_float, "20")
    max_message_chars: int = _key("chat", "max_message_chars", _positive_int, "8000")
    max_rooms_per_user: int = _key("chat", "max_rooms_per_user", _positive_int, "1000")
    max_store_calls: int = _key("chat", "max_store_calls", _positive_int, "2000")
    max_edits_per_message: int = _key("chat", "max_edits_per_message", _positive_int, "10")
    max_history_page: int = _key("chat", "max_history_page", _positive_int, "200")
    max_rooms_per_socket: int = _key("chat", "max_rooms_per_socket", _positive_int, "1000")
    chat_key_prefix: str = _key("chat", "key_prefix", _text, "wsgw:chat:")
    store_timeout: float = _key("chat", "store_timeout", _positive_float, "10")
    max_changes_in_doubt: int = _key("chat", "max_changes_in_doubt", _positive_int, "1000")
    topic_tree: str = _key("topics", "tree", _text, DEFAULT_TOPICS["tree"])
    topic_meta: str = _key("topics", "meta", _text, DEFAULT_TOPICS["meta"])
    topic_tasks: str = _key("topics", "tasks", _text, DEFAULT_TOPICS["tasks"])
    topic_idm: str = _key("topics", "idm", _text, DEFAULT_TOPICS["idm"])
    topic_activity: str = _key("topics", "activity", _text, DEFAULT_TOPICS["activity"])
    topic_chat: str = _key("topics", "chat", _text, DEFAULT_TOPICS["chat"])
    topic_control: str = _key("topics", "control", _text, DEFAULT_TOPICS["control"])
    hmac_secret: bytes | None = attrs.field(default=None, repr=False)
    public_key_pem: bytes | None = attrs.field(default=None, repr=False)
    redis_password: str | None = attrs.field(default=None, repr=False)
    publish_token: bytes | None = attrs.field(default=None, repr=False)
    node_meta_token: bytes | None = attrs.field(default=None, repr=False)
    source: str = "<defaults>"
    notices: tuple[str, ...] = ()  # what the daemon logs at start about this configuration (retired keys)

    @property
    def topics(self) -> dict[str, str]:
        """Logical topic -> bus channel."""
        return {t: getattr(self, f"topic_{t}") for t in DEFAULT_TOPICS}


# (section, key) -> (Config attribute, parser, default as written in a file), read off the declarations above
_KEYS: dict[tuple[str, str], tuple[str, Parser, str]] = {
    (ini[0], ini[1]): (f.name, ini[2], ini[3])
    for f in attrs.fields(Config)
    if (ini := f.metadata.get("ini")) is not None
}


# Keys that are no longer read: accepted (a config written for an older version still starts), and logged.
_RETIRED = {
    ("delivery", "max_queued_frames"): "max_queued_bytes bounds everything queued for a socket",
    ("delivery", "max_paced_frames"): "max_queued_bytes bounds everything queued for a socket",
}


def config_from_string(
    text: str = "",
    source: str = "<string>",
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    base: str | None = None,
) -> Config:
    """Parse INI ``text``; ``overrides`` are ``section.key`` -> value (the command-line options); ``base``: the
    directory a relative ``*_file`` path is read from (default: the current one)."""
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: {e}") from None
    raw = {key: default for key, (_, _, default) in _KEYS.items()}
    given: dict[tuple[str, str], str] = {}  # (section, key) -> where its value was given, when not in the file
    notices: list[str] = []
    for section in parser.sections():
        for key, value in parser.items(section):
            if (section, key) in _RETIRED:
                notices.append(f"{source}: [{section}] {key} is no longer used: {_RETIRED[(section, key)]}")
                continue
            if (section, key) not in _KEYS:
                known = sorted(k for s, k in _KEYS if s == section)
                hint = f" (known in [{section}]: {', '.join(known)})" if known else " (unknown section)"
                raise ConfigError(f"{source}: unknown key [{section}] {key}{hint}")
            raw[(section, key)] = value
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw[(section, key)] = value
        given[(section, key)] = "command line"  # (not the file: it may hold another value, or none)
    values: dict[str, Any] = {}
    for (section, key), (attr, parse, _) in _KEYS.items():
        try:
            values[attr] = parse(raw[(section, key)])
        except ValueError as e:
            where = given.get((section, key), source)
            raise ConfigError(f"{where}: [{section}] {key} = {raw[(section, key)]!r}: {e}") from None
    env = os.environ if environ is None else environ
    values["hmac_secret"] = _secret(source, "hmac_secret_file", _under(base, values["hmac_secret_file"]), env.get("WSGW_HMAC_SECRET"))
    values["public_key_pem"] = _secret(source, "public_key_file", _under(base, values["public_key_file"]), None)
    password = _secret(source, "redis_password_file", _under(base, values["redis_password_file"]), env.get("WSGW_REDIS_PASSWORD"))
    values["redis_password"] = password.decode("utf-8") if password else None
    values["publish_token"] = _secret(source, "publish_token_file", _under(base, values["publish_token_file"]), None)
    values["node_meta_token"] = _secret(source, "node_meta_token_file", _under(base, values["node_meta_token_file"]), None)
    config = Config(**values, source=source, notices=tuple(notices))
    _check(config)
    return config


def config_from_file(path: str | None, overrides: Mapping[str, str] | None = None, base: str | None = None) -> Config:
    """The configuration of the INI file ``path`` (None: the defaults); ``base``: the directory a relative ``path``
    and relative ``*_file`` paths are read from (default: the current one; twistd's ``--rundir`` changes it after
    the first read, and SIGHUP reads them again)."""
    if path is None:
        return config_from_string("", "<defaults>", overrides, base=base)
    path = _under(base, path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"cannot read config file {path}: not UTF-8 text (byte {e.start})") from None
    return config_from_string(text, path, overrides, base=base)


def _under(base: str | None, path: str) -> str:
    return os.path.join(base, path) if base and path else path


def _secret(source: str, key: str, path: str, from_env: str | None) -> bytes | None:
    if path:
        named = next(f"[{s}] {k}" for s, k in _KEYS if k == key)  # each *_file key is in one section only
        try:
            with open(path, "rb") as f:
                data = f.read().strip()
        except OSError as e:
            raise ConfigError(f"{source}: {named} = {path!r}: {e.strerror}") from None
        if not data:
            raise ConfigError(f"{source}: {named} = {path!r}: the file is empty")
        return data
    if from_env:
        return from_env.encode("utf-8")
    return None


MIN_HEARTBEAT = 0.1  # seconds: a shorter one would spin the daemon writing its record


def _check(config: Config) -> None:
    from wsgw.auth.tokens import validate_algorithms

    try:
        validate_algorithms(
            config.algorithms,
            has_secret=config.hmac_secret is not None,
            has_public_key=config.public_key_pem is not None,
            has_issuer=bool(config.oidc_issuer),
        )
    except ValueError as e:
        raise ConfigError(f"{config.source}: [auth] {e}") from None
    if config.resolver == "http" and not config.access_url:
        raise ConfigError(f"{config.source}: [access] resolver = http needs url")
    if config.resolver == "http" and config.access_timeout <= 0:
        raise ConfigError(f"{config.source}: [access] timeout must be more than 0 with resolver = http")
    if config.node_meta_url and config.node_meta_timeout <= 0:
        raise ConfigError(f"{config.source}: [access] node_meta_timeout must be more than 0 with node_meta_url")
    if config.heartbeat < MIN_HEARTBEAT:
        raise ConfigError(f"{config.source}: [operator] heartbeat must be at least {MIN_HEARTBEAT} seconds "
                          "(each one writes this instance's record)")
    if config.operator_page and config.publish_token is None:
        raise ConfigError(f"{config.source}: [operator] page = yes needs [admin] publish_token_file: the page "
                          "asks for that token and can show nothing without it")
    if config.workers != 1 and not config.redis:
        shown = "auto" if config.workers == 0 else config.workers
        raise ConfigError(f"{config.source}: [server] workers = {shown} needs [server] redis: the embedded bus and "
                          "chat store live inside one process, so other workers would never see its events and rooms")
    if not config.listen:
        raise ConfigError(f"{config.source}: [server] listen: at least one endpoint is needed")
    channels = list(config.topics.values())
    if len(set(channels)) != len(channels) or not all(channels):
        raise ConfigError(f"{config.source}: [topics] channel names must be distinct and not empty")


def worker_count(config: Config) -> int:
    """The processes ``[server] workers`` asks for: the number given, or for ``auto`` the CPUs this process may
    run on (``os.sched_getaffinity``: a CPU set by taskset, systemd ``CPUAffinity=`` or a container counts, not
    the machine's), at least 1 and at most ``MAX_WORKERS``."""
    if config.workers:
        return config.workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return min(max(1, cpus), MAX_WORKERS)


class _NoReactor:
    """The reactor handed to the endpoint parsers by ``check_endpoints``: parsing only keeps it, never calls it."""


def check_endpoints(config: Config) -> None:
    """ConfigError naming the file and key unless every ``[server] listen`` and ``[admin] listen`` endpoint
    parses with Twisted's ``serverFromString`` and ``[server] redis`` with ``clientFromString``, as the daemon
    parses them when it starts (``wsgw.service``, ``wsgw.redis.connection``); nothing is bound or connected.

    A TLS endpoint's key and certificate files are read here, as the daemon reads them.
    """
    from twisted.internet.endpoints import clientFromString, serverFromString

    checks: list[tuple[str, str, str, Callable[[Any, str], object]]] = [
        *(("server", "listen", d, serverFromString) for d in config.listen),
        *(("admin", "listen", d, serverFromString) for d in config.admin_listen),
    ]
    if config.redis:
        checks.append(("server", "redis", config.redis, clientFromString))
    for section, key, description, parse in checks:
        try:
            parse(_NoReactor(), description)
        except Exception as e:  # the parsers raise ValueError, KeyError, TypeError, OpenSSL errors...
            reason = str(e) or type(e).__name__
            raise ConfigError(f"{config.source}: [{section}] {key} = {description!r}: not a valid endpoint: "
                              f"{reason}") from None
