"""The daemon's configuration: an INI file plus command-line overrides, validated once and frozen.

Every key is declared once in ``_KEYS`` (section, key, parser, default); an
unknown section or key, or a value that does not parse, is refused at startup
with a message naming the key and the file. Secrets come from files or the
environment (``WSGW_HMAC_SECRET``, ``WSGW_REDIS_PASSWORD``), never from argv.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

DEFAULT_TOPICS = {
    "tree": "topic.pydio.tree.nodes.changes",
    "meta": "topic.pydio.meta.nodes.changes",
    "tasks": "topic.pydio.tasks.event",
    "idm": "topic.pydio.idm.event",
    "activity": "topic.pydio.activity.event",
    "chat": "topic.pydio.chat.event",
}


class ConfigError(ValueError):
    """A configuration problem, with the file and key it comes from."""


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
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


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError("must be yes or no")


# (section, key) -> (Config attribute, parser, default as written in a file)
_KEYS: dict[tuple[str, str], tuple[str, Callable[[str], Any], str]] = {
    ("server", "listen"): ("listen", _lines, "tcp6:5050"),
    ("server", "redis"): ("redis", _text, ""),
    ("server", "redis_password_file"): ("redis_password_file", _text, ""),
    ("server", "redis_db"): ("redis_db", _positive_int, "0"),
    ("server", "shutdown_timeout"): ("shutdown_timeout", _positive_float, "10"),
    ("auth", "algorithms"): ("algorithms", _words, "HS256"),
    ("auth", "hmac_secret_file"): ("hmac_secret_file", _text, ""),
    ("auth", "public_key_file"): ("public_key_file", _text, ""),
    ("auth", "oidc_issuer"): ("oidc_issuer", _text, ""),
    ("auth", "issuer"): ("issuer", _text, ""),
    ("auth", "audience"): ("audience", _text, ""),
    ("auth", "leeway"): ("leeway", _positive_float, "30"),
    ("access", "resolver"): ("resolver", _choice("claims", "http"), "claims"),
    ("access", "url"): ("access_url", _text, ""),
    ("access", "cache_ttl"): ("access_cache_ttl", _positive_float, "10"),
    ("delivery", "batch_window"): ("batch_window", _positive_float, "1.0"),
    ("delivery", "silent_rate"): ("silent_rate", _positive_float, "20"),
    ("delivery", "silent_burst"): ("silent_burst", _positive_float, "10"),
    ("delivery", "pacing_rate"): ("pacing_rate", _positive_float, "30"),
    ("delivery", "pacing_burst"): ("pacing_burst", _positive_float, "20"),
    ("delivery", "max_queued_frames"): ("max_queued_frames", _positive_int, "10000"),
    ("delivery", "max_queued_bytes"): ("max_queued_bytes", _positive_int, "4194304"),
    ("websocket", "max_frame_ws"): ("max_frame_ws", _size, "2048"),
    ("websocket", "max_frame_chat"): ("max_frame_chat", _size, "16384"),
    ("websocket", "ping_interval"): ("ping_interval", _positive_float, "30"),
    ("websocket", "pong_timeout"): ("pong_timeout", _positive_float, "60"),
    ("websocket", "auth_timeout"): ("auth_timeout", _positive_float, "30"),
    ("websocket", "inbound_rate"): ("inbound_rate", _positive_float, "20"),
    ("websocket", "inbound_burst"): ("inbound_burst", _positive_float, "60"),
    ("websocket", "max_connections_per_ip"): ("max_connections_per_ip", _positive_int, "0"),
    ("websocket", "allowed_origins"): ("allowed_origins", _words, ""),
    ("admin", "listen"): ("admin_listen", _lines, "tcp:5051:interface=127.0.0.1"),
    ("admin", "publish_token_file"): ("publish_token_file", _text, ""),
    ("log", "format"): ("log_format", _choice("text", "json"), "text"),
    ("web", "live_page"): ("live_page", _bool, "no"),
    ("chat", "history_cap"): ("history_cap", _positive_int, "1000"),
    ("chat", "presence_timeout"): ("presence_timeout", _positive_float, "20"),
    ("chat", "max_message_chars"): ("max_message_chars", _positive_int, "8000"),
    ("chat", "key_prefix"): ("chat_key_prefix", _text, "wsgw:chat:"),
}
_KEYS.update({("topics", t): (f"topic_{t}", _text, channel) for t, channel in DEFAULT_TOPICS.items()})


@attrs.frozen
class Config:
    """The validated configuration (see ``etc/wsgw.ini`` for every key, documented)."""

    listen: tuple[str, ...]
    redis: str
    redis_password_file: str
    redis_db: int
    shutdown_timeout: float
    algorithms: tuple[str, ...]
    hmac_secret_file: str
    public_key_file: str
    oidc_issuer: str
    issuer: str
    audience: str
    leeway: float
    resolver: str
    access_url: str
    access_cache_ttl: float
    batch_window: float
    silent_rate: float
    silent_burst: float
    pacing_rate: float
    pacing_burst: float
    max_queued_frames: int
    max_queued_bytes: int
    max_frame_ws: int
    max_frame_chat: int
    ping_interval: float
    pong_timeout: float
    auth_timeout: float
    inbound_rate: float
    inbound_burst: float
    max_connections_per_ip: int
    allowed_origins: tuple[str, ...]
    admin_listen: tuple[str, ...]
    publish_token_file: str
    log_format: str
    live_page: bool
    history_cap: int
    presence_timeout: float
    max_message_chars: int
    chat_key_prefix: str
    topic_tree: str
    topic_meta: str
    topic_tasks: str
    topic_idm: str
    topic_activity: str
    topic_chat: str
    hmac_secret: bytes | None = attrs.field(default=None, repr=False)
    public_key_pem: bytes | None = attrs.field(default=None, repr=False)
    redis_password: str | None = attrs.field(default=None, repr=False)
    publish_token: bytes | None = attrs.field(default=None, repr=False)
    source: str = "<defaults>"

    @property
    def topics(self) -> dict[str, str]:
        """Logical topic -> bus channel."""
        return {t: getattr(self, f"topic_{t}") for t in DEFAULT_TOPICS}


def config_from_string(
    text: str = "",
    source: str = "<string>",
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Parse INI ``text``; ``overrides`` are ``section.key`` -> value (the command-line options)."""
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: {e}") from None
    raw = {key: default for key, (_, _, default) in _KEYS.items()}
    for section in parser.sections():
        for key, value in parser.items(section):
            if (section, key) not in _KEYS:
                known = sorted(k for s, k in _KEYS if s == section)
                hint = f" (known in [{section}]: {', '.join(known)})" if known else " (unknown section)"
                raise ConfigError(f"{source}: unknown key [{section}] {key}{hint}")
            raw[(section, key)] = value
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw[(section, key)] = value
    values: dict[str, Any] = {}
    for (section, key), (attr, parse, _) in _KEYS.items():
        try:
            values[attr] = parse(raw[(section, key)])
        except ValueError as e:
            raise ConfigError(f"{source}: [{section}] {key} = {raw[(section, key)]!r}: {e}") from None
    env = os.environ if environ is None else environ
    values["hmac_secret"] = _secret(source, "hmac_secret_file", values["hmac_secret_file"], env.get("WSGW_HMAC_SECRET"))
    values["public_key_pem"] = _secret(source, "public_key_file", values["public_key_file"], None)
    password = _secret(source, "redis_password_file", values["redis_password_file"], env.get("WSGW_REDIS_PASSWORD"))
    values["redis_password"] = password.decode("utf-8") if password else None
    values["publish_token"] = _secret(source, "publish_token_file", values["publish_token_file"], None)
    config = Config(**values, source=source)
    _check(config)
    return config


def config_from_file(path: str | None, overrides: Mapping[str, str] | None = None) -> Config:
    if path is None:
        return config_from_string("", "<defaults>", overrides)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    return config_from_string(text, path, overrides)


def _secret(source: str, key: str, path: str, from_env: str | None) -> bytes | None:
    if path:
        try:
            with open(path, "rb") as f:
                data = f.read().strip()
        except OSError as e:
            raise ConfigError(f"{source}: {key} = {path!r}: {e.strerror}") from None
        if not data:
            raise ConfigError(f"{source}: {key} = {path!r}: the file is empty")
        return data
    if from_env:
        return from_env.encode("utf-8")
    return None


def _check(config: Config) -> None:
    from wsgw.auth import validate_algorithms

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
    if not config.listen:
        raise ConfigError(f"{config.source}: [server] listen: at least one endpoint is needed")
    channels = list(config.topics.values())
    if len(set(channels)) != len(channels) or not all(channels):
        raise ConfigError(f"{config.source}: [topics] channel names must be distinct and not empty")
