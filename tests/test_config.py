"""Config loading: defaults, overrides, and refusals that name the key and the file."""

from __future__ import annotations

import pytest

from wsgw.config import DEFAULT_TOPICS, ConfigError, config_from_file, config_from_string, worker_count

SECRET = {"WSGW_HMAC_SECRET": "s3cret"}


def test_defaults_follow_the_spec() -> None:
    """With an empty file the daemon listens on tcp6:5050 with the spec's default limits and topic channels."""
    config = config_from_string("", environ=SECRET)
    assert config.listen == ("tcp6:5050",)
    assert config.redis == ""
    assert (config.max_frame_ws, config.max_frame_chat) == (2048, 16384)
    assert (config.ping_interval, config.pong_timeout, config.auth_timeout) == (30, 60, 30)
    assert (config.batch_window, config.silent_rate, config.silent_burst) == (1.0, 20, 10)
    assert (config.pacing_rate, config.pacing_burst) == (30, 20)
    assert (config.max_connections, config.handshake_timeout, config.admin_max_connections) == (0, 10, 64)  # 0: auto
    assert config.topics == DEFAULT_TOPICS
    assert config.hmac_secret == b"s3cret"


def test_file_values_and_overrides() -> None:
    """Values come from the file; command-line overrides win over it."""
    text = "[server]\nlisten = tcp:1\n    tcp:2\nredis = tcp:127.0.0.1:6379\n[topics]\nchat = my.chat\n"
    config = config_from_string(text, environ=SECRET, overrides={"server.listen": "tcp:9"})
    assert config.listen == ("tcp:9",)
    assert config.redis == "tcp:127.0.0.1:6379"
    assert config.topics["chat"] == "my.chat"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[server]\nlisen = tcp:1\n", "unknown key [server] lisen"),
        ("[nope]\nx = 1\n", "unknown key [nope] x (unknown section)"),
        ("[delivery]\nbatch_window = soon\n", "[delivery] batch_window = 'soon'"),
        ("[delivery]\npacing_rate = -1\n", "must not be negative"),
        # NaN passed `< 0` (heartbeat = nan: check-config said fine, twistd wsgw died on a traceback); inf too
        ("[operator]\nheartbeat = nan\n", "[operator] heartbeat = 'nan': must be a finite number"),
        ("[operator]\nheartbeat = inf\n", "must be a finite number"),
        # a tiny heartbeat spun the daemon at 75 % CPU writing its record; a page nobody can use was silent
        ("[operator]\nheartbeat = 0.000001\n", "[operator] heartbeat must be at least 0.1 seconds"),
        ("[operator]\npage = yes\n", "[operator] page = yes needs [admin] publish_token_file"),
        ("[chat]\npresence_timeout = -inf\n", "must be a finite number"),
        ("[websocket]\nmax_frame_ws = 10\n", "at least 64 bytes"),
        ("[server]\nmax_connections = 0\n", "must be auto or at least 1"),
        ("[server]\nmax_connections = many\n", "[server] max_connections = 'many'"),
        ("[access]\nresolver = ldap\n", "must be one of claims, http"),
        ("[access]\nresolver = http\n", "resolver = http needs url"),
        ("[access]\nresolver = http\nurl = http://a/b\ntimeout = 0\n", "[access] timeout must be more than 0"),
        ("[topics]\ntree = same\nmeta = same\n", "must be distinct"),
        ("[server]\nworkers = 0\nredis = tcp:127.0.0.1:6379\n", "[server] workers = '0': must be auto or at least 1"),
        ("[server]\nworkers = some\n", "[server] workers = 'some'"),
        ("[server]\nworkers = 100000\nredis = tcp:127.0.0.1:6379\n", "[server] workers = '100000': must be auto or at most 1024"),
        ("[server]\nworkers = 2\n", "[server] workers = 2 needs [server] redis: the embedded bus"),
        ("[server]\nworkers = auto\n", "[server] workers = auto needs [server] redis"),
        ("not an ini", "File contains no section headers"),
    ],
)
def test_bad_values_are_refused_with_key_and_file(text: str, expected: str) -> None:
    """A bad key or value is refused with a message naming the file and the key."""
    with pytest.raises(ConfigError) as e:
        config_from_string(text, source="/etc/wsgw.ini", environ=SECRET)
    assert "/etc/wsgw.ini" in str(e.value)
    assert expected in str(e.value)


def test_secret_from_file(tmp_path) -> None:
    """The HMAC secret is read from the configured file, stripped, and never shown in repr."""
    secret = tmp_path / "secret"
    secret.write_text("abc123\n")
    config = config_from_string(f"[auth]\nhmac_secret_file = {secret}\n", environ={})
    assert config.hmac_secret == b"abc123"
    assert "abc123" not in repr(config)


def test_missing_secret_file_is_refused(tmp_path) -> None:
    """A secret file that cannot be read is refused at startup, naming the key."""
    with pytest.raises(ConfigError, match="hmac_secret_file"):
        config_from_string(f"[auth]\nhmac_secret_file = {tmp_path}/none\n", environ={})


def test_algorithm_without_key_is_refused() -> None:
    """HS256 configured with no secret is a startup error, not a daemon refusing every token."""
    with pytest.raises(ConfigError, match=r"\[auth\]"):
        config_from_string("", environ={})


def test_missing_config_file() -> None:
    """A config path that does not exist is named in the error."""
    with pytest.raises(ConfigError, match="/nonexistent.ini"):
        config_from_file("/nonexistent.ini")


def test_sample_config_is_valid() -> None:
    """etc/wsgw.ini, the documented sample, loads (with a secret from the environment)."""
    import pathlib

    text = (pathlib.Path(__file__).parent.parent / "etc" / "wsgw.ini").read_text()
    config = config_from_string(text, "etc/wsgw.ini", environ=SECRET)
    assert config.listen
    assert config == config_from_string("", "etc/wsgw.ini", environ=SECRET)  # it shows every default


def test_retired_delivery_keys_are_accepted_with_a_notice() -> None:
    """A config written for an older version (max_queued_frames, max_paced_frames) still starts; the daemon
    logs that the keys are no longer read. An unknown key is still refused."""
    config = config_from_string("[delivery]\nmax_queued_frames = 100\nmax_paced_frames = 5\n", "old.ini",
                                environ=SECRET)
    assert config.notices == (
        "old.ini: [delivery] max_queued_frames is no longer used: max_queued_bytes bounds everything queued for a socket",
        "old.ini: [delivery] max_paced_frames is no longer used: max_queued_bytes bounds everything queued for a socket",
    )
    assert config_from_string("", environ=SECRET).notices == ()
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_string("[delivery]\nmax_queued_frame = 100\n", environ=SECRET)


def test_workers_default_to_one_and_auto_counts_the_cpus_this_process_may_use(monkeypatch) -> None:
    """``[server] workers`` is 1 by default (one process, as before); ``auto`` is the CPUs of this process's
    affinity mask (a taskset or systemd CPUAffinity= counts, not the machine's CPUs); a number is itself."""
    assert worker_count(config_from_string("", environ=SECRET)) == 1
    text = "[server]\nredis = tcp:127.0.0.1:6379\nworkers = {}\n"
    assert worker_count(config_from_string(text.format(3), environ=SECRET)) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 2, 5})
    assert worker_count(config_from_string(text.format("auto"), environ=SECRET)) == 3


def test_a_relative_file_and_the_secrets_it_names_are_read_under_base(tmp_path, monkeypatch) -> None:
    """``config_from_file(path, base=DIR)`` reads a relative ``path`` and the relative ``*_file`` paths it names
    under DIR, as from the directory twistd started in once ``--rundir`` moved it elsewhere (a SIGHUP's re-read
    refused 'cannot read config file' or a secret file); absolute ones as given; an error names the file."""
    (tmp_path / "wsgw.ini").write_text("[auth]\nhmac_secret_file = secret\n[admin]\npublish_token_file = "
                                       f"{tmp_path / 'token'}\n")
    (tmp_path / "secret").write_text("a-secret-of-at-least-32-bytes-0123456789\n")
    (tmp_path / "token").write_text("operator-token\n")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = config_from_file("wsgw.ini", base=str(tmp_path))
    assert (config.hmac_secret, config.publish_token) == (b"a-secret-of-at-least-32-bytes-0123456789",
                                                          b"operator-token")
    with pytest.raises(ConfigError, match="cannot read config file wsgw.ini"):
        config_from_file("wsgw.ini")
    (tmp_path / "secret").unlink()
    with pytest.raises(ConfigError, match=r"\[auth\] hmac_secret_file = '.*/secret'"):
        config_from_file("wsgw.ini", base=str(tmp_path))


def test_auto_workers_are_at_most_the_cap_on_a_machine_with_more_cpus(monkeypatch) -> None:
    """``auto`` on a machine of 2,000 CPUs is the cap (1,024) that a number may not pass, not 2,000 processes."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2000)))
    config = config_from_string("[server]\nredis = tcp:127.0.0.1:6379\nworkers = auto\n", environ=SECRET)
    assert worker_count(config) == 1024
    config = config_from_string("[server]\nredis = tcp:127.0.0.1:6379\nworkers = 1024\n", environ=SECRET)
    assert worker_count(config) == 1024


@pytest.mark.parametrize("workers, expected", [("1025", "must be auto or at most 1024"), ("0", "at least 1"),
                                               ("four", "invalid literal")])
def test_a_bad_command_line_value_is_named_as_the_command_lines_not_the_files(workers: str, expected: str) -> None:
    """``twistd wsgw --config wsgw.ini --workers 1025``: the refusal names the command line, not wsgw.ini (which
    may say ``workers = 2``, or nothing)."""
    text = "[server]\nredis = tcp:127.0.0.1:6379\nworkers = 2\n"
    with pytest.raises(ConfigError) as refused:
        config_from_string(text, "wsgw.ini", {"server.workers": workers}, environ=SECRET)
    assert str(refused.value).startswith(f"command line: [server] workers = '{workers}': ")
    assert expected in str(refused.value)
    with pytest.raises(ConfigError, match=r"^wsgw.ini: \[server\] workers = '1025': must be auto or at most 1024"):
        config_from_string("[server]\nredis = tcp:127.0.0.1:6379\nworkers = 1025\n", "wsgw.ini", environ=SECRET)
