"""Transports against the real things (issue #10 items 6, 7, 10, 15): a real sshd on 127.0.0.1 with
a throw-away host key, the real OpenSSH client, a real Docker container.

The "guest" of the sshd is this host, so the process list the remote command dumps is the host's
and the guest's at once: the ssh client, sshd's session, su, the shells. No value may be in any
of their command lines, and every value must arrive exactly.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from devenv.errors import BackendUnavailable
from devenv.transports.docker import DockerTransport
from devenv.transports.ssh import SshTransport
from tests.integration.conftest import LocalSshd, require_engine

SECRET = "s3cr3t 'q' \"dq\" $(touch /tmp/devenv-pwned) `id` \\ ünï\nsecond-line-of-it"
ONE_LINE = "one-line 'p4ss' $(x) \\ ü end"
WEIRD = "pro ject 50% %C \"q' ünï"
REPO = Path(__file__).resolve().parents[2]

# Prints the hex of each value (the test compares bytes), then every process's command line now.
PROBE = (
    'for v in "$SECRET" "$ONE"; do printf "%s" "$v" | od -An -tx1 -v | tr -d " \\n"; echo; done; '
    'id -un; pwd; cat /proc/[0-9]*/cmdline 2>/dev/null | tr "\\0" " "; echo'
)


def _hex(value: str) -> str:
    return value.encode().hex()


def _assert_nowhere(*blobs: bytes) -> None:
    for blob in blobs:
        for piece in (SECRET, *SECRET.split("\n"), ONE_LINE):
            assert piece.encode() not in blob, piece


@pytest.fixture
def sshd(tmp_path):
    def check():
        if not os.access("/usr/sbin/sshd", os.X_OK) or os.geteuid() != 0 or not shutil.which("ssh"):
            raise BackendUnavailable(
                "the SSH transport tests need /usr/sbin/sshd, the ssh client and root",
                hint="apt-get install openssh-server openssh-client (scripts/engines.sh --for-tests)",
            )

    require_engine(check)
    d = tmp_path / "sshd"
    d.mkdir(mode=0o700)
    # The client side lives under a project path with a space, a %, a quote and non-ASCII.
    keys = tmp_path / WEIRD / ".devenv" / "keys"
    keys.mkdir(parents=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
    server = LocalSshd(d, keys / "id_ed25519.pub")
    port = server.port
    (keys / "known_hosts").write_text(server.known_hosts_line())
    yield port, keys
    server.stop()


@pytest.fixture
def client_env(tmp_path, monkeypatch):
    """A private runtime folder whose path has a space, a % and a quote; an `ssh` shim logging argv."""
    from devenv.transports import ssh as transport

    run = Path(tempfile.mkdtemp(prefix="q %'ü", dir="/tmp"))
    run.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    getattr(transport, "_control_cache", {}).clear()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "ssh-argv.log"
    (bindir / "ssh").write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf \'%s\\0\' "$a"; done >> \'{log}\'\nexec /usr/bin/ssh "$@"\n'
    )
    (bindir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    yield run, log
    getattr(transport, "_control_cache", {}).clear()
    shutil.rmtree(run, ignore_errors=True)


def _transport(port: int, keys: Path) -> SshTransport:
    return SshTransport(
        machine="vm",
        host="127.0.0.1",
        port=port,
        user="root",
        key=keys / "id_ed25519",
        known_hosts=keys / "known_hosts",
    )


def _close_master(t: SshTransport) -> None:
    subprocess.run(["/usr/bin/ssh", *t.options(), "-O", "exit", t.host], capture_output=True)


def test_paths_with_space_percent_quote_and_unicode_connect(sshd, client_env, tmp_path):
    port, keys = sshd
    run, _ = client_env
    t = _transport(port, keys)
    try:
        out: list[str] = []
        assert t.run(["/bin/sh", "-c", "echo connected"], on_output=out.append) == 0, out
        assert out == ["connected"]
        # The connection master's socket is in the private runtime folder (its path is odd too).
        sockets = [p for p in (run / "devenv-ssh").iterdir() if p.is_socket()]
        assert sockets, list((run / "devenv-ssh").iterdir())
        # `devenv ssh-config` output works as it is with the real client: parsed and connected.
        cfg = tmp_path / "ssh_config"
        cfg.write_text(t.ssh_config("proj-vm"))
        r = subprocess.run(
            ["/usr/bin/ssh", "-F", str(cfg), "-o", "BatchMode=yes", "proj-vm", "echo via-config"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert r.returncode == 0 and r.stdout.strip() == "via-config", r.stderr
    finally:
        _close_master(t)


def _child(code: str, env: dict, **kw) -> subprocess.CompletedProcess:
    # Values reach the child in its environment: on its command line the test itself would leak them.
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO), "TEST_ENV": json.dumps(env)},
        capture_output=True,
        timeout=120,
        **kw,
    )


_INTERACTIVE = """\
import json, os, sys
from pathlib import Path
from devenv.transports.ssh import SshTransport
cfg = json.loads(os.environ.pop("TEST_ENV"))
t = SshTransport(machine="vm", host="127.0.0.1", port=cfg["port"], user="root",
                 key=Path(cfg["keys"]) / "id_ed25519", known_hosts=Path(cfg["keys"]) / "known_hosts")
sys.exit(t.interactive(["/bin/sh", "-c", cfg["cmd"]], env=cfg["env"], user=cfg["user"], workdir=cfg["workdir"]))
"""


@pytest.mark.parametrize("user", [None, "nobody"])
def test_run_env_reaches_the_command_and_no_command_line(sshd, client_env, user):
    port, keys = sshd
    _, log = client_env
    t = _transport(port, keys)
    try:
        lines: list[str] = []
        code = t.run(
            ["/bin/sh", "-c", PROBE], env={"SECRET": SECRET, "ONE": ONE_LINE}, user=user, workdir="/",
            on_output=lines.append,
        )  # fmt: skip
        assert code == 0, lines
        assert lines[0] == _hex(SECRET) and lines[1] == _hex(ONE_LINE)
        assert lines[2] == (user or "root") and lines[3] == "/"
        assert not Path("/tmp/devenv-pwned").exists()
        _assert_nowhere("\n".join(lines[4:]).encode(), log.read_bytes())
    finally:
        _close_master(t)


@pytest.mark.parametrize("user", [None, "nobody"])
def test_interactive_with_a_pipe_keeps_stdin_and_hides_env(sshd, client_env, user):
    port, keys = sshd
    _, log = client_env
    cmd = 'read line; echo "got:$line"; ' + PROBE
    cfg = {"port": port, "keys": str(keys), "cmd": cmd, "user": user, "workdir": "/",
           "env": {"SECRET": SECRET, "ONE": ONE_LINE}}  # fmt: skip
    r = _child(_INTERACTIVE, cfg, input=b"typed by the user\n")
    try:
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode().splitlines()
        assert out[0] == "got:typed by the user"
        assert out[1] == _hex(SECRET) and out[2] == _hex(ONE_LINE) and out[3] == (user or "root")
        _assert_nowhere(r.stdout, r.stderr, log.read_bytes())
        # The private file that carried the values is named on the command line, and is gone.
        paths = re.findall(rb"/tmp/(?:tmp\.|\.devenv-env\.)[A-Za-z0-9]+", log.read_bytes())
        assert paths and not any(Path(p.decode()).exists() for p in paths)
    finally:
        _close_master(_transport(port, keys))


def test_interactive_on_a_terminal_hides_env(sshd, client_env):
    port, keys = sshd
    _, log = client_env
    cfg = {"port": port, "keys": str(keys), "cmd": PROBE, "user": None, "workdir": None,
           "env": {"SECRET": SECRET, "ONE": ONE_LINE}}  # fmt: skip
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERACTIVE],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "PYTHONPATH": str(REPO), "TEST_ENV": json.dumps(cfg)},
    )
    os.close(slave)
    data = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        assert proc.wait(timeout=60) == 0, data
        assert _hex(SECRET).encode() in data and _hex(ONE_LINE).encode() in data, data
        _assert_nowhere(data, log.read_bytes())
        assert b"-t" in log.read_bytes().split(b"\0")  # it really was a terminal session
    finally:
        os.close(master)
        _close_master(_transport(port, keys))


# -- Docker: the engine API path and the docker CLI path ---------------------------------------------


@pytest.fixture
def container(proj):
    proj.devfile("""\
        [machines.s]
        box = "busybox"
    """)
    proj.run("up", check=True)
    from devenv.plugins import get_driver

    driver = get_driver("docker")
    cid = proj.client.containers.list(filters={"label": f"devenv.project={proj.project_id}"})[0].id
    return driver.engine, cid


def _host_cmdlines() -> bytes:
    out = b""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out += (p / "cmdline").read_bytes() + b"\n"
            except OSError:
                pass
    return out


@pytest.mark.docker
def test_docker_exec_api_carries_env_in_the_body(container):
    engine, cid = container
    t = DockerTransport(engine, cid, "s")
    lines: list[str] = []
    result: list[int] = []
    probe = 'sleep 2; for v in "$SECRET" "$ONE"; do printf "%s" "$v" | od -An -tx1 -v | tr -d " \\n"; echo; done'
    worker = threading.Thread(
        target=lambda: result.append(
            t.run(["/bin/sh", "-c", probe], env={"SECRET": SECRET, "ONE": ONE_LINE}, on_output=lines.append)
        )
    )
    worker.start()
    time.sleep(1)
    seen = _host_cmdlines()  # while the command runs: nothing on the host holds a value
    worker.join(timeout=60)
    assert result == [0], lines
    assert lines == [_hex(SECRET), _hex(ONE_LINE)]
    _assert_nowhere(seen)


@pytest.mark.docker
def test_docker_cli_session_carries_env_without_argv(container, tmp_path):
    engine, cid = container
    real = shutil.which("docker")
    assert real, "the docker CLI is needed for interactive sessions"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "docker-argv.log"
    (bindir / "docker").write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf \'%s\\0\' "$a"; done >> \'{log}\'\nexec {real} "$@"\n'
    )
    (bindir / "docker").chmod(0o755)
    code = f"""\
import json, os, sys
from devenv.plugins import get_driver
from devenv.transports.docker import DockerTransport
cfg = json.loads(os.environ.pop("TEST_ENV"))
t = DockerTransport(get_driver("docker").engine, {cid!r}, "s")
sys.exit(t.interactive(["/bin/sh", "-c", cfg["cmd"]], env=cfg["env"]))
"""
    cmd = 'read line; echo "got:$line"; for v in "$SECRET" "$ONE"; do printf "%s" "$v" | od -An -tx1 -v | tr -d " \\n"; echo; done'
    r = subprocess.run(
        [sys.executable, "-c", code],
        input=b"from stdin\n",
        capture_output=True,
        timeout=120,
        env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
             "TEST_ENV": json.dumps({"cmd": cmd, "env": {"SECRET": SECRET, "ONE": ONE_LINE}})},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["got:from stdin", _hex(SECRET), _hex(ONE_LINE)]
    _assert_nowhere(log.read_bytes())


@pytest.mark.docker
def test_an_engine_error_about_a_nul_secret_from_file_is_masked(proj, tmp_path):
    secret_file = tmp_path / "token"
    secret_file.write_bytes(b"nul\x00inside-the-Secret-77\n")
    proj.devfile(f"""\
        [machines.s]
        box = "busybox"
        env = {{ TOKEN = {{ from_file = "{secret_file}" }} }}
    """)
    for args in (("up",), ("--debug", "up")):
        r = proj.run(*args)
        text = r.stdout + r.stderr
        assert r.returncode != 0 or "TOKEN" not in text
        for piece in ("inside-the-Secret-77", "nul\\x00inside", "nul\\u0000inside"):
            assert piece not in text, text
        assert "internal error" not in text
