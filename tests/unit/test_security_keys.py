"""Security: a machine's key folder (.devenv/machines/NAME/) is never followed through links.

A repository controls .devenv/ (and git overwrites ignored files on checkout), so it can commit
real folders .devenv/machines/NAME/ holding links at the key file names: known_hosts pointing at
~/.bashrc (truncated and chmod 0600 by a pin), ssh_host_ed25519_key pointing at the user's own
private key (copied into the cloud-init seed the guest reads), a dangling id_ed25519 (ssh-keygen
creates a file wherever it points). Every case here plants such an entry, runs the code the
drivers run (identity.ensure_keys/pin/host_private, LibvirtDriver._define on test:///default,
`devenv up` on the VirtualBox stand-in, the SSH transport of a VM, the Vagrant pin), and checks
that it is a StateError (exit 8) naming the entry, that the victim is untouched, and that nothing
is created at a dangling target.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devenv.contract import BoxArtifact, Target
from devenv.drivers.vm import identity, seed
from devenv.errors import StateError
from devenv.state import ProjectState
from tests.support import missing, require_module
from tests.unit.test_virtualbox import make_box, vbox, web  # noqa: F401 - the stand-in's fixture

NAMES = ("id_ed25519", "id_ed25519.pub", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "known_hosts")
KINDS = (
    "symlink",
    "relative-symlink",
    "dangling-symlink",
    "symlink-to-folder",
    "symlink-loop",
    "hardlink",
    "fifo",
    "socket",
    "folder",
)


class Victim:
    """Stand-ins for the user's own files: a shell profile and an SSH key pair."""

    def __init__(self, base: Path) -> None:
        self.home = base / "victim-home"
        (self.home / ".ssh").mkdir(parents=True)
        self.bashrc = self.home / ".bashrc"
        self.bashrc.write_text("export PATH=$HOME/bin:$PATH  # the user's bashrc\n")
        self.bashrc.chmod(0o644)
        self.key = self.home / ".ssh" / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "victim@host", "-f", str(self.key)], check=True
        )
        self.nowhere = base / "nowhere" / "new-file"  # a dangling link's target (its folder exists)
        self.nowhere.parent.mkdir()
        self.files = [self.bashrc, self.key, self.key.with_name("id_ed25519.pub")]
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[bytes, int]]:
        return {str(p): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in self.files}

    def untouched(self) -> bool:
        return self.snapshot() == self.before and not self.nowhere.exists() and os.listdir(self.nowhere.parent) == []

    def target_for(self, name: str) -> Path:
        """What a hostile checkout links `name` to: the key at key names, the profile elsewhere."""
        if name == "ssh_host_ed25519_key" or name == "id_ed25519":
            return self.key
        if name.endswith(".pub"):
            return self.key.with_name("id_ed25519.pub")
        return self.bashrc


def plant(folder: Path, name: str, kind: str, victim: Victim) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / name
    target = victim.target_for(name)
    if kind == "symlink":
        entry.symlink_to(target)
    elif kind == "relative-symlink":
        entry.symlink_to(os.path.relpath(target, folder))
    elif kind == "dangling-symlink":
        entry.symlink_to(victim.nowhere)
    elif kind == "symlink-to-folder":
        entry.symlink_to(victim.home / ".ssh")
    elif kind == "symlink-loop":
        entry.symlink_to(name)
    elif kind == "hardlink":
        os.link(target, entry)
    elif kind == "fifo":
        os.mkfifo(entry)
    elif kind == "socket":  # bound by a relative name: a socket path is limited to 108 bytes
        import socket

        here = os.getcwd()
        os.chdir(folder)
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(name)
        finally:
            os.chdir(here)
    elif kind == "folder":
        entry.mkdir()
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.fixture
def victim(tmp_path: Path) -> Victim:
    return Victim(tmp_path)


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "devenv-home"))
    root = tmp_path / "proj"
    root.mkdir()
    (root / "Devfile").write_text('[machines.dev]\ndriver = "libvirt"\nbox = "tiny"\n')
    return root


def machine_dir(root: Path, name: str = "dev") -> Path:
    return root / ".devenv" / "machines" / name


def what_the_drivers_do(root: Path) -> str:
    """LibvirtDriver._define / VirtualBoxDriver._configure, their key handling in that order."""
    keys = identity.ensure_keys(ProjectState(root).ensure_machine_dir("dev"), "proj-1234/dev")
    keys.pin("127.0.0.1", 40022)
    return seed.user_data(
        hostname="dev",
        authorized_key=keys.client_pub,
        host_key_private=keys.host_private,
        host_key_public=keys.host_pub,
    )


# -- identity: every kind of entry at every key file name --------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_a_planted_entry_at_a_key_name_is_refused_and_never_followed(project, victim, name, kind):
    m = machine_dir(project)
    plant(m, name, kind, victim)
    with pytest.raises(StateError) as exc:
        what_the_drivers_do(project)
    assert exc.value.exit_code == 8
    assert f"{m} holds {name}, which is " in exc.value.message
    assert f"rm -rf {m}" in exc.value.hint
    assert victim.untouched(), "the victim's files changed, or a file appeared at a dangling link's target"
    # The planted entry is left as it was, for the user to look at.
    assert os.path.lexists(m / name)
    assert not [n for n in os.listdir(m) if n.endswith(".tmp")]


def test_the_reproduction_bashrc_and_private_key_links(project, victim):
    """/tmp/redteam/devenv_keys_symlinks.py: known_hosts -> ~/.bashrc, the host key pair -> the user's key."""
    m = machine_dir(project)
    m.mkdir(parents=True)
    (m / "known_hosts").symlink_to(victim.bashrc)
    (m / "ssh_host_ed25519_key").symlink_to(victim.key)
    (m / "ssh_host_ed25519_key.pub").symlink_to(victim.key.with_name("id_ed25519.pub"))
    with pytest.raises(StateError):
        what_the_drivers_do(project)
    assert victim.untouched()


def test_only_known_hosts_planted_is_refused_at_the_pin(project, victim):
    """The keys are devenv's, then a link appears as known_hosts: the pin neither writes nor chmods it."""
    what_the_drivers_do(project)
    m = machine_dir(project)
    (m / "known_hosts").unlink()
    (m / "known_hosts").symlink_to(victim.bashrc)
    with pytest.raises(StateError, match="known_hosts, which is a symbolic link"):
        identity.MachineKeys(m).pin("127.0.0.1", 40023)
    assert victim.untouched()


def test_a_link_swapped_in_after_the_keys_were_made_is_refused_at_every_read(project, victim):
    what_the_drivers_do(project)
    m = machine_dir(project)
    keys = identity.MachineKeys(m)
    for name, read in (
        ("ssh_host_ed25519_key", lambda: keys.host_private),
        ("ssh_host_ed25519_key.pub", lambda: keys.host_pub),
        ("id_ed25519.pub", lambda: keys.client_pub),
        ("id_ed25519", keys.check),
        ("known_hosts", keys.read_known_hosts),
    ):
        saved = (m / name).read_bytes()
        (m / name).unlink()
        (m / name).symlink_to(victim.target_for(name))
        with pytest.raises(StateError, match=f"holds {name}, which is a symbolic link"):
            read()
        (m / name).unlink()
        (m / name).write_bytes(saved)
    assert victim.untouched()


def test_a_file_of_another_user_is_refused(project, victim):
    if os.geteuid() != 0:
        missing("needs root to give a file to another user")
    what_the_drivers_do(project)
    m = machine_dir(project)
    os.chown(m / "ssh_host_ed25519_key", 4321, 4321)
    with pytest.raises(StateError, match=r"a file of another user \(uid 4321\)"):
        what_the_drivers_do(project)


def test_regular_files_that_are_not_keys_are_refused_not_spliced_into_the_seed(project):
    what_the_drivers_do(project)
    m = machine_dir(project)
    keys = identity.MachineKeys(m)
    (m / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAA\nruncmd: [touch /pwned]\n")
    with pytest.raises(StateError, match="not an ed25519 public key"):
        _ = keys.host_pub
    (m / "ssh_host_ed25519_key.pub").write_text("garbage")
    with pytest.raises(StateError, match="not an ed25519 public key"):
        keys.pin("127.0.0.1", 40022)
    (m / "ssh_host_ed25519_key").write_text("not a key\nruncmd: [touch /pwned]\n")
    with pytest.raises(StateError, match="not an OpenSSH private key"):
        _ = keys.host_private
    (m / "ssh_host_ed25519_key").write_bytes(b"\xff" * 64)
    with pytest.raises(StateError, match="not ASCII"):
        _ = keys.host_private
    (m / "ssh_host_ed25519_key").write_bytes(b"-" * (identity.MAX_KEY_BYTES + 1))
    with pytest.raises(StateError, match="larger than"):
        _ = keys.host_private


def test_the_seed_refuses_anything_but_openssh_keys():
    good_pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample devenv host x/y"
    private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n"
    seed.user_data(hostname="h", authorized_key=good_pub, host_key_private=private, host_key_public=good_pub)
    for bad in (
        {"host_key_private": private + "runcmd: [touch /pwned]\n"},
        {"host_key_private": "x"},
        {"authorized_key": good_pub + "\nruncmd: [touch /pwned]"},
        {"host_key_public": "ssh-rsa AAAA"},
    ):
        args = {"authorized_key": good_pub, "host_key_private": private, "host_key_public": good_pub, **bad}
        with pytest.raises(StateError):
            seed.user_data(hostname="h", **args)


def test_clean_folder_gets_fresh_keys_kept_across_calls(project):
    import tempfile

    scratch = set(Path(tempfile.gettempdir()).glob("devenv-keygen-*"))
    ud = what_the_drivers_do(project)
    m = machine_dir(project)
    assert stat.S_IMODE(os.lstat(m).st_mode) == 0o700
    modes = {n: stat.S_IMODE(os.lstat(m / n).st_mode) for n in os.listdir(m)}
    assert modes == {
        "id_ed25519": 0o600,
        "id_ed25519.pub": 0o644,
        "ssh_host_ed25519_key": 0o600,
        "ssh_host_ed25519_key.pub": 0o644,
        "known_hosts": 0o600,
    }, "exactly devenv's files, with devenv's modes (no temp file left)"
    host_private = (m / "ssh_host_ed25519_key").read_text()
    assert all(line in ud for line in host_private.splitlines())
    assert (m / "known_hosts").read_text().startswith("[127.0.0.1]:40022 ssh-ed25519 ")
    client = (m / "id_ed25519").read_bytes()
    what_the_drivers_do(project)
    assert (m / "id_ed25519").read_bytes() == client and (m / "ssh_host_ed25519_key").read_text() == host_private
    # ssh-keygen ran in a private temp folder of its own (never in the key folder), then removed.
    assert set(Path(tempfile.gettempdir()).glob("devenv-keygen-*")) == scratch


def test_half_a_pair_is_made_again_not_an_internal_error(project):
    what_the_drivers_do(project)
    m = machine_dir(project)
    (m / "id_ed25519.pub").unlink()
    (m / "ssh_host_ed25519_key").unlink()
    what_the_drivers_do(project)
    assert identity.is_public_key((m / "id_ed25519.pub").read_text())
    assert identity.is_private_key((m / "ssh_host_ed25519_key").read_text())


def test_a_linked_machine_folder_is_refused(project, victim):
    (project / ".devenv" / "machines").mkdir(parents=True)
    (project / ".devenv" / "machines" / "dev").symlink_to(victim.home / ".ssh")
    with pytest.raises(StateError, match="is a symbolic link"):
        what_the_drivers_do(project)
    assert victim.untouched() and sorted(os.listdir(victim.home / ".ssh")) == ["id_ed25519", "id_ed25519.pub"]


# -- libvirt: LibvirtDriver._define on libvirt's test hypervisor -------------------------------------
@pytest.fixture
def libvirt_machine(project, monkeypatch):
    require_module("libvirt", "pip install 'devenv[libvirt]'")  # a test dependency (devenv[libvirt])
    from devenv.drivers.libvirt import driver as lv
    from devenv.model import devfile

    monkeypatch.setenv("DEVENV_LIBVIRT_URI", "test:///default")
    df = devfile.load(project / "Devfile")
    target = Target(df.project_id, df.root, df.machines["dev"])
    box = BoxArtifact("tiny", "1", str(project.parent / "disk.qcow2"), "sha256:x", {"kernel": "/boxes/vmlinuz"})
    driver = lv.LibvirtDriver()
    driver.storage_dir(target.resource_name).mkdir(parents=True, exist_ok=True)
    handle = f"test:///default#{target.resource_name}"
    yield driver, target, box, handle
    dom = driver._dom(handle)
    if dom is not None:
        dom.undefine()


@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "hardlink", "fifo"])
@pytest.mark.parametrize("name", NAMES)
def test_libvirt_define_refuses_planted_key_entries(libvirt_machine, project, victim, name, kind):
    driver, target, box, handle = libvirt_machine
    plant(machine_dir(project), name, kind, victim)
    with pytest.raises(StateError, match=f"holds {name}, which is "):
        driver._define(target, box, handle, ssh_port=40022)
    assert victim.untouched()
    assert not (driver.storage_dir(target.resource_name) / "seed.iso").exists(), "no seed with anyone's key"
    assert driver._dom(handle) is None, "no domain defined"


def test_libvirt_seed_carries_devenv_s_key_and_the_transport_checks_the_folder(libvirt_machine, project, victim):
    import io

    import pycdlib

    from devenv.drivers.hostports import ssh_transport

    driver, target, box, handle = libvirt_machine
    driver._define(target, box, handle, ssh_port=40022)
    iso = pycdlib.PyCdlib()
    iso.open(str(driver.storage_dir(target.resource_name) / "seed.iso"))
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, joliet_path="/user-data")
    iso.close()
    user_data = out.getvalue().decode()
    m = machine_dir(project)
    assert all(line in user_data for line in (m / "ssh_host_ed25519_key").read_text().splitlines())
    # (the first base64 line of every ed25519 key is the same header: compare the key's own lines)
    assert not [line for line in victim.key.read_text().splitlines()[2:-1] if line in user_data]
    t = ssh_transport(driver.metadata(handle), "gone")
    assert t.key == m / "id_ed25519" and t.known_hosts == m / "known_hosts"
    # Later, a checkout replaces the client key by a link to the user's key: ssh is never handed it.
    (m / "id_ed25519").unlink()
    (m / "id_ed25519").symlink_to(victim.key)
    with pytest.raises(StateError, match="holds id_ed25519, which is a symbolic link"):
        ssh_transport(driver.metadata(handle), "gone")


def test_a_new_machine_never_uses_keys_a_checkout_brought_along(libvirt_machine, project):
    """Regular key files committed in .devenv/ (their private halves known to the repository's
    author) are replaced when the machine is created; a machine that exists keeps its keys."""
    from devenv.drivers.vm import identity

    driver, target, box, handle = libvirt_machine
    m = machine_dir(project)
    m.mkdir(parents=True, exist_ok=True)
    planted = identity.ensure_keys(m, "the repository author's")
    committed = {n: (m / n).read_bytes() for n in ("id_ed25519", "ssh_host_ed25519_key")}
    del planted
    driver._define(target, box, handle, ssh_port=40022, new_machine=True)
    after = {n: (m / n).read_bytes() for n in committed}
    assert all(after[n] != committed[n] for n in committed), "a new machine got fresh keys"
    driver._define(target, box, handle, ssh_port=40022)  # reload / apply settings: kept
    assert {n: (m / n).read_bytes() for n in committed} == after


# -- VirtualBox: `devenv up` on the VBoxManage stand-in ---------------------------------------------
@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "hardlink", "fifo"])
@pytest.mark.parametrize("name", ["known_hosts", "ssh_host_ed25519_key", "id_ed25519"])
def test_virtualbox_up_refuses_planted_key_entries(proj, vbox, tmp_path, name, kind):  # noqa: F811
    victim = Victim(tmp_path / "v")
    make_box(tmp_path)
    web(proj)
    m = proj.root / ".devenv" / "machines" / "web"
    plant(m, name, kind, victim)
    r = proj.cli("up")
    assert r.exit_code == 8, r.output
    assert f"holds {name}, which is " in r.output
    assert victim.untouched()
    pid = proj.project().devfile.project_id
    assert vbox.vm(f"devenv-{pid}-web") is None, "the half-made clone is removed"


def test_virtualbox_new_ssh_port_pin_refuses_a_planted_known_hosts(proj, vbox, tmp_path):  # noqa: F811
    from devenv.plugins import get_driver

    victim = Victim(tmp_path / "v")
    make_box(tmp_path)
    web(proj)
    assert proj.cli("up").exit_code == 0
    assert proj.cli("halt").exit_code == 0
    pid = proj.project().devfile.project_id
    vm = f"devenv-{pid}-web"
    m = proj.root / ".devenv" / "machines" / "web"
    (m / "known_hosts").unlink()
    (m / "known_hosts").symlink_to(victim.bashrc)
    import json
    import socket

    meta = json.loads(vbox.vm(vm)["extradata"]["devenv/meta"])
    with socket.socket() as s:  # the machine's SSH port is taken meanwhile: devenv re-pins another
        s.bind(("127.0.0.1", int(meta["ssh"]["port"])))
        with pytest.raises(StateError, match="known_hosts, which is a symbolic link"):
            get_driver("virtualbox")._free_ssh_port(vm, meta)
    assert victim.untouched()


# -- Vagrant: the pin of the host key a Vagrant machine presents ------------------------------------
FAKE_SSH = textwrap.dedent(
    """\
    #!{python}
    # Stand-in for OpenSSH's first contact with StrictHostKeyChecking=accept-new: it appends the
    # host key to the UserKnownHostsFile it is given, as ssh does (fopen "a", following links).
    import sys
    args = sys.argv[1:]
    opts = [args[i + 1] for i, a in enumerate(args) if a == "-o"]
    kh = next(o.split("=", 1)[1] for o in opts if o.startswith("UserKnownHostsFile="))
    alias = next(o.split("=", 1)[1] for o in opts if o.startswith("HostKeyAlias="))
    assert "StrictHostKeyChecking=accept-new" in opts
    with open(kh.strip('"'), "a") as f:
        f.write(alias + " {pub}\\n")
    """
)


def _pinned(tmp_path: Path, folder: Path, victim: Victim):
    from devenv.drivers.vagrant.driver import PinnedSsh

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    pub = " ".join(victim.key.with_name("id_ed25519.pub").read_text().split()[:2])
    (bin_dir / "ssh").write_text(FAKE_SSH.format(python=sys.executable, pub=pub))
    (bin_dir / "ssh").chmod(0o755)
    return bin_dir, PinnedSsh(
        alias="devenv-vagrant-web",
        machine="web",
        host="127.0.0.1",
        port=2222,
        user="vagrant",
        key=tmp_path / "vagrant-key",
        known_hosts=folder / "known_hosts",
    )


@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "hardlink", "fifo"])
def test_vagrant_pin_replaces_a_planted_known_hosts_never_writing_through_it(
    project, victim, tmp_path, monkeypatch, kind
):
    m = machine_dir(project)
    ProjectState(project).ensure_machine_dir("dev")
    plant(m, "known_hosts", kind, victim)
    bin_dir, t = _pinned(tmp_path, m, victim)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # Reading the pin (VagrantDriver._ssh, the control folder) refuses what devenv did not make ...
    with pytest.raises(StateError, match="holds known_hosts, which is "):
        identity.MachineKeys(m).read_known_hosts()
    # ... and a new pin (after `vagrant up` made a new machine) removes it, never following it.
    fp = t.pin()
    assert fp.startswith("SHA256:")
    assert victim.untouched()
    st = os.lstat(m / "known_hosts")
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) == 0o600
    assert (m / "known_hosts").read_text().startswith("devenv-vagrant-web ssh-ed25519 ")
    assert sorted(os.listdir(m)) == ["known_hosts"]


def test_vagrant_cache_file_link_or_fifo_is_ignored_not_followed(project, victim, monkeypatch):
    from devenv.drivers.vagrant.driver import VagrantDriver

    m = machine_dir(project)
    ProjectState(project).ensure_machine_dir("dev")
    driver = VagrantDriver()
    monkeypatch.setattr(driver, "_cache_dir", lambda handle: m)
    (m / "vagrant.json").symlink_to(victim.bashrc)
    assert driver._load_cache("h") == {}
    (m / "vagrant.json").unlink()
    os.mkfifo(m / "vagrant.json")
    assert driver._load_cache("h") == {}, "a FIFO is not waited on"
    assert victim.untouched()


@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "hardlink", "fifo"])
def test_vagrant_transport_refuses_a_planted_known_hosts(project, victim, tmp_path, monkeypatch, kind):
    """VagrantDriver._ssh reads the pin before every connection: a link there is never read through
    (old code took ~/.bashrc, or any file a link names, as the machine's pinned keys)."""
    from devenv.drivers.vagrant.driver import VagrantDriver

    m = machine_dir(project)
    ProjectState(project).ensure_machine_dir("dev")
    plant(m, "known_hosts", kind, victim)
    bin_dir, _ = _pinned(tmp_path, m, victim)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    driver = VagrantDriver()
    monkeypatch.setattr(driver, "_cache_dir", lambda handle: m)
    monkeypatch.setattr(driver, "_label", lambda handle: "dev")
    (tmp_path / "vagrant-key").write_text("k")
    cache = {
        "ssh": {"host": "127.0.0.1", "port": 2222, "user": "vagrant", "identity_files": [str(tmp_path / "vagrant-key")]}
    }
    with pytest.raises(StateError, match="holds known_hosts, which is "):
        driver._ssh(f"{project}#dev", cache)
    assert victim.untouched()
