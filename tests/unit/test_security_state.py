"""Security of devenv's state (issue #10 items 4, 11, 12, 17, 18), against the real code paths.

.devenv/ lives in a folder a repository controls: every case here writes a crafted .devenv/
(forged handles, wrong types, links, FIFOs, huge files) and runs the real CLI (CliRunner) on
the fake driver seam, or the real drivers against their stand-ins (libvirt's test:///default,
the scripted VBoxManage). Nothing is sent anywhere but 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from devenv.contract import LABEL_MACHINE, LABEL_PROJECT, BoxArtifact, MachineState, Target
from devenv.errors import DevfileError, MachineStateError, StateError
from devenv.model import devfile
from devenv.state import GlobalIndex, ProjectState
from tests.support import require_engine

ONE = """\
    [machines.web]
    driver = "fake"
    box = "base"
    provision = [{ type = "shell", inline = "echo provisioned-web" }]
"""

TWO = """\
    [machines.web]
    driver = "fake"
    box = "base"
    provision = [{ type = "shell", inline = "echo provisioned-web" }]

    [machines.db]
    driver = "fake"
    box = "base"
"""


def _plant(fake, labels: dict, *, state: str = "running") -> str:
    """A machine on the fake engine that this project did not make."""
    return fake.plant(labels, state=state)


def _forge(proj, name: str, **fields) -> Path:
    path = proj.state_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"driver": "fake", "steps": [], **fields}))
    return path


def _ours(fake, pid: str, name: str) -> dict | None:
    found = [
        m
        for m in fake.machines.values()
        if m["labels"].get(LABEL_PROJECT) == pid and m["labels"].get(LABEL_MACHINE) == name
    ]
    assert len(found) <= 1
    return found[0] if found else None


def _no_internal_error(r) -> None:
    assert "internal error" not in r.output, r.output
    assert "Traceback" not in r.output, r.output


# -- item 4: state is not trusted ----------------------------------------------------------------


FOREIGN = {
    "another project": lambda pid: {LABEL_PROJECT: "other-12345678", LABEL_MACHINE: "web"},
    "no labels": lambda pid: {},
    "this project, another machine": lambda pid: {LABEL_PROJECT: pid, LABEL_MACHINE: "db"},
    "machine label only": lambda pid: {LABEL_MACHINE: "web"},
}


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_forged_handle_never_reaches_a_foreign_machine(proj, fake, kind):
    """up, exec, ssh, halt, provision and destroy -f never touch a machine .devenv/ merely names."""
    proj.devfile(TWO)
    pid = proj.project().devfile.project_id
    foreign = _plant(fake, FOREIGN[kind](pid))
    before = fake.machines[foreign]
    # A "db" that is ours would be listed below by label: keep db not created for the db case.
    _forge(proj, "web", handle=foreign, steps=[{"fingerprint": "sha256:x", "label": "[0]"}])

    r = proj.cli("exec", "web", "--", "echo", "reached")
    _no_internal_error(r)
    assert r.exit_code == 4 and "not created" in r.output, r.output
    assert r.output.count("not this project's machine 'web'") == 1, "one warning"
    for verb in (("ssh", "web", "-c", "echo reached"), ("provision", "web"), ("halt", "web")):
        r = proj.cli(*verb)
        _no_internal_error(r)
        assert "reached" not in r.output
    assert fake.machines[foreign] == before, "nothing ran in, stopped or changed the foreign machine"

    r = proj.cli("up", "web")
    assert r.exit_code == 0, r.output
    assert r.output.count("not this project's machine 'web'") == 1
    ours = _ours(fake, pid, "web")
    assert ours is not None
    assert "echo provisioned-web" in " ".join(ours["runs"]), "every step ran in the project's own machine"
    assert fake.machines[foreign] == before
    st = json.loads(proj.state_file("web").read_text())
    assert st["handle"] != foreign and fake.machines[st["handle"]]["labels"][LABEL_MACHINE] == "web"

    # The forged file again (a repository pull, say): exec reaches our machine, not the foreign one.
    _forge(proj, "web", handle=foreign)
    r = proj.cli("exec", "web", "--", "echo", "reached-ours")
    assert r.exit_code == 0 and "reached-ours" in r.output, r.output
    assert fake.machines[foreign] == before

    _forge(proj, "web", handle=foreign)
    # All machines, and a sweep by label: unless the planted one is this project's db (then only web).
    r = proj.cli("destroy", "-f", *(["web"] if kind == "this project, another machine" else []))
    assert r.exit_code == 0, r.output
    assert foreign in fake.machines and fake.machines[foreign] == before, "destroy -f left it alone"
    assert _ours(fake, pid, "web") is None
    assert not proj.state_file("web").exists()


def test_forged_handle_to_a_machine_of_the_same_name_in_another_checkout(tmp_path, fake):
    """Two checkouts of one repo: a state file copied from the other never reaches its machine."""
    from tests.unit.conftest import ProjectDir

    a, b = ProjectDir(tmp_path / "a", fake), ProjectDir(tmp_path / "b", fake)
    a.devfile(ONE)
    b.devfile(ONE)
    assert a.cli("up").exit_code == 0
    a_handle = json.loads(a.state_file("web").read_text())["handle"]
    b.state_file("web").parent.mkdir(parents=True)
    b.state_file("web").write_text(a.state_file("web").read_text())
    r = b.cli("destroy", "-f")
    assert r.exit_code == 0, r.output
    assert a_handle in fake.machines and fake.machines[a_handle]["state"] == "running"
    assert a.status()["web"]["state"] == "running"
    a.cli("destroy", "-f")


def test_stale_handle_of_a_removed_machine_is_recreated_quietly(proj, fake):
    """The common case is not a forgery: a machine removed by hand is made again, without the warning."""
    proj.devfile(ONE)
    assert proj.cli("up").exit_code == 0
    fake.destroy(json.loads(proj.state_file("web").read_text())["handle"])
    r = proj.cli("up")
    assert r.exit_code == 0 and "gone from the engine" in r.output, r.output
    assert "not this project's" not in r.output


def test_global_status_prune_forgets_but_never_removes(proj, fake):
    """An index entry whose handle names a foreign machine is only forgotten, never acted on."""
    proj.devfile(ONE)
    foreign = _plant(fake, {})
    index = GlobalIndex()
    index.record(
        {
            "project_id": "gone-00000000",
            "project": "gone",
            "root": str(proj.root / "no-such-folder"),
            "devfile": "x",
            "machine": "web",
            "driver": "fake",
            "handle": foreign,
        }
    )
    r = proj.cli("global-status", "--prune")
    assert r.exit_code == 0, r.output
    assert "forgot gone/web" in r.output
    assert foreign in fake.machines and fake.machines[foreign]["state"] == "running"


def test_docker_owns_checks_labels_and_never_sends_a_malformed_handle(monkeypatch):
    from devenv.contract import Ownership
    from devenv.drivers.docker.driver import DockerDriver

    d = DockerDriver()
    asked: list[str] = []

    class Engine:
        local = True

        def inspect_container(self, handle):
            asked.append(handle)
            labels = {"mine": {LABEL_PROJECT: "p-1", LABEL_MACHINE: "web"}, "theirs": {LABEL_PROJECT: "q-2"}}
            return {"Config": {"Labels": labels[handle]}} if handle in labels else None

    d._engine = Engine()
    target = _target_named("p-1", "web")
    assert d.owns("mine", target) is Ownership.OURS
    assert d.owns("theirs", target) is Ownership.FOREIGN
    assert d.owns("gone", target) is Ownership.GONE
    for bad in ("../images/busybox", "a/b", "-x", "", "x" * 300, "a?b=c", "web\n"):
        assert d.owns(bad, target) is Ownership.FOREIGN
    assert asked == ["mine", "theirs", "gone"], "malformed handles never reach the engine API"


def _target_named(project_id: str, name: str, tmp: Path | None = None, text: str | None = None) -> Target:
    import tempfile

    root = tmp or Path(tempfile.mkdtemp())
    (root / "Devfile").write_text(text or f'[machines.{name}]\nbox = "docker:busybox"\n')
    df = devfile.load(root / "Devfile")
    return Target(project_id, df.root, df.machines[name])


# -- item 4 on the VM drivers: libvirt (test:///default), VirtualBox (stand-in), Vagrant -------------


def _libvirt_target(tmp_path: Path, monkeypatch) -> tuple:
    from devenv.drivers.libvirt import driver as lv

    require_engine(lambda: lv.LibvirtDriver().conn("test:///default"))
    monkeypatch.setenv("DEVENV_LIBVIRT_URI", "test:///default")
    (tmp_path / "Devfile").write_text('[machines.vm]\ndriver = "libvirt"\nbox = "tiny"\n')
    df = devfile.load(tmp_path / "Devfile")
    return lv, lv.LibvirtDriver(), Target(df.project_id, df.root, df.machines["vm"])


def _define_test_domain(conn, name: str, metadata: str = "") -> None:
    conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
        f"<metadata>{metadata}</metadata><os><type arch='x86_64'>hvm</type></os></domain>"
    )


def test_libvirt_owns_only_domains_with_this_projects_metadata(tmp_path, monkeypatch):
    from devenv.contract import Ownership

    lv, driver, target = _libvirt_target(tmp_path, monkeypatch)
    conn = driver.conn()
    name = target.resource_name
    handle = f"test:///default#{name}"
    other = f"devenv-sliceb-foreign-{os.getpid()}"
    try:
        # Our deterministic name, another project's metadata: not adopted, not found, not removed.
        _define_test_domain(conn, name, f"<devenv:machine xmlns:devenv='{lv.NS}' project='other-1' machine='vm'/>")
        assert driver.owns(handle, target) is Ownership.FOREIGN
        assert driver.find(target) is None
        with pytest.raises(MachineStateError, match="is not devenv's machine 'vm'"):
            driver.create(target, BoxArtifact("tiny", "1", "/nonexistent.qcow2"))
        assert conn.lookupByName(name) is not None
        conn.lookupByName(name).undefine()
        # No devenv metadata at all.
        _define_test_domain(conn, other)
        assert driver.owns(f"test:///default#{other}", target) is Ownership.FOREIGN
        # Ours.
        _define_test_domain(
            conn, name, f"<devenv:machine xmlns:devenv='{lv.NS}' project='{target.project_id}' machine='vm'/>"
        )
        assert driver.owns(handle, target) is Ownership.OURS and driver.find(target) == handle
        conn.lookupByName(name).undefine()
        assert driver.owns(handle, target) is Ownership.GONE
    finally:
        for n in (name, other):
            with contextlib.suppress(Exception):
                conn.lookupByName(n).undefine()


def test_libvirt_handle_naming_another_uri_is_never_connected_to(tmp_path, monkeypatch):
    from devenv.contract import Ownership

    lv, driver, target = _libvirt_target(tmp_path, monkeypatch)
    opened: list[str] = []
    real = driver.conn
    monkeypatch.setattr(driver, "conn", lambda uri=None: opened.append(uri or "") or real(uri))
    for forged in (
        "qemu+ssh://attacker.invalid/system#" + target.resource_name,
        "qemu:///system#" + target.resource_name,
        "test:///default#../x",
        "test:///default#-x",
        "no-hash-at-all",
    ):
        assert driver.owns(forged, target) is Ownership.FOREIGN, forged
    assert opened == [], "a forged URI is refused before any connection"


def test_virtualbox_forged_handle_never_touches_another_projects_vm(tmp_path, monkeypatch):
    from devenv.drivers.virtualbox import driver as vb
    from devenv.drivers.virtualbox.driver import VirtualBoxDriver
    from tests.unit.conftest import ProjectDir
    from tests.unit.test_virtualbox import VBox, in_process, make_box

    monkeypatch.setenv("VBOXMANAGE", str(Path(__file__).resolve().parents[1] / "fakes" / "VBoxManage"))
    monkeypatch.setenv("FAKE_VBOX_STATE", str(tmp_path / "vbox-state.json"))
    monkeypatch.setenv("FAKE_VBOX_LOG", str(tmp_path / "vbox-calls.log"))
    for var in ("FAKE_VBOX_FAIL", "FAKE_VBOX_VERSION", "FAKE_VBOX_ACPI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(VirtualBoxDriver, "wait_ssh", lambda self, handle, timeout: None)
    monkeypatch.setattr(vb, "LOCK_RETRY_SECONDS", 0.5)
    monkeypatch.setattr(VirtualBoxDriver, "_exec", staticmethod(in_process))
    vbox = VBox(tmp_path)
    make_box(tmp_path)
    text = '[machines.web]\ndriver = "virtualbox"\nbox = "tiny"\n'
    a, b = ProjectDir(tmp_path / "a", None), ProjectDir(tmp_path / "b", None)  # type: ignore[arg-type]
    a.devfile(text)
    b.devfile(text)
    assert a.cli("up").exit_code == 0
    a_vm = json.loads(a.state_file("web").read_text())["handle"]
    assert vbox.vm(a_vm) is not None
    for forged in (a_vm, "--help", "-rf"):
        b.state_file("web").parent.mkdir(parents=True, exist_ok=True)
        b.state_file("web").write_text(json.dumps({"driver": "virtualbox", "handle": forged, "steps": []}))
        mark = vbox.mark()
        r = b.cli("destroy", "-f")
        assert r.exit_code == 0, r.output
        if forged.startswith("-"):
            assert all(forged not in call for call in vbox.since(mark)), "a malformed handle never reaches VBoxManage"
        assert all(forged not in call for call in vbox.changes(mark)), "nothing was changed on the forged VM"
        assert vbox.vm(a_vm) is not None and vbox.vm(a_vm)["state"] == "running"
    a.cli("destroy", "-f")


def test_vagrant_owns_only_the_machine_the_devfile_names(tmp_path):
    from devenv.contract import Ownership
    from devenv.drivers.vagrant.driver import VagrantDriver, make_handle

    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "Vagrantfile").write_text("Vagrant.configure('2') {}\n")
    (tmp_path / "Devfile").write_text(
        '[machines.web]\ndriver = "vagrant"\n[machines.web.vagrant]\ndir = "vm"\nmachine = "default"\n'
    )
    df = devfile.load(tmp_path / "Devfile")
    target = Target(df.project_id, df.root, df.machines["web"])
    d = VagrantDriver()
    called: list = []
    d.state = lambda handle: called.append(handle) or MachineState.RUNNING  # type: ignore[method-assign]
    for forged in (make_handle(Path("/srv/other-project"), "default"), make_handle(tmp_path / "vm", "other"), 123):
        assert d.owns(forged, target) is Ownership.FOREIGN  # type: ignore[arg-type]
    assert called == [], "Vagrant is never asked about another folder's machine"
    # The Devfile's own machine is OURS only once devenv recorded making it (its data folder's marker).
    assert d.owns(make_handle(tmp_path / "vm", "default"), target) is Ownership.FOREIGN
    from devenv.drivers.vagrant.driver import write_marker

    write_marker(make_handle(tmp_path / "vm", "default"), None)
    assert d.owns(make_handle(tmp_path / "vm", "default"), target) is Ownership.OURS


# -- item 12: corrupt, linked or special state files ------------------------------------------------


CORRUPT = {
    "handle is a number": b'{"driver": "fake", "handle": 123}',
    "steps is a number": b'{"driver": "fake", "handle": "fake-0001", "steps": 5}',
    "box is a string": b'{"driver": "fake", "handle": "fake-0001", "box": "x"}',
    "steps hold numbers": b'{"driver": "fake", "steps": [1, 2]}',
    "negative failed step": b'{"driver": "fake", "failed_step": -1}',
    "failed step is text": b'{"driver": "fake", "failed_step": "1"}',
    "a list at the top": b"[1, 2, 3]",
    "a string at the top": b'"web"',
    "not UTF-8": b'{"driver": "\xff\xfe"}',
    "not JSON": b"{driver: fake",
    "empty": b"",
    "nested 100000 deep": b"[" * 100000 + b"]" * 100000,
    "2 MiB": b'{"driver": "fake", "pad": "' + b"x" * (2 << 20) + b'"}',
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_corrupt_state_is_a_state_error_and_destroy_still_removes_the_machine(proj, fake, kind):
    proj.devfile(ONE)
    assert proj.cli("up").exit_code == 0
    ours = json.loads(proj.state_file("web").read_text())["handle"]
    proj.state_file("web").write_bytes(CORRUPT[kind])
    for verb in (("status",), ("up",), ("exec", "web", "--", "true"), ("provision",)):
        r = proj.cli(*verb)
        _no_internal_error(r)
        assert r.exit_code == 8, (verb, r.output)
        assert str(proj.state_file("web")) in r.output and "rm " in r.output, r.output
    r = proj.cli("destroy", "-f")
    _no_internal_error(r)
    assert r.exit_code == 0, r.output
    assert "finding the machine by its engine labels" in r.output
    assert ours not in fake.machines, "found by its labels and removed"
    assert not proj.state_file("web").exists()


def _outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir(exist_ok=True)
    (out / "web.json").write_text('{"driver": "fake", "handle": "fake-0001"}')
    (out / "precious").write_text("precious\n")
    return out


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


LINKS = {
    ".devenv": lambda root, out: (root / ".devenv").symlink_to(out),
    ".devenv/machines": lambda root, out: _mk(root / ".devenv").joinpath("machines").symlink_to(out),
    ".devenv/machines/web.json": lambda root, out: (
        _mk(root / ".devenv" / "machines").joinpath("web.json").symlink_to(out / "web.json")
    ),
    ".devenv/machines/web (keys)": lambda root, out: _mk(root / ".devenv" / "machines").joinpath("web").symlink_to(out),
    ".devenv/lock": lambda root, out: _mk(root / ".devenv").joinpath("lock").symlink_to(out / "precious"),
    ".devenv/.gitignore": lambda root, out: _mk(root / ".devenv").joinpath(".gitignore").symlink_to(out / "precious"),
}


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.mark.parametrize("where", list(LINKS))
def test_links_planted_in_devenv_are_never_followed(proj, fake, tmp_path, where):
    """A repository that commits `.devenv/... -> elsewhere` makes devenv neither write, truncate,
    read nor delete anything there; destroy -f still removes the machine."""
    proj.devfile(ONE)
    assert proj.cli("up").exit_code == 0
    ours = json.loads(proj.state_file("web").read_text())["handle"]
    import shutil

    shutil.rmtree(proj.root / ".devenv")
    out = _outside(tmp_path)
    LINKS[where](proj.root, out)
    before = _snapshot(out)
    if where in (".devenv", ".devenv/machines", ".devenv/machines/web.json"):  # what status reads
        r = proj.cli("status")
        assert r.exit_code == 8 and "symbolic link" in r.output, "state is never read through a link"
    for verb in (("status",), ("up",), ("halt",), ("provision",)):
        r = proj.cli(*verb)
        _no_internal_error(r)
        assert r.exit_code in (0, 4, 8), (verb, r.output)  # 4: provision after halt
        if r.exit_code == 8:
            assert "symbolic link" in r.output or "not a regular file" in r.output, r.output
        assert _snapshot(out) == before, f"{verb} changed files outside the project"
    r = proj.cli("destroy", "-f")
    _no_internal_error(r)
    assert r.exit_code == 0, r.output
    assert ours not in fake.machines
    assert _snapshot(out) == before, "destroy removed or changed files outside the project"


def test_fifo_and_device_state_files_do_not_hang(proj, fake):
    proj.devfile(ONE)
    proj.state_file("web").parent.mkdir(parents=True)
    os.mkfifo(proj.state_file("web"))
    r = proj.cli("status")
    _no_internal_error(r)
    assert r.exit_code == 8 and "not a regular file" in r.output, r.output
    assert proj.cli("destroy", "-f").exit_code == 0
    assert not proj.state_file("web").exists()
    proj.state_file("web").symlink_to("/dev/zero")
    r = proj.cli("status")
    assert r.exit_code == 8 and "symbolic link" in r.output, r.output
    assert proj.cli("destroy", "-f").exit_code == 0
    assert Path("/dev/zero").exists()


@pytest.mark.parametrize("shape", ["a file", "a folder named lock"])
def test_devenv_of_the_wrong_kind_is_a_state_error(proj, fake, shape):
    proj.devfile(ONE)
    if shape == "a file":
        (proj.root / ".devenv").write_text("not a folder\n")
    else:
        (proj.root / ".devenv" / "lock").mkdir(parents=True)
    r = proj.cli("up")
    _no_internal_error(r)
    assert r.exit_code == 8 and ".devenv" in r.output, r.output
    assert fake.by_name("web") is None, "nothing was made"
    assert proj.cli("destroy", "-f").exit_code == 0


def test_unwritable_existing_devenv_is_a_state_error(tmp_path, fake, monkeypatch):
    """An existing .devenv/ the user cannot write: exit 8 with the fix, never an internal error."""
    import tempfile

    from tests.unit.conftest import ProjectDir

    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="devenv-unwritable-"))
    try:
        base.chmod(0o777)
        monkeypatch.setenv("DEVENV_HOME", str(base / "home"))
        monkeypatch.setenv("DEVENV_FAKE_STATE", str(base / "engine.json"))
        p = ProjectDir(base / "proj", fake)
        p.devfile(ONE)
        (p.root / ".devenv" / "machines").mkdir(parents=True)
        (p.root / ".devenv" / ".gitignore").write_text("*\n")
        (p.root / ".devenv").chmod(0o555)
        for d in (base, p.root):
            d.chmod(0o777)
        (base / "home").mkdir(mode=0o777)
        fake.path = base / "engine.json"
        fake.path.write_text(json.dumps({"machines": {}, "log": [], "seq": 0, "fail": {}}))
        fake.path.chmod(0o666)
        as_nobody = os.geteuid() == 0
        if as_nobody:
            os.seteuid(65534)  # root bypasses permissions: be an ordinary user for this command
        try:
            r = p.cli("up")
        finally:
            if as_nobody:
                os.seteuid(0)
        _no_internal_error(r)
        assert r.exit_code == 8, r.output
        assert ".devenv" in r.output and "Permission denied" in r.output, r.output
    finally:
        import shutil

        for d in base.rglob("*"):
            with contextlib.suppress(OSError):
                d.chmod(0o777) if d.is_dir() and not d.is_symlink() else None
        (base / "proj" / ".devenv").chmod(0o755) if (base / "proj" / ".devenv").exists() else None
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "content",
    [
        '{"machines": []}',
        "[]",
        '{"machines": {"x": 5}}',
        '{"machines": {"x": {"driver": 1, "handle": null}}}',
        '{"machines": {"x": {"project_id": "p", "machine": "m", "driver": "fake"}}}',
        '{"machines": {"x": {"project_id": "p", "machine": "m", "driver": "fake", "handle": "h", "root": 5}}}',
        "\xff",
        "[" * 50000,
    ],
)
def test_global_index_of_the_wrong_shape(proj, fake, content):
    index = GlobalIndex()
    index.path.parent.mkdir(parents=True, exist_ok=True)
    index.path.write_bytes(content.encode("latin-1"))
    r = proj.cli("global-status")
    _no_internal_error(r)
    assert r.exit_code == 0, r.output
    proj.devfile(ONE)
    assert proj.cli("up").exit_code == 0, "up records the machine in a repaired index"
    r = proj.cli("global-status", "--json")
    assert r.exit_code == 0 and [e["machine"] for e in json.loads(r.stdout)] == ["web"], r.output
    proj.cli("destroy", "-f")


def test_state_writes_are_private_and_never_follow_a_link(tmp_path):
    st = ProjectState(tmp_path)
    old = os.umask(0)
    try:
        st.save("web", {"driver": "fake", "handle": "h"})
        st.ensure_machine_dir("web")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / ".devenv").stat().st_mode) == 0o700
    assert stat.S_IMODE(st.machine_file("web").stat().st_mode) == 0o600
    assert stat.S_IMODE(st.machine_dir("web").stat().st_mode) == 0o700
    target = tmp_path / "target"
    target.write_text("keep")
    st.machine_file("web").unlink()
    st.machine_file("web").symlink_to(target)
    st.save("web", {"driver": "fake", "handle": "h2"})  # replaces the link, never writes through it
    assert target.read_text() == "keep" and not st.machine_file("web").is_symlink()
    st.remove("web")
    st.machine_dir("web").symlink_to(tmp_path)
    with pytest.raises(StateError, match="symbolic link"):
        st.ensure_machine_dir("web")
    st.remove("web")
    assert tmp_path.is_dir() and target.exists(), "removing a linked keys folder removed only the link"


# -- item 18: an address this host does not have --------------------------------------------------


@pytest.mark.parametrize("ip", ["192.0.2.45", "203.0.113.7", "fd00:dead:beef::45"])
def test_unassignable_host_ip_is_a_clear_error_before_anything_is_written(proj, fake, ip):
    proj.devfile(f"""\
        [machines.web]
        driver = "fake"
        box = "base"
        ports = [{{ guest = 80, host = 18080 }}, {{ guest = 81, host = 18081, host_ip = "{ip}" }}]
    """)
    r = proj.cli("up")
    _no_internal_error(r)
    assert r.exit_code == DevfileError.exit_code, r.output
    assert f"machines.web.ports[1]: host_ip {ip} is not an address of this host" in r.output, r.output
    assert not (proj.root / ".devenv").exists(), "no state folder or lock was made"
    assert not (proj.root / "Devfile.lock").exists()
    assert fake.machines == {}


def test_loopback_host_ips_pass_the_check(proj, fake):
    ips = ["127.0.0.1", "127.0.0.2"]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        ips.append("::1")
    ports = ", ".join(f'{{ guest = {80 + i}, host_ip = "{ip}" }}' for i, ip in enumerate(ips))
    proj.devfile(f'[machines.web]\ndriver = "fake"\nbox = "base"\nports = [{ports}]\n')
    r = proj.cli("up")
    assert r.exit_code == 0, r.output
    proj.cli("destroy", "-f")


def test_host_port_helpers_turn_a_foreign_address_into_a_devfile_error():
    from devenv.drivers.hostports import free_port, port_free

    with pytest.raises(DevfileError, match="192.0.2.45 is not an address of this host"):
        port_free("192.0.2.45", 8080)
    with pytest.raises(DevfileError, match="is not an address of this host"):
        free_port("192.0.2.45")


# -- item 17: options that open the host warn ------------------------------------------------------


def test_docker_options_that_expose_the_host_warn_naming_what(tmp_path, capsys):
    from devenv.cli.render import reporter
    from devenv.drivers.docker.driver import DockerDriver

    text = textwrap.dedent("""\
        [machines.web]
        box = "docker:busybox"
        [machines.web.docker]
        privileged = true
        cap_add = ["NET_ADMIN", "SYS_PTRACE"]
        network = "host"
    """)
    target = _target_named("p-1", "web", tmp_path, text)
    d = DockerDriver()
    d.reporter = reporter()  # the driver reports its warnings; the CLI's reporter prints them
    d._engine = type("E", (), {"local": True, "base_url": "http+docker://localhost"})()
    config = d.container_config(target, BoxArtifact("busybox", None, "busybox", extra={"arch": "x86_64"}))
    err = capsys.readouterr().err
    assert config["HostConfig"]["Privileged"] is True and config["HostConfig"]["NetworkMode"] == "host"
    assert "privileged = true" in err and "every device of the host" in err and "host kernel" in err
    assert "NET_ADMIN, SYS_PTRACE" in err
    assert "host's network stack" in err
    # The defaults say nothing.
    plain = _target_named("p-1", "web", tmp_path, '[machines.web]\nbox = "docker:busybox"\n')
    d.container_config(plain, BoxArtifact("busybox", None, "busybox", extra={"arch": "x86_64"}))
    assert "warning" not in capsys.readouterr().err.lower()


# -- item 11: read_only shares are enforced by the host -------------------------------------------


def _vm_devfile(tmp_path: Path, sync: str) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "Devfile").write_text(f'[machines.vm]\ndriver = "libvirt"\nbox = "tiny"\nsync = [{sync}]\n')
    return tmp_path / "Devfile"


def test_virtiofs_read_only_is_refused_at_validate(tmp_path):
    from typer.testing import CliRunner

    from devenv.cli.app import app

    path = _vm_devfile(tmp_path, '{ host = "src", guest = "/src", type = "virtiofs", read_only = true }')
    r = CliRunner().invoke(app, ["-f", str(path), "validate"])
    assert r.exit_code == 2, r.output
    assert "sync[0].read_only" in r.output and "cannot be enforced on a virtiofs share" in r.output
    assert 'type = "9p"' in r.output
    _vm_devfile(tmp_path, '{ host = "src", guest = "/src", type = "virtiofs" }')
    assert CliRunner().invoke(app, ["-f", str(path), "validate"]).exit_code == 0


def test_read_only_auto_sync_is_9p_with_host_side_readonly(tmp_path, monkeypatch):
    from devenv.drivers.libvirt import driver as lv

    monkeypatch.setattr(lv, "virtiofsd_path", lambda: "/usr/lib/qemu/virtiofsd")
    monkeypatch.setattr(lv, "hardware_virt_usable", lambda: False)
    _vm_devfile(
        tmp_path,
        '{ host = "src", guest = "/ro", read_only = true }, { host = "src", guest = "/rw" }',
    )
    df = devfile.load(tmp_path / "Devfile")
    target = Target(df.project_id, df.root, df.machines["vm"])
    box = BoxArtifact("tiny", "1", "/x.qcow2", extra={"kernel": "/k", "sync": ["virtiofs", "9p", "rsync"]})
    driver = lv.LibvirtDriver()
    plan = driver._sync_plan(target, box)
    assert [(s["guest"], s["kind"], s["read_only"]) for s in plan] == [("/ro", "9p", True), ("/rw", "virtiofs", False)]
    xml = driver.domain_xml(
        target=target, box=box, name=target.resource_name, uri="qemu:///system", folder=tmp_path,
        ssh_port=2222, ssh_user="root", keys_dir=tmp_path, forwards=[], sync=plan,
    )  # fmt: skip
    fs = ET.fromstring(xml).findall("./devices/filesystem")
    ro = [f for f in fs if f.find("target").get("dir") == "sync0"][0]
    assert ro.find("readonly") is not None and ro.find("driver") is None, "9p, read-only in QEMU"
    rw = [f for f in fs if f.find("target").get("dir") == "sync1"][0]
    assert rw.find("readonly") is None and rw.find("driver").get("type") == "virtiofs"
    # A plan that asks virtiofs for a read-only share never reaches the XML.
    _vm_devfile(tmp_path, '{ host = "src", guest = "/ro", read_only = true, type = "virtiofs" }')
    with pytest.raises(DevfileError):
        devfile.load(tmp_path / "Devfile")


def test_9p_readonly_becomes_qemus_host_side_readonly(tmp_path, monkeypatch):
    """libvirt turns the 9p <readonly/> into QEMU's -fsdev ...,readonly=on: writes fail on the host."""
    from devenv.drivers.libvirt import driver as lv

    driver = lv.LibvirtDriver()
    require_engine(lambda: driver.conn("qemu:///system"))
    src = tmp_path / "src"
    src.mkdir()
    xml = (
        "<domain type='qemu'><name>devenv-sliceb-native</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
        f"<filesystem type='mount' accessmode='passthrough'><source dir='{src}'/><target dir='sync0'/><readonly/>"
        "</filesystem></devices></domain>"
    )
    argv = driver.conn("qemu:///system").domainXMLToNative("qemu-argv", xml, 0)
    fsdev = [a for a in argv.split() if a.startswith("local,") or "fsdriver" in a or "readonly" in a]
    assert any("readonly=on" in a or ",readonly" in a for a in fsdev), argv
