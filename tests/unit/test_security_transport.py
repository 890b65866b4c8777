"""Transports (issue #10 items 6, 7, 15): a private ControlPath folder, no value on any command
line, paths as OpenSSH reads them back.

Real code paths: the real SshTransport and DockerTransport drive PATH shims of `ssh` and `docker`
that log their argv and then do the real work locally (the ssh shim runs the remote command in a
real /bin/sh); the real OpenSSH client parses the generated options (`ssh -G`). The same against a
real sshd is in tests/integration/test_security_ssh.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from devenv.errors import UsageError
from devenv.transports import ssh as transport
from devenv.transports.docker import DockerTransport
from devenv.transports.env import EnvTransport
from devenv.transports.ssh import SshTransport
from tests.support import missing

NOBODY = 65534
SECRET = "s3cr3t 'q' \"dq\" $(touch /tmp/devenv-pwned) `id` \\ ünï\nsecond-line-of-it"
WEIRD_NAMES = ["pro ject", "50%done %C %d", 'q"uote', "it's", "ünïcødé dïr", "back\\slash", "h#sh"]


def _reset() -> None:
    """Forget the folder found earlier in this process (each test sets its own environment)."""
    getattr(transport, "_control_cache", {}).clear()


def _short_tmp(prefix: str) -> Path:
    # Unix socket paths must stay short: pytest's tmp_path is too long for a ControlPath folder.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture
def dirs(monkeypatch):
    run, home = _short_tmp("dvr"), _short_tmp("dvh")
    os.chmod(run, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.setenv("DEVENV_HOME", str(home))
    _reset()
    yield run, home
    _reset()
    for d in (run, home):
        shutil.rmtree(d, ignore_errors=True)


def _is_ours_and_private(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700


def _transport(folder: Path) -> SshTransport:
    return SshTransport(
        machine="vm", host="127.0.0.1", port=2201, user="root", key=folder / "id_ed25519", known_hosts=folder / "kh"
    )


def _control_dir_of(t: SshTransport) -> Path:
    opts = t.options()
    value = next(o for o in opts if o.startswith("ControlPath="))
    return Path(value.removeprefix("ControlPath=").removesuffix("/%C"))


# -- item 6: the ControlPath folder --------------------------------------------------------------


def _plant(path: Path, how: str, elsewhere: Path) -> None:
    """A folder another user prepared at a name devenv might pick."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    if how == "symlink":
        target = elsewhere / f"target-{path.name}"
        target.mkdir(mode=0o700)
        path.symlink_to(target)
    elif how == "other-uid":
        if os.geteuid() != 0:
            missing("planting a folder owned by another user needs root")
        path.mkdir(mode=0o700)
        os.chown(path, NOBODY, NOBODY)
    elif how == "mode-0777":
        path.mkdir()
        path.chmod(0o777)
    elif how == "mode-0755":
        path.mkdir()
        path.chmod(0o755)
    elif how == "a-file":
        path.write_text("not a folder")


@pytest.mark.parametrize("how", ["symlink", "other-uid", "mode-0777", "mode-0755", "a-file"])
def test_control_dir_never_takes_a_prepared_folder(dirs, how, tmp_path):
    run, home = dirs
    uid = os.getuid()
    # Every name this or an older devenv would pick: the old guessable one and the new ones.
    planted = [run / f"devenv-ssh-{uid}", run / "devenv-ssh", home / "ssh"]
    for p in planted:
        _plant(p, how, tmp_path)
    got = _control_dir_of(_transport(tmp_path))
    assert _is_ours_and_private(got)
    for p in planted:
        assert got != p and not str(os.path.realpath(got)).startswith(os.path.realpath(p) + "/")
        if how == "symlink":
            assert os.path.realpath(got) != os.path.realpath(p)


def test_the_old_guessable_folder_in_tmp_is_not_used(dirs, monkeypatch, tmp_path):
    """Without XDG_RUNTIME_DIR the old code used /tmp/devenv-ssh-UID, whoever had made it."""
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    old = Path(f"/tmp/devenv-ssh-{os.getuid()}")
    made = not old.exists() and not old.is_symlink()
    if made:
        old.mkdir()
        old.chmod(0o777)
    try:
        got = _control_dir_of(_transport(tmp_path))
        assert got != old and _is_ours_and_private(got)
    finally:
        if made:
            shutil.rmtree(old, ignore_errors=True)


@pytest.mark.parametrize("how", ["other-uid", "mode-0777"])
def test_a_runtime_dir_that_is_not_private_is_not_used(dirs, how, tmp_path, monkeypatch):
    runtime = _short_tmp("dvx")
    try:
        if how == "other-uid":
            if os.geteuid() != 0:
                missing("a runtime folder owned by another user needs root")
            os.chown(runtime, NOBODY, NOBODY)
        else:
            runtime.chmod(0o777)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        got = transport.control_dir()
        assert runtime not in got.parents and _is_ours_and_private(got)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_a_private_runtime_dir_is_preferred(dirs):
    run, _ = dirs
    got = transport.control_dir()
    assert got == Path(os.path.realpath(run)) / "devenv-ssh" and _is_ours_and_private(got)


def test_long_paths_fall_back_to_a_short_private_folder_kept_for_later(monkeypatch, tmp_path):
    long_home = tmp_path / ("h" * 60)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("DEVENV_HOME", str(long_home))
    _reset()
    got = transport.control_dir()
    try:
        assert _is_ours_and_private(got)
        # A socket path in it fits the smallest sun_path (104 bytes), with ssh's temporary suffix.
        assert len(os.fsencode(f"{got}/v{'0' * 12}/{'c' * 40}.{'x' * 16}")) < 104
        _reset()
        assert transport.control_dir() == got  # the next command shares the same connections
        # The pointer that remembers it is only a hint: pointing it at a folder of another user fails.
        if os.geteuid() == 0:
            other = _short_tmp("dvo")
            os.chown(other, NOBODY, NOBODY)
            (long_home / "ssh-control-dir").write_text(str(other))
            _reset()
            again = transport.control_dir()
            assert again != other and _is_ours_and_private(again)
            shutil.rmtree(other)
            shutil.rmtree(again, ignore_errors=True)
    finally:
        shutil.rmtree(got, ignore_errors=True)
        _reset()


# -- item 15: paths OpenSSH reads back exactly -----------------------------------------------------


def _ssh_g(*args: str) -> dict[str, list[str]]:
    if shutil.which("ssh") is None:
        missing("the OpenSSH client is not installed (apt-get install openssh-client)")
    r = subprocess.run(["ssh", "-G", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out: dict[str, list[str]] = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(" ")
        out.setdefault(k, []).append(v)
    return out


@pytest.mark.parametrize("name", WEIRD_NAMES)
def test_ssh_options_parse_back_to_the_exact_paths(dirs, tmp_path, name):
    folder = tmp_path / name / ".devenv" / "keys"
    t = _transport(folder)
    opts = t.options()
    got = _ssh_g(*opts, "127.0.0.1")
    assert got["userknownhostsfile"] == [str(t.known_hosts)]
    # ssh -G shows IdentityFile before its %-expansion (done when the key is loaded): undo only that.
    assert [p.replace("%%", "%") for p in got["identityfile"]] == [str(t.key)]
    assert got["controlpath"][0].startswith(str(_control_dir_of(t)) + "/")


@pytest.mark.parametrize("name", WEIRD_NAMES)
def test_ssh_config_block_parses_back_to_the_exact_paths(dirs, tmp_path, name):
    folder = tmp_path / name / ".devenv" / "keys"
    t = _transport(folder)
    cfg = tmp_path / "cfg"
    cfg.write_text(t.ssh_config("proj-vm"))
    got = _ssh_g("-F", str(cfg), "proj-vm")
    assert got["hostname"] == ["127.0.0.1"] and got["port"] == ["2201"] and got["user"] == ["root"]
    assert got["userknownhostsfile"] == [str(t.known_hosts)]
    assert [p.replace("%%", "%") for p in got["identityfile"]] == [str(t.key)]
    assert got["stricthostkeychecking"] == ["true"]


@pytest.mark.parametrize("bad", ["/tmp/a${HOME}b", "/tmp/new\nline", "/tmp/esc\x1b[2J"])
def test_paths_openssh_cannot_take_are_refused_clearly(bad):
    with pytest.raises(UsageError) as e:
        transport.ssh_path(bad, what="SSH key")
    assert "\x1b" not in e.value.message and "\n" not in e.value.message


# -- item 7: no value on any command line ----------------------------------------------------------


@pytest.fixture
def ssh_shim(tmp_path, monkeypatch):
    """`ssh` on PATH: logs its argv (NUL-separated, one record a line) and runs the remote command
    in a real local /bin/sh with ssh's stdin, as sshd would. Returns the log path."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "ssh-argv.log"
    (bindir / "ssh").write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        for a in "$@"; do printf '%s\\0' "$a"; done >> '{log}'
        printf '\\n' >> '{log}'
        while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done
        [ $# -gt 0 ] || exit 0
        shift
        exec /bin/sh -c "$1"
        """)
    )
    (bindir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return log


# The command the machine runs: proves the value arrived (hex, so the test compares bytes), then
# dumps every process's command line at that moment (the ssh client, the shells, this test).
PROBE = [
    "/bin/sh",
    "-c",
    'printf "%s" "$SECRET" | od -An -tx1 -v | tr -d " \\n"; echo; '
    'pwd; cat /proc/[0-9]*/cmdline 2>/dev/null | tr "\\0" " " > "$DUMP"',
]


def _hex(value: str) -> str:
    return value.encode().hex()


def _assert_nowhere(secret: str, *blobs: bytes) -> None:
    pieces = [secret, *secret.split("\n")]
    for blob in blobs:
        for piece in pieces:
            assert piece.encode() not in blob, piece


def test_ssh_run_sends_env_on_stdin_not_argv(ssh_shim, dirs, tmp_path):
    dump = tmp_path / "cmdlines"
    t = EnvTransport(_transport(tmp_path), {"SECRET": SECRET})  # how the project hands it over
    lines: list[str] = []
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    code = t.run(PROBE, env={"DUMP": str(dump)}, workdir=str(workdir), on_output=lines.append)
    assert code == 0, lines
    assert lines[0] == _hex(SECRET)
    assert lines[1] == str(workdir)
    assert not Path("/tmp/devenv-pwned").exists()
    _assert_nowhere(SECRET, ssh_shim.read_bytes(), dump.read_bytes())


def test_ssh_run_keeps_the_exit_code_and_gives_the_command_an_empty_stdin(ssh_shim, dirs, tmp_path):
    t = _transport(tmp_path)
    out: list[str] = []
    assert t.run(["/bin/sh", "-c", "cat; exit 7"], env={"A": "1"}, on_output=out.append) == 7
    assert out == []
    assert t.run(["no-such-command-xyz"], env={"A": "1"}) == 127


def _interactive_in_child(tmp_path: Path, env: dict, stdin: bytes) -> subprocess.CompletedProcess:
    """SshTransport.interactive attaches the process's own stdin/stdout: run it in a child."""
    code = textwrap.dedent(f"""\
        import json, os, sys
        from pathlib import Path
        from devenv.transports.ssh import SshTransport
        t = SshTransport(machine="vm", host="127.0.0.1", port=2201, user="root",
                         key=Path({str(tmp_path)!r}) / "k", known_hosts=Path({str(tmp_path)!r}) / "kh")
        sys.exit(t.interactive(json.loads(sys.argv[1]), env=json.loads(os.environ.pop("TEST_ENV"))))
        """)
    argv = ["/bin/sh", "-c", 'read line; echo "got:$line"; ' + PROBE[2]]
    # The values go to the child in its environment: on its command line the test would leak them.
    return subprocess.run(
        [sys.executable, "-c", code, json.dumps(argv)],
        input=stdin,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(Path(transport.__file__).parents[2]), "TEST_ENV": json.dumps(env)},
    )


def test_ssh_interactive_sends_env_in_a_private_file_and_keeps_stdin(ssh_shim, dirs, tmp_path):
    dump = tmp_path / "cmdlines"
    r = _interactive_in_child(tmp_path, {"SECRET": SECRET, "DUMP": str(dump)}, b"hello from stdin\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    assert out[0] == "got:hello from stdin"  # the command's stdin is the user's
    assert out[1] == _hex(SECRET)
    _assert_nowhere(SECRET, ssh_shim.read_bytes(), dump.read_bytes(), r.stderr)
    # The file that carried the values is gone (the session removed it at once).
    records = [rec.split(b"\0") for rec in ssh_shim.read_bytes().split(b"\n") if rec]
    ran = [rec[-2].decode() for rec in records if b"--" in rec]
    files = {w.strip("'") for cmd in ran for w in cmd.split() if w.strip("'").startswith("/tmp/")}
    assert files and not any(Path(f).exists() for f in files)


def test_docker_interactive_never_puts_a_value_on_the_docker_command_line(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "docker.json"
    # A `docker` stand-in: records its argv, the --env-file's mode and text, and -e NAME values.
    (bindir / "docker").write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, stat, sys
        argv = sys.argv[1:]
        rec = {{"argv": argv, "env_file": None, "by_name": {{}}}}
        for i, a in enumerate(argv):
            if a == "--env-file":
                st = os.stat(argv[i + 1])
                rec["env_file"] = [oct(stat.S_IMODE(st.st_mode)), open(argv[i + 1]).read()]
            if a == "-e":
                rec["by_name"][argv[i + 1]] = os.environ.get(argv[i + 1])
        json.dump(rec, open({str(log)!r}, "w"))
        """)
    )
    (bindir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    one_line = "single-line 'secret' $(x) \\ ü"
    t = EnvTransport(DockerTransport(object(), "c0ffee", "web"), {"ONE": one_line, "MULTI": SECRET})
    assert t.interactive(["sh", "-c", "true"], env={"PLAIN": "ok"}) == 0
    rec = json.loads(log.read_text())
    argv = "\0".join(rec["argv"])
    _assert_nowhere(SECRET, argv.encode())
    assert one_line not in argv and "ok" not in argv.split("\0")
    mode, text = rec["env_file"]
    assert mode == "0o600" and f"ONE={one_line}\n" in text and "PLAIN=ok\n" in text
    assert rec["by_name"] == {"MULTI": SECRET}  # a value with a line break: by name, from the CLI's env
    assert not any(Path(a).exists() for a in rec["argv"] if a.startswith("/") and "devenv-env-" in a)


def test_docker_run_passes_env_in_the_api_body(monkeypatch):
    calls = []

    class Engine:
        def exec_run(self, container, config, on_stdout, on_stderr):
            calls.append(config)
            return 0

    t = EnvTransport(DockerTransport(Engine(), "c0ffee", "web"), {"SECRET": SECRET})
    assert t.run(["env"]) == 0
    assert calls[0]["Cmd"] == ["env"] and calls[0]["Env"] == [f"SECRET={SECRET}"]


@pytest.mark.parametrize("env", [{"BAD NAME": "x"}, {"A;rm": "x"}, {"NUL": "a\0b-secret"}])
def test_env_that_cannot_travel_is_refused_without_the_value(ssh_shim, dirs, tmp_path, env):
    with pytest.raises(UsageError) as e:
        _transport(tmp_path).run(["true"], env=env)
    assert "secret" not in e.value.message
