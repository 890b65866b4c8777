"""Fault injection against the real Docker engine: kills, Ctrl-C, broken state, an engine that goes away."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import DEVENV, assert_no_traceback

pytestmark = pytest.mark.docker

DEVFILE = """\
[machines.a]
box = "busybox"
provision = [{ type = "shell", inline = "sleep 0.3; echo a >> /log" }]
[machines.b]
box = "busybox"
depends_on = ["a"]
provision = [{ type = "shell", inline = "echo b >> /log" }]
"""


def _state_files_readable(root: Path) -> None:
    for f in (root / ".devenv" / "machines").glob("*.json"):
        json.loads(f.read_text())  # never truncated or half-written


def test_kill_9_at_many_points_leaves_nothing_behind(proj):
    proj.devfile(DEVFILE)
    proj.run("box", "build", "busybox", check=True)
    rng = random.Random(1234)
    for trial in range(24):
        verb = ["up"] if trial % 3 else ["destroy", "-f"]
        if verb[0] == "destroy":
            proj.run("up")  # something to destroy (may resume a half-made machine)
        p = subprocess.Popen([*DEVENV, *verb], cwd=proj.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 1.2))
        p.send_signal(signal.SIGKILL)
        p.wait()
        _state_files_readable(proj.root)
    # The next up + destroy converge whatever state the kills left.
    r = proj.run("up")
    assert r.returncode == 0, r.stderr
    assert proj.run("exec", "b", "--", "cat", "/log").returncode == 0
    proj.run("destroy", "-f", check=True)
    assert proj.labelled() == {"containers": [], "volumes": [], "networks": []}
    assert not list((proj.root / ".devenv" / "machines").glob("*.json"))


def test_ctrl_c_during_up_removes_the_new_machine(proj):
    proj.devfile('[machines.m]\nbox = "busybox"\nprovision = [{ type = "shell", inline = "echo started; sleep 20" }]\n')
    proj.run("box", "build", "busybox", check=True)
    p = subprocess.Popen([*DEVENV, "up"], cwd=proj.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    seen = ""
    while time.time() < deadline and "started" not in seen:
        seen += p.stderr.readline()
    assert "started" in seen
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "error: interrupted" in err and "removing the machine being created" in err
    assert "Traceback" not in err
    assert proj.labelled()["containers"] == []


def test_garbage_state_names_the_file_and_destroy_still_works(proj):
    proj.devfile('[machines.m]\nbox = "busybox"\n')
    proj.run("up", check=True)
    state = proj.root / ".devenv" / "machines" / "m.json"
    for garbage in ("{ not json", "", '["a list"]'):
        state.write_text(garbage)
        r = proj.run("status")
        assert r.returncode == 8, r.stderr
        assert str(state) in r.stderr and "rm " in r.stderr
        assert_no_traceback(r)
    r = proj.run("destroy", "-f")
    assert r.returncode == 0, r.stderr
    assert proj.labelled()["containers"] == []


class _Proxy:
    """A unix-socket proxy in front of the Docker engine: stopping it looks like the engine going away."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path, self.target = path, target
        self.server: socket.socket | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(self.path))
        self.server.listen(16)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self.server:
            self.server.close()
        self.path.unlink(missing_ok=True)


def test_engine_going_away_between_commands(proj, tmp_path):
    proxy = _Proxy(tmp_path / "engine.sock")
    proxy.start()
    env = {"DOCKER_HOST": f"unix://{proxy.path}"}
    try:
        proj.devfile('[machines.m]\nbox = "busybox"\nprovision = [{ type = "shell", inline = "echo once >> /log" }]\n')
        proj.run("up", env=env, check=True)
        proxy.stop()
        for verb in (["status"], ["up"], ["ssh", "m", "-c", "true"], ["destroy", "-f"]):
            r = proj.run(*verb, env=env)
            assert r.returncode == 3, (verb, r.stderr)
            assert "Docker engine is not running" in r.stderr and str(proxy.path) in r.stderr
            assert_no_traceback(r)
        proxy.start()
        st = json.loads(proj.run("status", "--json", env=env, check=True).stdout)[0]
        assert st["state"] == "running" and st["provision"] == "up to date", "nothing was lost"
        assert proj.run("exec", "m", "--", "cat", "/log", env=env).stdout == "once\n"
        proj.run("destroy", "-f", env=env, check=True)
    finally:
        proxy.stop()
    os.environ.pop("DOCKER_HOST", None)
