"""Integration fixtures: real engines only.

A missing engine skips locally with devenv's own check_available() message, and FAILS in CI
(CI=true): an integration suite that silently skipped would prove nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devenv.errors import DevenvError

REPO = Path(__file__).resolve().parents[2]
DEVENV = [sys.executable, "-m", "devenv"]


def require_engine(check) -> None:
    try:
        check()
    except DevenvError as exc:
        msg = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
        if os.environ.get("CI"):
            pytest.fail(f"engine missing in CI: {msg}")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def docker_driver():
    from devenv.drivers.docker import DockerDriver

    d = DockerDriver()
    require_engine(d.check_available)
    return d


@pytest.fixture(scope="session")
def docker_client(docker_driver):
    return docker_driver.client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proj:
    """A throw-away project folder with a Devfile and a way to run the real CLI in it."""

    def __init__(self, root: Path, client) -> None:
        self.root = root
        self.client = client

    def write(self, rel: str, text: str, mode: int | None = None) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        if mode is not None:
            p.chmod(mode)
        return p

    def devfile(self, text: str) -> None:
        self.write("Devfile", text)

    def run(
        self, *args: str, check: bool = False, timeout: float = 600, env: dict | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [*DEVENV, *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"devenv {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def status(self) -> dict:
        r = self.run("status", "--json", check=True)
        return {m["name"]: m for m in json.loads(r.stdout)}

    @property
    def project_id(self) -> str:
        from devenv import devfile

        return devfile.load(self.root / "Devfile").project_id

    def labelled(self) -> dict:
        """Everything on the engine that carries this project's label."""
        f = {"label": f"devenv.project={self.project_id}"}
        return {
            "containers": [c.name for c in self.client.containers.list(all=True, filters=f)],
            "volumes": [v.name for v in self.client.volumes.list(filters=f)],
            "networks": [n.name for n in self.client.networks.list(filters=f)],
        }

    def sweep(self) -> None:
        try:
            pid = self.project_id
        except DevenvError:
            return
        for c in self.client.containers.list(all=True, filters={"label": f"devenv.project={pid}"}):
            c.remove(force=True, v=True)


@pytest.fixture
def proj(tmp_path, docker_client):
    root = tmp_path / "proj"
    root.mkdir()
    p = Proj(root, docker_client)
    yield p
    p.sweep()


def assert_no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
