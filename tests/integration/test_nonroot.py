"""devenv as a new engineer runs it: an ordinary user, devenv installed with pip, Docker through the
docker group — first without it (a clear refusal with the fix), then with it (a working machine).

Our CI runs as root, whose Python lives in a folder other users cannot enter, so the test user
gets its own virtualenv (Debian's python3, devenv installed from a copy of this checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import REPO
from tests.support import missing

pytestmark = pytest.mark.docker

USER = "devenv-it"


def sbin(name: str) -> str:
    """User-management commands live in sbin, which a test's PATH may not have."""
    return shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin") or name


def as_user(*argv: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    # A login-like environment of the user's own: HOME, no root variables, a fresh group list.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": f"/home/{USER}", "LANG": "C.UTF-8", "NO_COLOR": "1"}
    return subprocess.run(
        [sbin("runuser"), "-u", USER, "--", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def user_devenv(docker_driver):
    if os.geteuid() != 0:
        missing("creating a test user needs root")
    if not os.path.exists("/usr/bin/python3"):
        missing("Debian's python3 is needed for the test user's virtualenv (apt-get install python3-venv)")
    subprocess.run([sbin("useradd"), "-m", "-s", "/bin/sh", USER], capture_output=True)  # exists already: fine
    subprocess.run([sbin("gpasswd"), "-d", USER, "docker"], capture_output=True)  # not in the group to start with
    src = Path(tempfile.mkdtemp(prefix="devenv-src-"))
    os.chmod(src, 0o755)
    for part in ("pyproject.toml", "README.md", "devenv", "boxes", "provisioners"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, src / part)
    # libvirt-python compiles against libvirt-dev (a minute): take the wheel root's install built.
    for wheel in (Path.home() / ".cache" / "pip" / "wheels").rglob("libvirt_python-*.whl"):
        shutil.copy(wheel, src / wheel.name)
    subprocess.run(["chown", "-R", f"{USER}:", str(src)], check=True)  # pip writes its build metadata there
    venv = f"/home/{USER}/venv"
    r = as_user("/usr/bin/python3", "-m", "venv", "--clear", venv)
    assert r.returncode == 0, r.stderr
    pip = [f"{venv}/bin/pip", "install", "-q", "--disable-pip-version-check", "--find-links", str(src)]
    r = as_user(*pip, f"{src}[libvirt]", timeout=900)
    assert r.returncode == 0, r.stderr
    yield f"{venv}/bin/devenv"
    subprocess.run([sbin("gpasswd"), "-d", USER, "docker"], capture_output=True)
    # The user's session libvirtd outlives the test (it exits after an idle timeout): end it, or
    # userdel refuses a user with running processes.
    subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
    for _ in range(50):
        if subprocess.run(["pgrep", "-u", USER], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)
    r = subprocess.run([sbin("userdel"), "-r", USER], capture_output=True, text=True)
    assert r.returncode == 0 or "mail spool" in r.stderr, r.stderr
    shutil.rmtree(src, ignore_errors=True)


@pytest.fixture
def user_project():
    # Not under pytest's tmp_path: that sits in a root-only folder the user cannot enter.
    top = Path(tempfile.mkdtemp(prefix="devenv-user-"))
    os.chmod(top, 0o755)
    root = top / "proj"
    root.mkdir()
    (root / "Devfile").write_text('[machines.m]\nbox = "busybox"\n')
    for p in (top, root, root / "Devfile"):
        shutil.chown(p, USER)
    yield root
    shutil.rmtree(top, ignore_errors=True)


def test_a_user_without_the_docker_group_is_told_the_fix(user_devenv, user_project):
    r = as_user(user_devenv, "status", cwd=user_project)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "permission denied on the Docker socket" in r.stderr
    assert "add your user to the 'docker' group" in r.stderr
    assert "Traceback" not in r.stderr
    r = as_user(user_devenv, "doctor", cwd=user_project)
    assert r.returncode == 1 and "docker" in r.stdout and "fix:" in r.stdout


def test_folders_the_user_cannot_read_or_write_are_said_so(user_devenv, user_project, tmp_path):
    # A project inside a folder the user cannot enter (pytest's own tmp_path is one).
    hidden = tmp_path / "proj"
    hidden.mkdir()
    (hidden / "Devfile").write_text('[machines.m]\nbox = "busybox"\n')
    for argv in (["status"], ["-f", str(hidden / "Devfile"), "status"]):
        r = as_user(user_devenv, *argv, cwd=hidden if argv == ["status"] else user_project)
        assert r.returncode == 2, r.stderr
        assert "permission denied" in r.stderr and "Traceback" not in r.stderr and "internal error" not in r.stderr
    # A project the user can read but not write: nothing is created, one message says why.
    subprocess.run([sbin("usermod"), "-aG", "docker", USER], check=True)
    try:
        os.chmod(user_project, 0o555)
        shutil.chown(user_project, "root")
        r = as_user(user_devenv, "up", cwd=user_project)
        assert r.returncode != 0 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        assert "permission denied" in r.stderr.lower(), r.stderr
        assert not (user_project / ".devenv").exists()
        from devenv.model.devfile import load

        pid = load(user_project / "Devfile").project_id
        assert (
            subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=devenv.project={pid}"], capture_output=True, text=True
            ).stdout.strip()
            == ""
        )
    finally:
        shutil.chown(user_project, USER)
        os.chmod(user_project, 0o755)
        subprocess.run([sbin("gpasswd"), "-d", USER, "docker"], capture_output=True)


def test_a_user_in_the_docker_group_gets_a_machine(user_devenv, user_project):
    subprocess.run([sbin("usermod"), "-aG", "docker", USER], check=True)
    try:
        r = as_user(user_devenv, "up", cwd=user_project)
        assert r.returncode == 0, r.stderr
        r = as_user(user_devenv, "ssh", "m", "-c", "echo inside $(hostname)", cwd=user_project)
        assert r.returncode == 0 and r.stdout == "inside m\n", r.stdout + r.stderr
        # The user's own state and box store: nothing of devenv's written as root or in root's home.
        state = user_project / ".devenv"
        assert state.is_dir() and state.stat().st_uid == Path(f"/home/{USER}").stat().st_uid
        r = as_user(user_devenv, "status", "--json", cwd=user_project)
        assert r.returncode == 0 and '"running"' in r.stdout
    finally:
        r = as_user(user_devenv, "destroy", "-f", cwd=user_project)
        subprocess.run([sbin("gpasswd"), "-d", USER, "docker"], capture_output=True)
    assert r.returncode == 0, r.stderr


def test_a_user_runs_a_vm_on_qemu_session(user_devenv, user_project, tiny_guest, libvirt_driver):
    """No root, no libvirt group: the user's own libvirtd (qemu:///session), started on demand."""
    guest = user_project.parent / "guest"
    guest.mkdir()
    for fn in ("disk.qcow2", "vmlinuz", "initrd.img", "cmdline"):
        shutil.copy(tiny_guest / fn, guest / fn)
    subprocess.run(["chown", "-R", f"{USER}:", str(guest)], check=True)
    store = (
        f"from pathlib import Path; from devenv.boxes import store as boxes; g = Path({str(guest)!r}); "
        "boxes.store_box('tiny-vm', '1', 'libvirt', {'disk': g / 'disk.qcow2', 'kernel': g / 'vmlinuz', "
        "'initrd': g / 'initrd.img'}, {'cmdline': (g / 'cmdline').read_text().strip(), 'ssh_user': 'root'})"
    )
    r = as_user(str(Path(user_devenv).with_name("python")), "-c", store)
    assert r.returncode == 0, r.stderr
    (user_project / "Devfile").write_text(
        '[machines.v]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "256MiB"\n'
        '[machines.v.libvirt]\nuri = "qemu:///session"\n'
    )
    # doctor checks the libvirt the Devfile names, not qemu:///system (which the user cannot use).
    r = as_user(user_devenv, "doctor", "--json", cwd=user_project)
    libvirt = {c["name"]: c for c in json.loads(r.stdout)["checks"]}["libvirt"]
    assert libvirt["status"] == "ok" and "qemu:///session" in libvirt["detail"], libvirt
    assert r.returncode == 0, r.stdout
    try:
        r = as_user(user_devenv, "up", cwd=user_project)
        assert r.returncode == 0, r.stderr
        r = as_user(user_devenv, "ssh", "v", "-c", "hostname", cwd=user_project)
        assert (r.returncode, r.stdout) == (0, "v\n"), r.stderr
        # QEMU runs as the user, not root: the session is the user's own.
        import pwd

        qemu = subprocess.run(["ps", "-o", "uid=", "-C", "qemu-system-x86_64"], capture_output=True, text=True)
        assert str(pwd.getpwnam(USER).pw_uid) in qemu.stdout.split(), qemu.stdout
        r = as_user(user_devenv, "status", "--json", cwd=user_project)
        assert r.returncode == 0 and '"running"' in r.stdout, r.stdout + r.stderr
    finally:
        r = as_user(user_devenv, "destroy", "-f", cwd=user_project)
    assert r.returncode == 0, r.stderr
    left = as_user("virsh", "-c", "qemu:///session", "list", "--all", "--name")
    assert left.stdout.strip() == "", left.stdout
