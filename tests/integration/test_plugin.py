"""A third-party plugin, installed with pip, drives the real CLI: the proof that the seam is real.

tests/plugins/devenv-testplugin is built and installed (offline, no dependencies) into a folder
of its own, which the CLI sees through PYTHONPATH only: its `hostdir` driver (a machine is a host
folder) and `stamp` step (writes a file) import devenv.contract alone. No engine is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Proj, assert_no_traceback
from tests.support import missing

PLUGIN = REPO / "tests" / "plugins" / "devenv-testplugin"

DEVFILE = """\
[machines.web]
driver = "hostdir"
env = { GREETING = "hello from the Devfile" }

[machines.web.hostdir]
shell = "/bin/sh"

[[machines.web.provision]]
type = "stamp"
text = "stamped by a plugin"
path = "out/STAMP"
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The test plugin, pip-installed into a folder of its own (as `pip install --target` does)."""
    r = subprocess.run([sys.executable, "-c", "import setuptools.command.bdist_wheel"], capture_output=True, text=True)
    if r.returncode != 0:  # setuptools < 70.1 needs the `wheel` package to build one
        missing("setuptools>=70.1 is not installed in devenv's venv (bash scripts/setup.sh --test)")
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    shutil.copytree(PLUGIN, src)  # a build writes build/ and *.egg-info beside the sources: never the checkout
    site = work / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps"]
        + ["--no-build-isolation", "--target", str(site), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (site / "devenv_testplugin" / "hostdir.py").is_file()
    return site


@pytest.fixture
def hostdir(tmp_path, plugin_site):
    """A project folder and the environment the CLI runs in: the plugin on PYTHONPATH, every
    folder devenv or the driver writes (DEVENV_HOME, the machines, XDG dirs) under tmp_path."""
    root = tmp_path / "proj"
    root.mkdir()
    base = tmp_path / "machines"
    env = {
        "PYTHONPATH": str(plugin_site),
        "DEVENV_HOSTDIR_BASE": str(base),
        "DEVENV_HOME": str(tmp_path / "devenv-home"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
    }
    p = Proj(root, client=None)
    yield p, env, base
    if any(base.glob("*.json")):  # a failed test: remove its machine folders as the driver would
        p.run("destroy", "-f", env=env, timeout=60)


def _run(p: Proj, env: dict, *args: str) -> subprocess.CompletedProcess:
    r = p.run(*args, env=env, timeout=60)
    assert_no_traceback(r)
    return r


def test_validate_and_schema_know_the_plugins_driver_and_step(hostdir):
    p, env, _ = hostdir
    p.devfile(DEVFILE)
    r = _run(p, env, "validate")
    assert r.returncode == 0, r.stdout + r.stderr

    r = _run(p, env, "schema")
    assert r.returncode == 0, r.stderr
    machine = json.loads(r.stdout)["properties"]["machines"]["additionalProperties"]
    assert "hostdir" in machine["properties"]["driver"]["enum"]
    assert set(machine["properties"]["hostdir"]["properties"]) == {"shell"}
    steps = machine["properties"]["provision"]["items"]["anyOf"]
    stamp = [s for s in steps if s["properties"]["type"].get("enum") == ["stamp"]]
    assert stamp and stamp[0]["required"] == ["text"]


def test_a_wrong_option_in_the_plugins_table_is_a_located_problem(hostdir):
    p, env, _ = hostdir
    p.devfile(DEVFILE.replace('shell = "/bin/sh"', 'shel = "/bin/sh"').replace('text = "stamped by a plugin"\n', ""))
    r = _run(p, env, "validate")
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "Devfile:6: machines.web.hostdir.shel: unknown key (did you mean 'shell'?)" in out
    assert "machines.web.provision[0].text: is required" in out


def test_without_the_plugin_the_driver_is_unknown(hostdir):
    p, env, _ = hostdir
    p.devfile(DEVFILE)
    r = _run(p, {**env, "PYTHONPATH": ""}, "validate")
    assert r.returncode == 2
    assert "machines.web.driver: 'hostdir' is not one of: docker, libvirt, vagrant, virtualbox" in r.stdout + r.stderr


def test_up_status_exec_destroy_through_the_plugin(hostdir):
    p, env, base = hostdir
    p.devfile(DEVFILE)
    r = _run(p, env, "up")
    assert r.returncode == 0, r.stdout + r.stderr
    (folder,) = [d for d in base.iterdir() if d.is_dir()]
    assert (folder / "out" / "STAMP").read_text() == "stamped by a plugin"  # the stamp step ran
    meta = json.loads(folder.with_suffix(".json").read_text())
    assert meta["labels"]["devenv.machine"] == "web" and meta["labels"]["devenv.root"] == str(p.root.resolve())
    assert "created" in r.stdout + r.stderr and "started" in r.stdout + r.stderr  # reported by the driver

    status = _run(p, env, "status", "--json")
    assert status.returncode == 0, status.stderr
    (web,) = json.loads(status.stdout)
    assert (web["name"], web["driver"], web["state"]) == ("web", "hostdir", "running")

    r = _run(p, env, "exec", "web", "--", "cat", "out/STAMP")
    assert (r.returncode, r.stdout.strip()) == (0, "stamped by a plugin"), r.stderr
    # The machine's env reaches the command through the process environment (env_at_create=False).
    r = _run(p, env, "exec", "web", "--", "sh", "-c", 'echo "$GREETING in $PWD"')
    assert r.stdout.strip() == f"hello from the Devfile in {folder}", r.stderr

    r = _run(p, env, "destroy", "-f")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not folder.exists() and not folder.with_suffix(".json").exists()
    status = _run(p, env, "status", "--json")
    assert json.loads(status.stdout)[0]["state"] == "not created"
    assert os.listdir(base) == []
