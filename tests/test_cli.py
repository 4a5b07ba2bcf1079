"""``wsgw``: the operator's one command (check-config, sample-config, version, token, publish, disconnect, revoke)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from wsgw import devtoken
from wsgw.cli import main

ROOT = Path(__file__).parent.parent
SAMPLE = (ROOT / "etc" / "wsgw.ini").read_text()
BIN = os.path.dirname(sys.executable)
HMAC = "the-hmac-secret-of-the-cli-tests-0123456789"
OPERATOR = "the-operator-token-of-the-cli-tests-0123"


def sample_with_secrets(tmp_path: Path) -> Path:
    """The annotated sample, pointing to a secret file and an operator token file."""
    (tmp_path / "hmac.secret").write_text(HMAC + "\n")
    (tmp_path / "operator.token").write_text(OPERATOR + "\n")
    text = SAMPLE.replace("\nhmac_secret_file =\n", f"\nhmac_secret_file = {tmp_path / 'hmac.secret'}\n")
    text = text.replace("\npublish_token_file =\n", f"\npublish_token_file = {tmp_path / 'operator.token'}\n")
    assert text.count(str(tmp_path)) == 2
    path = tmp_path / "wsgw.ini"
    path.write_text(text)
    return path


def test_check_config_prints_every_key_with_secrets_redacted(tmp_path: Path, capsys, monkeypatch) -> None:
    """``wsgw check-config FILE`` on the sample: exit 0, one ``[section] key = value`` line per key (the
    defaults included), the secrets named by where they come from and never shown."""
    monkeypatch.delenv("WSGW_HMAC_SECRET", raising=False)
    monkeypatch.delenv("WSGW_REDIS_PASSWORD", raising=False)
    path = sample_with_secrets(tmp_path)
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert HMAC not in out + err and OPERATOR not in out + err
    lines = out.splitlines()
    assert "[server] listen = tcp6:5050" in lines
    assert "[delivery] batch_window = 1" in lines
    assert "[log] access_log = no" in lines
    assert "[server] max_connections = auto" in lines
    assert "[websocket] allowed_origins = " in lines
    assert f"[auth] hmac_secret_file = {tmp_path / 'hmac.secret'}" in lines
    assert f"[auth] hmac secret = <from file {tmp_path / 'hmac.secret'}>" in lines
    assert f"[admin] publish token = <from file {tmp_path / 'operator.token'}>" in lines
    assert "[server] redis password = <none>" in lines
    keyed = [line for line in lines if line.startswith("[") and " = " in line]
    import configparser
    sample = configparser.ConfigParser(interpolation=None)
    sample.read_string(SAMPLE)
    every = {f"[{s}] {k}" for s in sample.sections() for k in sample[s]}
    assert every <= {line.split(" = ")[0] for line in keyed}


def test_check_config_names_a_secret_from_the_environment_without_showing_it(tmp_path: Path, capsys,
                                                                              monkeypatch) -> None:
    """A secret taken from the environment, as the daemon does, is shown as ``<redacted>`` with its variable."""
    monkeypatch.setenv("WSGW_HMAC_SECRET", HMAC)
    path = tmp_path / "wsgw.ini"
    path.write_text("[server]\nlisten = tcp:5050:interface=127.0.0.1\n")
    assert main(["check-config", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert HMAC not in out
    assert "[auth] hmac secret = <redacted> (from $WSGW_HMAC_SECRET)" in out.splitlines()


@pytest.mark.parametrize("text, error", [
    ("[delivery]\nbatch_windw = 1\n", "{path}: unknown key [delivery] batch_windw (known in [delivery]: "),
    ("[server]\nlisten = tcp6:notaport\n", "{path}: [server] listen = 'tcp6:notaport': not a valid endpoint: "),
    ("[server]\nlisten = ssl:5443:privateKey=/nonexistent/key.pem\n", "{path}: [server] listen = "
     "'ssl:5443:privateKey=/nonexistent/key.pem': not a valid endpoint: [Errno 2] No such file or directory"),
    ("[admin]\nlisten = tpc:5051\n", "{path}: [admin] listen = 'tpc:5051': not a valid endpoint: "),
    ("[server]\nredis = tcp:localhost:sixthree\n", "{path}: [server] redis = 'tcp:localhost:sixthree': not a "
                                                   "valid endpoint: "),
    ("[auth]\nhmac_secret_file = /nonexistent/hmac.secret\n",
     "{path}: [auth] hmac_secret_file = '/nonexistent/hmac.secret': No such file or directory"),
    ("[admin]\npublish_token_file = {empty}\n", "{path}: [admin] publish_token_file = '{empty}': the file is empty"),
])
def test_check_config_refuses_with_one_line_naming_key_and_file(tmp_path: Path, capsys, monkeypatch, text: str,
                                                                error: str) -> None:
    """A mistyped key, a mistyped endpoint (public, operator, Redis), a missing or empty secret file: exit 2, one line
    on standard error naming the file and the key, no traceback, nothing on standard output."""
    monkeypatch.setenv("WSGW_HMAC_SECRET", HMAC)
    path = tmp_path / "wsgw.ini"
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    path.write_text(text.format(empty=empty))
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("wsgw check-config: " + error.format(path=path, empty=empty)), err
    assert "Traceback" not in err


def test_check_config_missing_file(capsys) -> None:
    """A config file that does not exist is named, exit 2."""
    assert main(["check-config", "/nonexistent/wsgw.ini"]) == 2
    assert capsys.readouterr().err == ("wsgw check-config: cannot read config file /nonexistent/wsgw.ini: "
                                       "No such file or directory\n")


def test_check_config_takes_the_daemons_overrides(tmp_path: Path, capsys, monkeypatch) -> None:
    """--listen, --redis, --admin-listen and --embedded override the file as twistd wsgw's options do."""
    monkeypatch.setenv("WSGW_HMAC_SECRET", HMAC)
    path = tmp_path / "wsgw.ini"
    path.write_text("[server]\nredis = tcp:127.0.0.1:6379\n")
    assert main(["check-config", str(path), "-l", "tcp:1", "--listen", "tcp:2", "--admin-listen", "",
                 "--embedded"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "[server] listen = tcp:1, tcp:2" in lines
    assert "[admin] listen = " in lines and "[server] redis = " in lines
    assert main(["check-config", str(path), "--listen", "tcp:x"]) == 2
    assert "[server] listen = 'tcp:x': not a valid endpoint" in capsys.readouterr().err


def test_the_daemon_refuses_a_mistyped_endpoint_the_same_way(tmp_path: Path, monkeypatch) -> None:
    """twistd wsgw's options refuse the endpoint with the line check-config prints (a usage error, not a traceback
    at start)."""
    from twisted.python import usage

    from wsgw.tap import Options

    monkeypatch.setenv("WSGW_HMAC_SECRET", HMAC)
    path = tmp_path / "wsgw.ini"
    path.write_text("[server]\nlisten = tcp6:notaport\n")
    with pytest.raises(usage.UsageError, match=r"\[server\] listen = 'tcp6:notaport': not a valid endpoint"):
        Options().parseOptions(["--config", str(path)])


def test_sample_config_prints_the_packaged_sample(capsys) -> None:
    """``wsgw sample-config`` prints etc/wsgw.ini byte for byte, from the installed package (no checkout)."""
    assert main(["sample-config"]) == 0
    assert capsys.readouterr().out == SAMPLE


def test_packaged_sample_is_etc_wsgw_ini() -> None:
    """wsgw/wsgw.ini (the package data) is a copy of etc/wsgw.ini: edit etc/wsgw.ini, then
    `cp etc/wsgw.ini wsgw/wsgw.ini`."""
    assert (ROOT / "wsgw" / "wsgw.ini").read_text() == SAMPLE, "cp etc/wsgw.ini wsgw/wsgw.ini"


def test_version_is_the_package_metadata(capsys) -> None:
    """``wsgw version`` prints the installed distribution's version."""
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"wsgw {importlib.metadata.version('wsgw')}\n"


def test_token_with_issuer_audience_and_lifetime(tmp_path: Path, capsys) -> None:
    """``wsgw token`` mints the development token (wsgw-token) with iss, aud, iat and exp = iat + lifetime."""
    secret = tmp_path / "hmac.secret"
    secret.write_text(HMAC + "\n")
    assert main(["token", "alice", "--secret-file", str(secret), "--issuer", "https://cells.example",
                 "--audience", "wsgw", "--lifetime", "600", "--workspace", "w1:files:pydiods1/files"]) == 0
    out, _ = capsys.readouterr()
    claims = jwt.decode(out.strip(), HMAC, algorithms=["HS256"], audience="wsgw", issuer="https://cells.example")
    assert claims["name"] == "alice" and claims["exp"] - claims["iat"] == 600
    assert claims["workspaces"][0]["uuid"] == "w1"


def test_token_dates_iat_and_exp_by_the_clock_it_is_given(tmp_path: Path, capsys) -> None:
    """``iat`` is the given clock's Unix time in whole seconds (RFC 7519 NumericDate), ``exp`` that plus the
    lifetime: the clock is a parameter of the entry point (``time.time`` by default), not read deep inside."""
    secret = tmp_path / "hmac.secret"
    secret.write_text(HMAC + "\n")
    assert devtoken.main(["alice", "--secret-file", str(secret), "--lifetime", "600"],
                         now=lambda: 1_700_000_000.75) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), HMAC, algorithms=["HS256"], options={"verify_exp": False})
    assert (claims["iat"], claims["exp"]) == (1_700_000_000, 1_700_000_600)


def test_token_refuses_a_lifetime_the_daemon_would_refuse(tmp_path: Path, capsys) -> None:
    """``--lifetime -5`` minted an expired token without a word; over the default max_token_lifetime it warns;
    a malformed --workspace is a usage error, not a traceback."""
    secret = tmp_path / "secret"
    secret.write_text(HMAC)
    for bad in (["--lifetime", "-5"], ["--lifetime", "0"], ["--workspace", "only-a-uuid"]):
        with pytest.raises(SystemExit) as exited:
            main(["token", "alice", "--secret-file", str(secret), *bad])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "usage: wsgw token" in err and ("must be more than 0 seconds" in err or "UUID:SLUG:ROOTPATH" in err)
    assert main(["token", "alice", "--secret-file", str(secret), "--lifetime", "172800"]) == 0
    assert "warning: a lifetime over 86400 s is refused" in capsys.readouterr().err


def test_token_without_issuer_or_audience_has_neither(tmp_path: Path, capsys) -> None:
    """Without --issuer and --audience the token carries no iss or aud (as wsgw-token always did)."""
    secret = tmp_path / "hmac.secret"
    secret.write_text(HMAC + "\n")
    assert main(["token", "bob", "--secret-file", str(secret)]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), HMAC, algorithms=["HS256"])
    assert "iss" not in claims and "aud" not in claims and claims["exp"] - claims["iat"] == 3600


def test_publish_disconnect_and_revoke_are_the_existing_commands(tmp_path: Path, capsys) -> None:
    """``wsgw publish``, ``wsgw disconnect`` and ``wsgw revoke`` run wsgw-publish, wsgw-disconnect and
    wsgw-revoke: their checks, their exit codes; their messages and usage name the command as it was typed."""
    event = tmp_path / "event.json"
    event.write_text("[1]")
    assert main(["publish", "tree", str(event)]) == 2
    assert "wsgw publish: " in capsys.readouterr().err
    assert main(["revoke", "--config", "/nonexistent/wsgw.ini", "--login", "alice"]) == 2
    assert "wsgw revoke: cannot read config file /nonexistent/wsgw.ini" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["disconnect"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage: wsgw disconnect" in err and "name someone: --login or --sub" in err
    assert "wsgw-" not in err
    with pytest.raises(SystemExit):
        main(["publish"])
    assert "usage: wsgw publish" in capsys.readouterr().err


def test_the_aliases_still_name_themselves(capsys) -> None:
    """The old console scripts keep their own names in messages (``wsgw-revoke: ...``)."""
    from wsgw import publish, revoke

    assert revoke.revoke_main(["--config", "/nonexistent/wsgw.ini", "--login", "alice"]) == 2
    assert "wsgw-revoke: cannot read config file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        publish.main([])
    assert "usage: wsgw-publish" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys) -> None:
    """``wsgw --help`` lists the subcommands; no subcommand is a usage error."""
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("check-config", "sample-config", "version", "token", "publish", "disconnect", "revoke"):
        assert command in out
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2


def test_installed_console_scripts(tmp_path: Path) -> None:
    """The ``wsgw`` console script runs check-config in a fresh process (exit 0, secret not printed, exit 2 on a
    mistyped endpoint); ``wsgw-token`` is still installed, with the new options."""
    path = sample_with_secrets(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGW_")}
    ok = subprocess.run([os.path.join(BIN, "wsgw"), "check-config", str(path)], capture_output=True, text=True,
                        timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr
    assert HMAC not in ok.stdout + ok.stderr and "[server] listen = tcp6:5050" in ok.stdout
    path.write_text(SAMPLE.replace("listen = tcp6:5050", "listen = tcp6:notaport"))
    bad = subprocess.run([os.path.join(BIN, "wsgw"), "check-config", str(path)], capture_output=True, text=True,
                         timeout=60, env={**env, "WSGW_HMAC_SECRET": HMAC})
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith(f"wsgw check-config: {path}: [server] listen = 'tcp6:notaport'"), bad.stderr
    token = subprocess.run([os.path.join(BIN, "wsgw-token"), "carol", "--audience", "wsgw"], capture_output=True,
                           text=True, timeout=60, env={**env, "WSGW_HMAC_SECRET": HMAC})
    assert token.returncode == 0, token.stderr
    assert jwt.decode(token.stdout.strip(), HMAC, algorithms=["HS256"], audience="wsgw")["name"] == "carol"
    assert json.loads(token.stderr)["aud"] == "wsgw"
