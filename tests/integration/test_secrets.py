"""Secrets from the host reach the machine's environment and nothing else devenv writes or prints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

SECRET = "s3cr3t-Value-9f2c"
FILE_SECRET = "file-secret-77ab"


def _all_files(*roots: Path) -> list[Path]:
    out = []
    for root in roots:
        for dirpath, _, files in os.walk(root):
            out += [Path(dirpath) / f for f in files]
    return out


def test_secrets_are_used_but_never_written_or_shown(proj, tmp_path):
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(FILE_SECRET + "\n")
    proj.devfile(f"""\
        [machines.s]
        box = "busybox"
        env = {{ API_TOKEN = {{ from_env = "DEVENV_TEST_TOKEN" }}, DB_PASS = {{ from_file = "{secret_file}" }}, PLAIN = "ok" }}
        provision = [{{ type = "shell", inline = "echo token=$API_TOKEN pass=$DB_PASS > /proof; echo $API_TOKEN" }}]
    """)
    env = {"DEVENV_TEST_TOKEN": SECRET}
    outputs = []
    r = proj.run("up", env=env, check=True)
    outputs += [r.stdout, r.stderr]
    # The machine really has the values ...
    assert proj.run("exec", "s", "--", "cat", "/proof", env=env).returncode == 0
    check = f'test "$API_TOKEN" = "{SECRET}" && test "$DB_PASS" = "{FILE_SECRET}" && echo same'
    r = proj.run("ssh", "s", "-c", check, env=env)
    assert r.stdout.strip() == "same", r.stderr
    # ... but devenv masks them in everything it prints, even the machine's own output.
    for args in (
        ("exec", "s", "--", "cat", "/proof"),
        ("status", "--json"),
        ("status",),
        ("port", "s"),
        ("ssh", "s", "-c", "echo $API_TOKEN $DB_PASS"),
        ("--debug", "provision", "--force"),
    ):
        r = proj.run(*args, env=env)
        outputs += [r.stdout, r.stderr]
    assert "token=*** pass=***" in "".join(outputs)
    for text in outputs:
        assert SECRET not in text and FILE_SECRET not in text
    # Nothing devenv wrote holds them: .devenv/, the lock, the global index.
    written = _all_files(proj.root / ".devenv", Path(os.environ["DEVENV_HOME"])) + [proj.root / "Devfile.lock"]
    assert written
    for f in written:
        data = f.read_bytes()
        assert SECRET.encode() not in data and FILE_SECRET.encode() not in data, f
    # A missing host variable is a clear error that names the variable, not its value.
    proj.run("destroy", "-f", check=True)
    os.environ.pop("DEVENV_TEST_TOKEN", None)
    r = proj.run("up")
    assert r.returncode == 2 and "DEVENV_TEST_TOKEN, which is not set" in r.stderr
