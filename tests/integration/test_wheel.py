"""The built wheel, installed outside the checkout, brings a machine up from its bundled recipe.

A git checkout has boxes/ and provisioners/ at its top; an installed devenv has only its package.
So the wheel is built from a copy of the tracked files, installed (not editable) into a fresh
venv in a temp folder, and run from a folder that is not the checkout: `init`, `box build
debian-12 --output docker` (the bundled recipe and the step it bakes), `up`, `exec`, `destroy`.
No network: the venv sees the test venv's dependencies through a path entry (not the checkout,
and not devenv itself), and the wheel is installed with --no-deps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _tracked_copy(dest: Path) -> None:
    """The files git tracks (links kept as links), as a fresh clone would have them."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, names.decode().split("\0")):
        src, dst = REPO / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def installed(tmp_path_factory, docker_driver) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    _tracked_copy(src)
    dist = work / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = dist.glob("devenv-*.whl")
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies of this test run's venv, by a plain path entry: .pth files there (the
    # checkout's editable install) are not processed from it, so the checkout stays invisible.
    Path(purelib, "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    where = subprocess.run(
        [str(py), "-c", "import devenv; print(devenv.__file__)"], capture_output=True, text=True, check=True, cwd=work
    )
    assert where.stdout.strip().startswith(str(env_dir)), where.stdout
    return env_dir / "bin" / "devenv"


def _run(devenv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(devenv), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r


def test_the_installed_wheel_brings_a_machine_up_from_its_bundled_recipe(installed, tmp_path, docker_client):
    project = tmp_path / "newproject"
    project.mkdir()
    assert REPO not in project.parents
    r = _run(installed, project, "init")
    assert r.returncode == 0, r.stderr
    r = _run(installed, project, "box", "list")
    assert "debian-12@" in r.stdout and "busybox@" in r.stdout, r.stdout  # the bundled recipes
    r = _run(installed, project, "box", "build", "debian-12", "--output", "docker")
    assert r.returncode == 0, r.stderr

    def machines() -> set[str]:
        return {c.id for c in docker_client.containers.list(all=True, filters={"label": "devenv.machine=dev"})}

    before = machines()
    try:
        r = _run(installed, project, "up")
        assert r.returncode == 0, r.stderr
        made = machines() - before
        assert len(made) == 1, made
        r = _run(installed, project, "exec", "dev", "--", "cat", "/etc/devenv-provisioned")
        assert (r.returncode, r.stdout) == (0, "provisioned\n"), r.stderr
        # The box's baked step came from the package's own provisioners/ (no checkout here).
        r = _run(installed, project, "exec", "dev", "--", "sh", "-c", "command -v python3")
        assert r.returncode == 0, r.stderr
    finally:
        r = _run(installed, project, "destroy", "-f")
    assert r.returncode == 0, r.stderr
    assert not machines() & made
