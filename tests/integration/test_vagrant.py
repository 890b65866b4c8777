"""The Vagrant bridge driver end to end: real Vagrant (Debian's 2.3.4) with its docker provider
on the real engine, through the real devenv CLI.

No registry here: Vagrant's docker provider boots the project's busybox box (an image built
locally), and, for the SSH path, an image with the host's dropbear added to it. Every Vagrant
call devenv makes goes through a logging wrapper on PATH, so the tests also pin down how
often devenv asks Vagrant (Vagrant takes about a second per call).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from devenv.errors import BackendUnavailable
from tests.integration.conftest import DEVENV, REPO, assert_no_traceback, free_port, require_engine

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BOX_IMAGE = "devenv-box/busybox:1"
DROPBEAR_IMAGE = "devenv-test/vagrant-dropbear:1"

MACHINE = """\
  config.vm.define "{name}" do |m|
    m.vm.provider "docker" do |d|
      d.image = "{image}"
      d.has_ssh = false
      d.cmd = ["/bin/sh", "-c", "trap exit TERM; while :; do sleep 1; done"]
    end
  end
"""


def vagrantfile(*names: str, image: str = BOX_IMAGE, extra: str = "") -> str:
    body = "".join(MACHINE.format(name=n, image=image) for n in names)
    return f'Vagrant.configure("2") do |config|\n{extra}{body}end\n'


@pytest.fixture(scope="session")
def vagrant_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("vagrant-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAGRANT_HOME", str(home))
        mp.setenv("VAGRANT_CHECKPOINT_DISABLE", "1")
        yield home


@pytest.fixture(scope="session")
def vagrant_driver(vagrant_home):
    from devenv.drivers.vagrant.driver import VagrantDriver

    d = VagrantDriver()
    require_engine(d.check_available)
    return d


@pytest.fixture(scope="session")
def busybox_box(docker_client):
    r = subprocess.run([*DEVENV, "box", "build", "busybox"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return BOX_IMAGE


@pytest.fixture(scope="session")
def real_vagrant(vagrant_driver) -> str:
    path = shutil.which("vagrant")
    assert path
    return path


@pytest.fixture
def vproj(proj, vagrant_driver, busybox_box, real_vagrant, tmp_path, docker_client):
    """A project whose Vagrant calls are logged: proj.vagrant_calls() returns (and clears) them."""
    bin_dir = tmp_path / "vagrant-bin"
    bin_dir.mkdir()
    log = tmp_path / "vagrant-calls.log"
    wrapper = bin_dir / "vagrant"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real_vagrant} "$@"\n')
    wrapper.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    plain_run = proj.run

    def run(*args, env_extra: dict | None = None, **kw):
        return plain_run(*args, env={**env, **(env_extra or {})}, **kw)

    def calls() -> list[str]:
        if not log.exists():
            return []
        out = log.read_text().splitlines()
        log.unlink()
        return out

    proj.run = run
    proj.vagrant_calls = calls
    yield proj
    # Whatever a failed test left: Vagrant's machines under the project, and their containers.
    for idfile in proj.root.glob("**/.vagrant/machines/*/*/id"):
        folder, name = idfile.parents[4], idfile.parents[1].name  # FOLDER/.vagrant/machines/NAME/PROVIDER/id
        subprocess.run([real_vagrant, "destroy", "-f", name], cwd=folder, capture_output=True, timeout=120)
        cid = idfile.read_text().strip() if idfile.exists() else ""
        if cid:
            try:
                docker_client.containers.get(cid).remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def vagrant_state(folder: Path, name: str) -> str:
    """What Vagrant itself says (no devenv in between)."""
    r = subprocess.run(
        ["vagrant", "status", "--machine-readable", name], cwd=folder, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return next(line.split(",")[3] for line in r.stdout.splitlines() if line.split(",")[2:3] == ["state"])


LIFECYCLE = """\
    [project]
    name = "vtest"

    [machines.web]
    driver = "vagrant"
    env = { GREETING = "hello from env" }
    provision = [
      { type = "shell", inline = "echo a >> /steps.log" },
      { type = "shell", script = "setup.sh", args = ["one arg"] },
      { type = "file", source = "conf", destination = "/etc/app" },
    ]

    [machines.web.vagrant]
    dir = "vm"
    machine = "web"
"""


def test_lifecycle_through_vagrant(vproj, docker_client):
    timings: dict[str, float] = {}

    def timed(label: str, *args: str, check: bool = True):
        t0 = time.monotonic()
        r = vproj.run(*args, check=check)
        timings[label] = time.monotonic() - t0
        return r

    vproj.write("vm/Vagrantfile", vagrantfile("web"))
    vproj.devfile(LIFECYCLE)
    vproj.write("setup.sh", '#!/bin/sh\necho "b $1" >> /steps.log\necho provisioning-output-line\n', 0o755)
    vproj.write("conf/app.env", "MODE=dev\n")
    vm = vproj.root / "vm"

    r = timed("up (create)", "up")
    assert "==> web: creating from vm/Vagrantfile#web" in r.stderr
    assert "    web: Creating the container..." in r.stderr  # Vagrant's own progress, streamed
    assert "    web: provisioning-output-line" in r.stderr
    assert vproj.vagrant_calls() == ["status --machine-readable", "up web --no-provision"]
    assert vagrant_state(vm, "web") == "running"
    cid = (vm / ".vagrant/machines/web/docker/id").read_text().strip()
    assert docker_client.containers.get(cid).status == "running"

    st = json.loads(timed("status", "status", "--json").stdout)[0]
    assert (st["state"], st["driver"], st["box"], st["provision"]) == (
        "running",
        "vagrant",
        "vm/Vagrantfile#web",
        "up to date",
    )
    assert st["handle"] == f"{vm}#web"

    # devenv's own commands run in Vagrant's container (docker exec: Vagrant is not asked).
    r = timed("ssh -c", "ssh", "web", "-c", 'echo "$GREETING"; cat /steps.log /etc/app/app.env; exit 3', check=False)
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines() == ["hello from env", "a", "b one arg", "MODE=dev"]
    assert vproj.run("exec", "web", "--", "ls", "/vagrant/Vagrantfile").stdout == "/vagrant/Vagrantfile\n"
    assert vproj.vagrant_calls() == []
    cache = json.loads((vproj.root / ".devenv/machines/web/vagrant.json").read_text())
    assert cache["container_id"] == cid and cache["provider"] == "docker"

    # Fingerprints and drift: a changed script is reported stale and rerun with what follows it.
    vproj.write("setup.sh", '#!/bin/sh\necho "b2 $1" >> /steps.log\n', 0o755)
    st = vproj.status()["web"]
    assert st["stale_step"] == 1 and st["provision"].startswith("stale: step [1] shell setup.sh changed")
    r = vproj.run("provision", check=True)
    assert "provision [0]" not in r.stderr and "provision [1]" in r.stderr and "provision [2]" in r.stderr
    assert vproj.run("exec", "web", "--", "cat", "/steps.log").stdout == "a\nb one arg\nb2 one arg\n"
    assert vproj.vagrant_calls() == []

    timed("halt", "halt")
    assert vproj.vagrant_calls() == ["halt web"]
    assert vproj.status()["web"]["state"] == "stopped"
    assert vagrant_state(vm, "web") == "stopped"

    r = timed("up (start)", "up")
    assert "==> web: starting" in r.stderr and "provision [" not in r.stderr
    assert vproj.vagrant_calls() == ["up web --no-provision"]
    assert vproj.status()["web"]["state"] == "running"
    assert vproj.run("exec", "web", "--", "cat", "/steps.log").stdout == "a\nb one arg\nb2 one arg\n"

    r = vproj.run("halt", "--force", check=True)
    assert vproj.vagrant_calls() == ["halt web --force"]
    vproj.run("up", check=True)
    vproj.vagrant_calls()

    r = vproj.run("suspend", check=False)  # Vagrant's docker provider cannot suspend: its word, one line
    assert r.returncode == 10 and "Vagrant cannot suspend machine 'web'" in r.stderr, r.stderr
    assert_no_traceback(r)
    vproj.vagrant_calls()

    timed("destroy", "destroy", "-f")
    assert vproj.vagrant_calls() == ["destroy web --force"]
    assert vproj.status()["web"]["state"] == "not created"
    assert vproj.vagrant_calls() == []  # no id file: not created, without asking Vagrant
    assert vagrant_state(vm, "web") == "not_created"
    assert not (vproj.root / ".devenv/machines/web.json").exists()
    assert not (vproj.root / ".devenv/machines/web").exists()
    with pytest.raises(Exception, match="No such container|404"):
        docker_client.containers.get(cid)
    print("\nVagrant bridge timings (whole devenv CLI runs): " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))


def test_import_vagrant_gives_a_devfile_that_works(vproj):
    vproj.write("vms/Vagrantfile", vagrantfile("web", "db_1"))
    r = vproj.run("import-vagrant", "--bridge", "vms", check=True)
    assert r.stdout.count('driver = "vagrant"') == 2
    assert '[machines.db-1.vagrant]\ndir = "vms"\nmachine = "db_1"\nprovider = "docker"\n' in r.stdout
    assert vproj.vagrant_calls() == ["status --machine-readable"]

    r = vproj.run("import-vagrant", "--bridge", "vms", "-o", "Devfile", check=True)
    assert "wrote Devfile (2 machine(s): web, db_1)" in r.stderr
    assert vproj.vagrant_calls() == ["status --machine-readable"]
    r = vproj.run("validate", check=True)
    assert "2 machine(s): web, db-1" in r.stdout
    assert vproj.vagrant_calls() == []  # validating never asks Vagrant
    r = vproj.run("import-vagrant", "--bridge", "vms", "-o", "Devfile")
    assert r.returncode == 2 and "Devfile already exists" in r.stderr

    vproj.run("up", "db-1", check=True)
    assert vproj.run("ssh", "db-1", "-c", "echo alive").stdout == "alive\n"
    st = vproj.status()
    assert st["db-1"]["state"] == "running" and st["web"]["state"] == "not created"
    vproj.run("destroy", "-f", check=True)
    assert vagrant_state(vproj.root / "vms", "db_1") == "not_created"


def test_broken_vagrantfile_is_one_clear_error(vproj, docker_client):
    vproj.devfile('[machines.web]\ndriver = "vagrant"\n[machines.web.vagrant]\ndir = "vm"\nmachine = "web"\n')

    vproj.write("vm/Vagrantfile", 'Vagrant.configure("2") do |config|\n  config.vm.box = "x"\n  end end\n')
    r = vproj.run("up")
    assert r.returncode == 2, r.stderr
    assert_no_traceback(r)
    lines = r.stderr.strip().splitlines()
    # First use in this project: the notice that the Vagrantfile is Ruby run on this host comes first.
    assert lines[0] == "warning: this Devfile reaches this host, not only its machines:"
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("error:")) :]
    assert lines[0] == f"error: the Vagrantfile in {vproj.root / 'vm'} does not load:"
    assert lines[1] == f"  {vproj.root / 'vm'}/Vagrantfile:3: syntax error, unexpected `end', expecting end-of-input"
    assert lines[-1].startswith("hint: fix it; `vagrant validate`") and len(lines) <= 6

    # A Vagrantfile that loads but that Vagrant rejects when it brings the machine up.
    vproj.write(
        "vm/Vagrantfile", vagrantfile("web", extra='  config.vm.provider "docker" do |d|\n    d.nonsense = 1\n  end\n')
    )
    r = vproj.run("up")
    assert r.returncode == 2, r.stderr
    assert_no_traceback(r)
    assert "does not load:\n  docker provider:\n  * The following settings shouldn't exist: nonsense\n" in r.stderr

    # Nothing is left half-created: no state, no Vagrant machine, no container.
    assert not (vproj.root / ".devenv/machines/web.json").exists()
    assert not list((vproj.root / "vm").glob(".vagrant/machines/web/*/id"))
    vm = str(vproj.root / "vm")
    made = [
        c.name for c in docker_client.containers.list(all=True) if any(m["Source"] == vm for m in c.attrs["Mounts"])
    ]
    assert made == []  # Vagrant's docker provider mounts the folder at /vagrant: none of its containers remain


def test_unknown_vagrant_machine(vproj):
    vproj.write("vm/Vagrantfile", vagrantfile("web", "db"))
    vproj.devfile('[machines.m]\ndriver = "vagrant"\n[machines.m.vagrant]\ndir = "vm"\nmachine = "wbe"\n')
    r = vproj.run("up")
    assert r.returncode == 2, r.stderr
    assert_no_traceback(r)
    assert f"error: the Vagrantfile in {vproj.root / 'vm'} has no machine named 'wbe' (did you mean 'web'?)" in r.stderr
    assert 'hint: it defines: web, db; set machine = "..." in [machines.NAME.vagrant]' in r.stderr
    # Without `machine`, a multi-machine Vagrantfile needs one.
    vproj.devfile('[machines.m]\ndriver = "vagrant"\n[machines.m.vagrant]\ndir = "vm"\n')
    r = vproj.run("up")
    assert r.returncode == 2 and "defines 2 machines (web, db): say which" in r.stderr, r.stderr
    assert not (vproj.root / ".devenv/machines/m.json").exists()


def test_vagrant_missing_is_one_clear_error(vproj):
    vproj.write("vm/Vagrantfile", vagrantfile("web"))
    vproj.devfile('[machines.web]\ndriver = "vagrant"\n[machines.web.vagrant]\ndir = "vm"\n')
    empty = vproj.root / "empty-bin"
    empty.mkdir()
    for args in (("up",), ("status",), ("import-vagrant", "--bridge", "vm")):
        r = vproj.run(*args, env_extra={"PATH": str(empty)})
        assert r.returncode == 3, r.stderr
        assert_no_traceback(r)
        lines = r.stderr.splitlines()
        if lines and lines[0].startswith("warning: this Devfile reaches this host"):  # first use: the notice
            lines = lines[next(i for i, line in enumerate(lines) if line.startswith("error:")) :]
        assert lines == [
            "error: Vagrant is not installed (no `vagrant` command on PATH)",
            "hint: install it: `apt-get install --no-install-recommends vagrant` (Debian/Ubuntu), "
            "or see https://developer.hashicorp.com/vagrant/install",
        ]


def test_docker_only_devfile_never_runs_vagrant(proj, tmp_path):
    """Only vagrant machines reach Vagrant: a stand-in that fails loudly must never run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "vagrant-was-run"
    (bin_dir / "vagrant").write_text(f'#!/bin/sh\necho "$*" >> {marker}\necho "vagrant must not run" >&2\nexit 99\n')
    (bin_dir / "vagrant").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proj.devfile('[machines.m]\nbox = "busybox"\nprovision = [{ type = "shell", inline = "true" }]\n')
    for args in (("up",), ("status", "--json"), ("ssh", "m", "-c", "true"), ("halt",), ("destroy", "-f")):
        r = proj.run(*args, env=env)
        assert r.returncode == 0, r.stderr
    assert not marker.exists(), marker.read_text()


# -- the SSH path: host key pinned on first contact, a changed key refused ------------------------


def _dropbear_check() -> None:
    if not shutil.which("dropbear") and not os.path.exists("/usr/sbin/dropbear"):
        raise BackendUnavailable("dropbear is not installed", hint="apt-get install dropbear-bin")


@pytest.fixture(scope="session")
def dropbear_image(docker_client, tmp_path_factory):
    """The busybox box plus the host's dropbear (and its libraries) and a login key for root."""
    require_engine(_dropbear_check)
    from devenv.boxes import rootfs

    keydir = tmp_path_factory.mktemp("vagrant-ssh-key")
    key = keydir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    dropbear = shutil.which("dropbear") or "/usr/sbin/dropbear"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        rootfs.build_busybox_rootfs(root)

        def copy(src: str, dest: str) -> None:
            target = root / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.realpath(src), target)
            target.chmod(0o755)

        ldd = subprocess.run(["ldd", dropbear], capture_output=True, text=True, check=True).stdout
        for lib in re.findall(r"(/\S+) \(0x", ldd):
            copy(lib, lib)
        copy(dropbear, "/usr/sbin/dropbear")
        (root / "etc/dropbear").mkdir()
        ssh = root / "root/.ssh"
        ssh.mkdir(mode=0o700)
        (ssh / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
        (ssh / "authorized_keys").chmod(0o600)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(root, arcname=".")
    repo, tag = DROPBEAR_IMAGE.split(":")
    docker_client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
    yield key
    docker_client.images.remove(DROPBEAR_IMAGE, force=True)


def test_ssh_transport_pins_the_host_key(vproj, dropbear_image, docker_client):
    port = free_port()
    vproj.write(
        "vm/Vagrantfile",
        textwrap.dedent(f"""\
            Vagrant.configure("2") do |config|
              config.ssh.username = "root"
              config.ssh.private_key_path = "{dropbear_image}"
              config.ssh.insert_key = false
              config.ssh.shell = "sh"
              config.ssh.sudo_command = "%c"
              config.vm.guest = :linux
              config.vm.synced_folder ".", "/vagrant", disabled: true
              config.vm.define "s" do |m|
                m.vm.network "forwarded_port", guest: 22, host: {port}, host_ip: "127.0.0.1", id: "ssh"
                m.vm.provider "docker" do |d|
                  d.image = "{DROPBEAR_IMAGE}"
                  d.has_ssh = true
                  d.cmd = ["/usr/sbin/dropbear", "-F", "-E", "-R", "-s", "-p", "22"]
                end
              end
            end
        """),
    )
    vproj.devfile("""\
        [machines.s]
        driver = "vagrant"
        env = { GREETING = "over ssh" }
        provision = [{ type = "shell", inline = "echo step-ran > /steps" }]
        [machines.s.vagrant]
        dir = "vm"
        transport = "ssh"
    """)
    r = vproj.run("up", check=True)
    assert re.search(r"==> s: pinned its SSH host key SHA256:\S+ \(first contact", r.stderr), r.stderr
    assert f"==> s: port 127.0.0.1:{port} -> 22/tcp" in r.stderr
    assert vproj.vagrant_calls() == ["status --machine-readable", "up s --no-provision", "ssh-config s"]
    known = (vproj.root / ".devenv/machines/s/known_hosts").read_text().split()
    assert known[0] == "devenv-vagrant-s" and known[1].startswith("ssh-")

    r = vproj.run("ssh", "s", "-c", 'echo "$GREETING"; cat /steps; whoami', check=True)
    assert r.stdout.splitlines() == ["over ssh", "step-ran", "root"]
    cfg = vproj.run("ssh-config", "s", check=True).stdout
    assert f"Port {port}" in cfg and "StrictHostKeyChecking yes" in cfg and "HostKeyAlias devenv-vagrant-s" in cfg
    assert vproj.vagrant_calls() == []

    # halt + up keeps the machine (and its key): no new pin.
    vproj.run("halt", check=True)
    r = vproj.run("up", check=True)
    assert "pinned" not in r.stderr
    assert vproj.run("ssh", "s", "-c", "cat /steps", check=True).stdout == "step-ran\n"

    # The same machine now presents another host key: refused, whatever Vagrant would do.
    cid = (vproj.root / "vm/.vagrant/machines/s/docker/id").read_text().strip()
    container = docker_client.containers.get(cid)
    assert container.exec_run(["/bin/sh", "-c", "rm -f /etc/dropbear/*"]).exit_code == 0
    container.restart(timeout=1)
    r = vproj.run("ssh", "s", "-c", "true")
    assert r.returncode == 12, r.stderr
    assert "error: machine 's' presented a host key that does not match the one devenv pinned" in r.stderr
    assert_no_traceback(r)

    vproj.run("destroy", "-f", check=True)
    assert not (vproj.root / ".devenv/machines/s").exists()
