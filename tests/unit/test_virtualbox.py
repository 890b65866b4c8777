"""The virtualbox driver against the scripted VBoxManage stand-in (tests/fakes/VBoxManage).

VirtualBox cannot run here (not packaged in Debian 12, no VT-x): these tests check the exact
VBoxManage command lines the driver issues, the stand-in checks each against VBoxManage's
documented syntax, and the SSH wait is replaced (one test runs it against a banner server).

The stand-in is a Python script: starting it costs ~0.1 s a call, and a `devenv up` makes
~20 calls. Tests that use the `spawn` fixture run it as a process, exactly as devenv runs
VBoxManage; the others load the same script once and call it in-process (through the
driver's `_exec` seam, after the driver resolved VBOXMANAGE to it).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devenv.boxes import store as boxes
from devenv.cli.app import app
from devenv.contract import MachineState, Target
from devenv.drivers.virtualbox import driver as vb
from devenv.drivers.virtualbox.driver import VirtualBoxDriver
from devenv.errors import BackendUnavailable, MachineStateError
from devenv.plugins import get_driver

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "VBoxManage"
REAL_WAIT_SSH = VirtualBoxDriver.wait_ssh
REAL_EXEC = VirtualBoxDriver.__dict__["_exec"]  # the staticmethod itself


def _load_stand_in():
    loader = importlib.machinery.SourceFileLoader("vboxmanage_stand_in", str(FAKE))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


STAND_IN = _load_stand_in()


def in_process(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    assert argv[0] == str(FAKE), "the driver runs what VBOXMANAGE names"
    code, out, err = STAND_IN.invoke(argv[1:])
    return subprocess.CompletedProcess(argv, code, out, err)


READ_ONLY = ("--version", "list", "showvminfo", "getextradata")
LOCKED = (
    "The machine '{vm}' is already locked for a session (or being unlocked)\n"
    "Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap, interface IMachine"
)

OVF = """\
<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="disk.vmdk"/></References>
  <DiskSection><Info>Virtual disks</Info>
    <Disk ovf:capacity="2147483648" ovf:diskId="vmdisk1" ovf:fileRef="file1"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="tiny">
    <Info>A tiny test VM</Info>
    <VirtualHardwareSection><Info>Virtual hardware</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
            <rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
            <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:VirtualQuantity>512</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>20</rasd:ResourceType>
            <rasd:ResourceSubType>AHCI</rasd:ResourceSubType></Item>
      {ide}
      <Item><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType>
            <rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:Parent>3</rasd:Parent>
            <rasd:AddressOnParent>0</rasd:AddressOnParent></Item>
      <Item><rasd:InstanceID>6</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType>
            <rasd:Connection>NAT</rasd:Connection></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""
IDE = (
    "<Item><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceType>5</rasd:ResourceType>"
    "<rasd:ResourceSubType>PIIX4</rasd:ResourceSubType></Item>"
)


def make_box(tmp_path: Path, name: str = "tiny", version: str = "1", *, additions: bool = False, ide: bool = False):
    """A VirtualBox box in the box store: box.ovf + disk.vmdk + box.json."""
    staging = tmp_path / f"staging-{name}-{version}"
    staging.mkdir()
    (staging / "box.ovf").write_text(OVF.replace("{ide}", IDE if ide else ""))
    (staging / "disk.vmdk").write_bytes(b'# Disk DescriptorFile\nversion=1\ncreateType="streamOptimized"\n')
    files = {"ovf": staging / "box.ovf", "disk": staging / "disk.vmdk"}
    return boxes.store_box(name, version, "virtualbox", files, {"ssh_user": "vagrant", "guest_additions": additions})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VBox:
    """The stand-in's call log and state."""

    def __init__(self, tmp_path: Path) -> None:
        self.state_file = tmp_path / "vbox-state.json"
        self.log_file = tmp_path / "vbox-calls.log"

    def calls(self) -> list[list[str]]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines()]

    def mark(self) -> int:
        return len(self.calls())

    def since(self, mark: int) -> list[list[str]]:
        return self.calls()[mark:]

    def changes(self, mark: int = 0) -> list[list[str]]:
        """The calls since mark that change something (no queries)."""
        return [
            c for c in self.since(mark) if c[0] not in READ_ONLY and not (c[0] == "snapshot" and c[2:3] == ["list"])
        ]

    def state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {"vms": []}

    def vm(self, name: str) -> dict | None:
        return next((v for v in self.state()["vms"] if v["name"] == name), None)

    def names(self) -> list[str]:
        return sorted(v["name"] for v in self.state()["vms"])

    def set_state(self, name: str, state: str) -> None:
        data = self.state()
        next(v for v in data["vms"] if v["name"] == name)["state"] = state
        self.state_file.write_text(json.dumps(data))

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(FAKE), *args], capture_output=True, text=True, env={**os.environ, **env})


@pytest.fixture
def vbox(tmp_path, monkeypatch, proj) -> VBox:
    return use_stand_in(tmp_path, monkeypatch)


def use_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VBox:
    """The driver runs the stand-in (in-process), with its state and call log in tmp_path
    (test_virtualbox_networks.py sets up its own `vbox` fixture with this)."""
    monkeypatch.setenv("VBOXMANAGE", str(FAKE))
    monkeypatch.setenv("FAKE_VBOX_STATE", str(tmp_path / "vbox-state.json"))
    monkeypatch.setenv("FAKE_VBOX_LOG", str(tmp_path / "vbox-calls.log"))
    for var in ("FAKE_VBOX_FAIL", "FAKE_VBOX_VERSION", "FAKE_VBOX_ACPI", "FAKE_VBOX_NETWORKS_CONF"):
        monkeypatch.delenv(var, raising=False)
    # No guest boots here: starting a machine must not wait for its sshd (one test runs the real wait).
    monkeypatch.setattr(VirtualBoxDriver, "wait_ssh", lambda self, handle, timeout: None)
    monkeypatch.setattr(vb, "LOCK_RETRY_SECONDS", 0.5)
    monkeypatch.setattr(VirtualBoxDriver, "_exec", staticmethod(in_process))
    return VBox(tmp_path)


@pytest.fixture
def spawn(vbox, monkeypatch) -> VBox:
    """The stand-in as a process of its own, as VBoxManage is."""
    monkeypatch.setattr(VirtualBoxDriver, "_exec", REAL_EXEC)
    return vbox


def names(proj) -> tuple[str, str]:
    """(the project id, the VM name of machine web)."""
    pid = proj.project().devfile.project_id
    return pid, f"devenv-{pid}-web"


def meta(vbox: VBox, vm: str) -> dict:
    return json.loads(vbox.vm(vm)["extradata"]["devenv/meta"])


def vms_dir() -> Path:
    return Path(os.environ["DEVENV_HOME"]) / "virtualbox" / "vms"


def seed_iso(vm: str) -> str:
    return str(Path(os.environ["DEVENV_HOME"]) / "virtualbox" / "machines" / vm / "seed.iso")


def web(proj, extra: str = "", **fields: str) -> None:
    lines = ["[machines.web]", 'driver = "virtualbox"', 'box = "tiny"']
    lines += [f"{k} = {v}" for k, v in fields.items()]
    proj.devfile("\n".join(lines) + "\n" + textwrap.dedent(extra))


def up(proj, *args: str):
    r = proj.cli("up", *args)
    assert r.exit_code == 0, r.output
    return r


# -- up -------------------------------------------------------------------------------------------------
def test_up_imports_the_box_once_then_makes_a_linked_clone(proj, vbox, spawn, tmp_path):
    box = make_box(tmp_path)
    port = free_port()
    web(proj, memory='"1GiB"', cpus="2", ports=f"[{{ guest = 80, host = {port} }}]")
    pid, vm = names(proj)
    base, ovf = "devenv-base-tiny-1", str(box.folder / "box.ovf")

    up(proj)

    m = meta(vbox, vm)
    ssh = m["ssh"]["port"]
    assert vbox.changes() == [
        ["import", ovf, "--vsys", "0", "--vmname", base, "--basefolder", str(vms_dir())],
        ["snapshot", base, "take", "base", "--description", "devenv: linked clones start here"],
        ["setextradata", base, "devenv/base", f'{{"box":"tiny","digest":"sha256:{box.digest()}","version":"1"}}'],
        ["clonevm", base, "--snapshot", "base", "--options", "link", "--name", vm,
         "--basefolder", str(vms_dir()), "--register"],
        ["setextradata", vm, "devenv/project", pid],
        ["setextradata", vm, "devenv/machine", "web"],
        ["setextradata", vm, "devenv/base"],
        ["modifyvm", vm, "--cpus", "2", "--memory", "1024", "--nic1", "nat",
         "--natpf1", f"ssh,tcp,127.0.0.1,{ssh},,22", "--natpf1", f"port0,tcp,127.0.0.1,{port},,80"],
        ["storagectl", vm, "--name", "devenv-seed", "--add", "ide"],
        ["storageattach", vm, "--storagectl", "devenv-seed", "--port", "0", "--device", "0",
         "--type", "dvddrive", "--medium", seed_iso(vm)],
        ["setextradata", vm, "devenv/meta", vbox.vm(vm)["extradata"]["devenv/meta"]],
        ["startvm", vm, "--type", "headless"],
    ]  # fmt: skip
    assert m["project"] == pid and m["machine"] == "web" and m["ssh"]["user"] == "vagrant"
    assert m["ports"] == [{"host_ip": "127.0.0.1", "host": port, "guest": 80, "protocol": "tcp"}]

    # The stand-in's view: a running linked clone with the forwards and the seed DVD.
    clone = vbox.vm(vm)
    assert clone["state"] == "running" and clone["cpus"] == 2 and clone["memory"] == 1024
    assert clone["linked_from"]["vm"] == vbox.vm(base)["uuid"]
    assert [r["hostport"] for r in clone["natpf"]["1"]] == [ssh, port]
    seed = next(c for c in clone["controllers"] if c["name"] == "devenv-seed")
    assert seed["attachments"]["0-0"] == {"type": "dvddrive", "medium": seed_iso(vm)}
    assert "devenv/base" not in clone["extradata"], "a clone is no base VM"

    # The identity is pinned to the forwarded SSH port before the machine ever booted.
    known = (proj.root / ".devenv" / "machines" / "web" / "known_hosts").read_text()
    assert known.startswith(f"[127.0.0.1]:{ssh} ssh-ed25519 ")
    st = proj.status()["web"]
    assert st["state"] == "running" and st["driver"] == "virtualbox" and st["box"] == "tiny@1"
    assert st["ports"] == [f"127.0.0.1:{ssh} -> 22/tcp", f"127.0.0.1:{port} -> 80/tcp"]


def test_driver_create_and_start_issue_exactly_these_commands(proj, vbox, tmp_path):
    """Every call, queries included, for a machine on a box that is already imported."""
    make_box(tmp_path, ide=True)
    web(proj)
    up(proj)  # imports the base
    proj.cli("destroy", "-f")
    pid, vm = names(proj)
    project = proj.project()
    driver = get_driver("virtualbox")
    target = Target(pid, proj.root, project.devfile.machines["web"])
    mark = vbox.mark()

    box = driver.prepare_box(target, "tiny")
    handle = driver.create(target, box)
    driver.start(handle)

    assert handle == vm
    ssh = meta(vbox, vm)["ssh"]["port"]
    base = "devenv-base-tiny-1"
    assert vbox.since(mark) == [
        ["getextradata", vm, "enumerate"],
        ["getextradata", base, "enumerate"],
        ["clonevm", base, "--snapshot", "base", "--options", "link", "--name", vm,
         "--basefolder", str(vms_dir()), "--register"],
        ["setextradata", vm, "devenv/project", pid],
        ["setextradata", vm, "devenv/machine", "web"],
        ["setextradata", vm, "devenv/base"],
        ["showvminfo", vm, "--machinereadable"],
        ["modifyvm", vm, "--nic1", "nat", "--natpf1", f"ssh,tcp,127.0.0.1,{ssh},,22"],
        # The box has an IDE controller: the seed goes on its free secondary master.
        ["storageattach", vm, "--storagectl", "IDE", "--port", "1", "--device", "0",
         "--type", "dvddrive", "--medium", seed_iso(vm)],
        ["setextradata", vm, "devenv/meta", vbox.vm(vm)["extradata"]["devenv/meta"]],
        ["getextradata", vm, "enumerate"],
        ["showvminfo", vm, "--machinereadable"],
        ["startvm", vm, "--type", "headless"],
    ]  # fmt: skip
    assert driver.state(handle) is MachineState.RUNNING


def test_machines_on_one_box_share_one_import(proj, vbox, tmp_path):
    make_box(tmp_path)
    proj.devfile(
        """
        [defaults]
        driver = "virtualbox"
        box = "tiny"
        [machines.a]
        [machines.b]
        """
    )
    up(proj)  # a and b come up in parallel: one import between them
    calls = vbox.changes()
    assert [c[0] for c in calls].count("import") == 1
    assert [c[:3] for c in calls if c[0] == "snapshot"] == [["snapshot", "devenv-base-tiny-1", "take"]]
    clones = sorted(c[c.index("--name") + 1] for c in calls if c[0] == "clonevm")
    pid = proj.project().devfile.project_id
    assert clones == [f"devenv-{pid}-a", f"devenv-{pid}-b"]

    # Another project on the same box: straight to the clone.
    other = proj.root.parent / "other"
    other.mkdir()
    (other / "Devfile").write_text('[machines.web]\ndriver = "virtualbox"\nbox = "tiny"\n')
    mark = vbox.mark()
    r = CliRunner().invoke(app, ["-f", str(other / "Devfile"), "up"])
    assert r.exit_code == 0, r.output
    assert [c[0] for c in vbox.changes(mark)][:1] == ["clonevm"]


# -- halt, suspend, resume ------------------------------------------------------------------------------
def test_halt_is_an_acpi_shutdown_and_up_starts_again(proj, vbox, tmp_path):
    make_box(tmp_path)
    web(proj)
    up(proj)
    _, vm = names(proj)
    mark = vbox.mark()
    r = proj.cli("halt")
    assert r.exit_code == 0, r.output
    assert vbox.changes(mark) == [["controlvm", vm, "acpipowerbutton"]]
    assert proj.status()["web"]["state"] == "stopped"

    mark = vbox.mark()
    up(proj)
    assert vbox.changes(mark) == [["startvm", vm, "--type", "headless"]]

    mark = vbox.mark()
    assert proj.cli("halt", "--force").exit_code == 0
    assert vbox.changes(mark) == [["controlvm", vm, "poweroff"]]


def test_halt_powers_off_a_guest_that_ignores_acpi_after_the_timeout(proj, vbox, tmp_path, monkeypatch):
    make_box(tmp_path)
    web(proj)
    up(proj)
    _, vm = names(proj)
    monkeypatch.setenv("FAKE_VBOX_ACPI", "ignore")
    mark = vbox.mark()
    get_driver("virtualbox").stop(vm, timeout=0.3)
    calls = vbox.since(mark)
    assert vbox.changes(mark) == [["controlvm", vm, "acpipowerbutton"], ["controlvm", vm, "poweroff"]]
    # It waited (polling the state) between the button and the power-off.
    between = calls[calls.index(["controlvm", vm, "acpipowerbutton"]) + 1 : calls.index(["controlvm", vm, "poweroff"])]
    assert len(between) >= 2 and all(c == ["showvminfo", vm, "--machinereadable"] for c in between)
    assert vbox.vm(vm)["state"] == "poweroff"

    # Through the CLI with halt_timeout = 1: the same two steps.
    web(proj, "[machines.web.virtualbox]\nhalt_timeout = 1\n")
    proj.cli("reload")
    mark = vbox.mark()
    r = proj.cli("halt")
    assert r.exit_code == 0, r.output
    assert "no clean shutdown after 1s: powering off" in r.output
    assert vbox.changes(mark) == [["controlvm", vm, "acpipowerbutton"], ["controlvm", vm, "poweroff"]]


def test_suspend_saves_the_state_and_resume_starts_it(proj, vbox, tmp_path):
    make_box(tmp_path)
    web(proj)
    up(proj)
    _, vm = names(proj)
    mark = vbox.mark()
    assert proj.cli("suspend").exit_code == 0
    assert vbox.changes(mark) == [["controlvm", vm, "savestate"]]
    assert proj.status()["web"]["state"] == "suspended"
    mark = vbox.mark()
    r = proj.cli("resume")
    assert r.exit_code == 0, r.output
    assert vbox.changes(mark) == [["startvm", vm, "--type", "headless"]]
    assert proj.status()["web"]["state"] == "running"

    # A paused VM (paused from VirtualBox's window) is resumed, not started.
    vbox.run("controlvm", vm, "pause")
    assert proj.status()["web"]["state"] == "suspended"
    mark = vbox.mark()
    up(proj)
    assert vbox.changes(mark) == [["controlvm", vm, "resume"]]


# -- snapshots ------------------------------------------------------------------------------------------
def test_snapshots_take_list_restore_delete(proj, vbox, tmp_path):
    make_box(tmp_path)
    web(proj)
    up(proj)
    _, vm = names(proj)

    mark = vbox.mark()
    assert proj.cli("snapshot", "save", "web", "clean").exit_code == 0
    assert vbox.changes(mark) == [["snapshot", vm, "take", "clean", "--description", "devenv snapshot"]]
    r = proj.cli("snapshot", "list", "web", "--json")
    assert json.loads(r.stdout) == ["clean"]
    assert ["snapshot", vm, "list", "--machinereadable"] in vbox.since(mark)

    r = proj.cli("snapshot", "save", "web", "clean")
    assert r.exit_code == 10 and "snapshot 'clean' already exists" in r.output

    # Restoring needs the VM off; a running machine runs again afterwards.
    mark = vbox.mark()
    r = proj.cli("snapshot", "restore", "web", "clean")
    assert r.exit_code == 0, r.output
    assert vbox.changes(mark) == [
        ["controlvm", vm, "poweroff"],
        ["snapshot", vm, "restore", "clean"],
        ["startvm", vm, "--type", "headless"],
    ]
    assert proj.status()["web"]["state"] == "running"

    r = proj.cli("snapshot", "restore", "web", "nope")
    assert r.exit_code == 2 and "no snapshot named 'nope'" in r.output

    mark = vbox.mark()
    assert proj.cli("snapshot", "delete", "web", "clean").exit_code == 0
    assert vbox.changes(mark) == [["snapshot", vm, "delete", "clean"]]
    assert json.loads(proj.cli("snapshot", "list", "web", "--json").stdout) == []


# -- destroy, find, sweep -------------------------------------------------------------------------------
def test_destroy_unregisters_and_deletes_the_clone_not_the_base(proj, vbox, tmp_path):
    make_box(tmp_path)
    web(proj)
    up(proj)
    _, vm = names(proj)
    clone_folder = vms_dir() / vm
    assert (clone_folder / f"{vm}.vbox").exists()
    mark = vbox.mark()
    r = proj.cli("destroy", "-f")
    assert r.exit_code == 0, r.output
    assert vbox.changes(mark) == [["controlvm", vm, "poweroff"], ["unregistervm", vm, "--delete"]]
    assert vbox.names() == ["devenv-base-tiny-1"]
    assert not clone_folder.exists()
    assert not Path(seed_iso(vm)).parent.exists()
    assert proj.status()["web"]["state"] == "not created"


def test_machines_are_found_and_swept_by_extradata_without_devenv_dir(proj, vbox, tmp_path):
    make_box(tmp_path)
    proj.devfile('[defaults]\ndriver = "virtualbox"\nbox = "tiny"\n[machines.web]\n[machines.old]\n')
    up(proj)
    pid = proj.project().devfile.project_id
    # A VM of another project and a VM of the user's own: never touched.
    vbox.run("clonevm", "devenv-base-tiny-1", "--snapshot", "base", "--options", "link",
             "--name", "devenv-otherproj-1234-web", "--register")  # fmt: skip
    vbox.run("setextradata", "devenv-otherproj-1234-web", "devenv/project", "otherproj-1234")
    vbox.run("clonevm", "devenv-base-tiny-1", "--snapshot", "base", "--name", "my-own-vm", "--register")

    shutil.rmtree(proj.root / ".devenv")
    assert proj.status()["web"]["state"] == "running", "found by its name and extradata"

    # "old" is renamed away in the Devfile: destroy finds its VM by the project's extradata.
    proj.devfile('[defaults]\ndriver = "virtualbox"\nbox = "tiny"\n[machines.web]\n')
    r = proj.cli("destroy", "-f")
    assert r.exit_code == 0, r.output
    assert f"removed leftover virtualbox machine devenv-{pid}-old" in r.output
    assert vbox.names() == ["devenv-base-tiny-1", "devenv-otherproj-1234-web", "my-own-vm"]
    assert ["list", "vms"] in vbox.calls()


def test_a_half_made_clone_is_not_a_machine_and_is_replaced(proj, vbox, tmp_path):
    make_box(tmp_path)
    web(proj)
    up(proj)
    _, vm = names(proj)
    proj.cli("halt")
    # As if a run was killed before create's last step: no record in .devenv/, no devenv/meta.
    vbox.run("setextradata", vm, "devenv/meta")
    proj.state_file("web").unlink()
    assert proj.status()["web"]["state"] == "not created"
    mark = vbox.mark()
    r = proj.cli("up")
    assert r.exit_code == 0, r.output
    assert "half-made" in r.output
    changes = vbox.changes(mark)
    assert changes[0] == ["unregistervm", vm, "--delete"] and changes[1][0] == "clonevm"
    assert proj.status()["web"]["state"] == "running"


def test_vmstate_maps_to_machine_state(proj, vbox, tmp_path):
    make_box(tmp_path)
    web(proj)
    up(proj)
    vm = names(proj)[1]
    expected = {"aborted": "stopped", "poweroff": "stopped", "saved": "suspended", "paused": "suspended",
                "aborted-saved": "suspended", "running": "running", "gurumeditation": "running"}  # fmt: skip
    for vmstate, state in expected.items():
        vbox.set_state(vm, vmstate)
        assert get_driver("virtualbox").state(vm).value == state, vmstate
    vbox.set_state(vm, "poweroff")
    vbox.run("unregistervm", vm)
    assert proj.status()["web"]["state"] == "not created"


# -- reload -----------------------------------------------------------------------------------------------
def test_reload_applies_changed_settings_in_place(proj, vbox, tmp_path):
    make_box(tmp_path)
    p1, p2 = free_port(), free_port()
    web(proj, memory='"1GiB"', ports=f"[{{ guest = 80, host = {p1} }}]")
    up(proj)
    _, vm = names(proj)
    ssh = meta(vbox, vm)["ssh"]["port"]
    web(proj, memory='"2GiB"', ports=f"[{{ guest = 80, host = {p1} }}, {{ guest = 443, host = {p2} }}]")
    assert proj.status()["web"]["action"] == "reload"
    mark = vbox.mark()
    r = proj.cli("reload")
    assert r.exit_code == 0, r.output
    assert vbox.changes(mark) == [
        ["controlvm", vm, "acpipowerbutton"],
        ["modifyvm", vm, "--memory", "2048", "--nic1", "nat", "--natpf1", "delete", "ssh", "--natpf1", "delete",
         "port0", "--natpf1", f"ssh,tcp,127.0.0.1,{ssh},,22", "--natpf1", f"port0,tcp,127.0.0.1,{p1},,80",
         "--natpf1", f"port1,tcp,127.0.0.1,{p2},,443"],
        ["storageattach", vm, "--storagectl", "devenv-seed", "--port", "0", "--device", "0", "--type", "dvddrive",
         "--medium", seed_iso(vm)],
        ["setextradata", vm, "devenv/meta", vbox.vm(vm)["extradata"]["devenv/meta"]],
        ["startvm", vm, "--type", "headless"],
    ]  # fmt: skip
    st = proj.status()["web"]
    assert st["action"] is None and st["state"] == "running"
    assert vbox.vm(vm)["memory"] == 2048


def test_reload_of_a_suspended_machine_resumes_and_halts_it_first(proj, vbox, tmp_path):
    make_box(tmp_path)
    web(proj, memory='"1GiB"')
    up(proj)
    _, vm = names(proj)
    proj.cli("suspend")
    web(proj, memory='"2GiB"')
    mark = vbox.mark()
    r = proj.cli("reload")
    assert r.exit_code == 0, r.output
    assert [c[:3] for c in vbox.changes(mark)][:3] == [
        ["startvm", vm, "--type"],
        ["controlvm", vm, "acpipowerbutton"],
        ["modifyvm", vm, "--memory"],
    ]
    assert vbox.vm(vm)["memory"] == 2048 and vbox.vm(vm)["state"] == "running"


def test_a_taken_ssh_port_is_replaced_when_the_machine_starts(proj, vbox, tmp_path):
    make_box(tmp_path)
    web(proj)
    up(proj)
    _, vm = names(proj)
    proj.cli("halt")
    old = meta(vbox, vm)["ssh"]["port"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        mark = vbox.mark()
        r = up(proj)
    new = meta(vbox, vm)["ssh"]["port"]
    assert new != old and f"SSH port {old} is taken: forwarding {new} instead" in r.output
    assert vbox.changes(mark) == [
        ["modifyvm", vm, "--natpf1", "delete", "ssh", "--natpf1", f"ssh,tcp,127.0.0.1,{new},,22"],
        ["setextradata", vm, "devenv/meta", vbox.vm(vm)["extradata"]["devenv/meta"]],
        ["startvm", vm, "--type", "headless"],
    ]
    known = (proj.root / ".devenv" / "machines" / "web" / "known_hosts").read_text()
    assert known.startswith(f"[127.0.0.1]:{new} ")
    assert f"127.0.0.1:{new} -> 22/tcp" in proj.status()["web"]["ports"]


# -- sync folders -----------------------------------------------------------------------------------------
def test_shared_folders_when_the_box_has_guest_additions(proj, vbox, tmp_path):
    make_box(tmp_path, additions=True)
    proj.write("src/app.py", "print('hi')\n")
    proj.write("docs/README", "read me\n")
    web(proj, sync='[{ host = "src", guest = "/src" }, { host = "docs", guest = "/docs", read_only = true }]')
    up(proj)
    _, vm = names(proj)
    shares = [c for c in vbox.changes() if c[0] == "sharedfolder"]
    assert shares == [
        ["sharedfolder", "add", vm, "--name", "sync0", "--hostpath", str(proj.root / "src"),
         "--automount", "--auto-mount-point", "/src"],
        ["sharedfolder", "add", vm, "--name", "sync1", "--hostpath", str(proj.root / "docs"), "--readonly",
         "--automount", "--auto-mount-point", "/docs"],
    ]  # fmt: skip
    assert proj.status()["web"]["sync"] == "vboxsf"


def test_copies_over_ssh_when_the_box_has_no_guest_additions(proj, vbox, tmp_path, monkeypatch):
    from devenv.transports.ssh import SshTransport

    pushed = []

    def put_tree(self, local, remote, *, exclude=()):
        pushed.append((self.host, self.port, self.user, local, remote))

    monkeypatch.setattr(SshTransport, "put_tree", put_tree)
    make_box(tmp_path, additions=False)
    proj.write("src/app.py", "print('hi')\n")
    web(proj, sync='[{ host = "src", guest = "/src" }]')
    r = up(proj)
    _, vm = names(proj)
    assert "sync" in r.output and "(copy)" in r.output
    assert not [c for c in vbox.changes() if c[0] == "sharedfolder"]
    assert pushed == [("127.0.0.1", meta(vbox, vm)["ssh"]["port"], "vagrant", proj.root / "src", "/src")]
    assert proj.status()["web"]["sync"] == "rsync"

    # vboxsf asked for explicitly on a box without Guest Additions: refused before anything is made.
    proj.cli("destroy", "-f")
    mark = vbox.mark()
    web(proj, sync='[{ host = "src", guest = "/src", type = "vboxsf" }]')
    r = proj.cli("up")
    assert r.exit_code == 7 and "has no VirtualBox Guest Additions" in r.output
    assert not [c for c in vbox.changes(mark) if c[0] == "clonevm"]


def test_validate_rejects_what_virtualbox_cannot_do(proj, vbox, tmp_path):
    proj.write("src/x", "x")
    web(proj, sync='[{ host = "src", guest = "/src", type = "virtiofs" }]', ports='[{ guest = 80, host_ip = "::1" }]')
    r = proj.cli("validate")
    assert r.exit_code == 2
    assert "the virtualbox driver cannot sync with 'virtiofs' (use auto, vboxsf or rsync)" in r.output
    assert "VirtualBox NAT forwards IPv4 host addresses only" in r.output


# -- the SSH wait ------------------------------------------------------------------------------------------
def test_start_waits_for_the_ssh_banner_through_the_forward(proj, vbox, tmp_path, monkeypatch):
    monkeypatch.setattr(VirtualBoxDriver, "wait_ssh", REAL_WAIT_SSH)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    served = []

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"SSH-2.0-OpenSSH_9.2 stand-in\r\n")
            served.append(True)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    # VirtualBox binds the forward when the VM starts: here the "guest's sshd" already listens on it.
    monkeypatch.setattr(vb, "_free_port", lambda ip: port)
    monkeypatch.setattr(vb, "_port_free", lambda ip, p, proto: True)
    monkeypatch.setenv("FAKE_VBOX_HOST_PORTS", "unchecked")
    make_box(tmp_path)
    web(proj)
    try:
        up(proj)
    finally:
        server.close()
    assert served == [True]

    driver = get_driver("virtualbox")
    _, vm = names(proj)
    with pytest.raises(MachineStateError, match="did not bring up SSH within 0s"):
        driver.wait_ssh(vm, 0.3)  # nothing answers on the port now
    vbox.run("controlvm", vm, "poweroff")
    with pytest.raises(MachineStateError, match="stopped while booting .VirtualBox state: poweroff"):
        driver.wait_ssh(vm, 30)


# -- error paths -------------------------------------------------------------------------------------------
def test_missing_vboxmanage_is_engine_unavailable(proj, vbox, tmp_path, monkeypatch):
    make_box(tmp_path)
    web(proj)
    monkeypatch.delenv("VBOXMANAGE")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    r = proj.cli("up")
    assert r.exit_code == 3, r.output
    assert "VirtualBox is not installed: there is no VBoxManage on PATH" in r.output
    assert "virtualbox.org" in r.output and "VBOXMANAGE" in r.output
    monkeypatch.setenv("VBOXMANAGE", str(tmp_path / "nowhere" / "VBoxManage"))
    r = proj.cli("status")
    assert r.exit_code == 3 and "which is not an executable" in r.output


@pytest.mark.parametrize("version", ["5.2.44r139111", "6.0.24r139119", "8.0.0r170000"])
def test_unsupported_virtualbox_versions_are_refused(proj, vbox, spawn, tmp_path, monkeypatch, version):
    make_box(tmp_path)
    web(proj)
    monkeypatch.setenv("FAKE_VBOX_VERSION", version)
    r = proj.cli("up")
    assert r.exit_code == 3, r.output
    assert f"VirtualBox {version} is not supported: the virtualbox driver drives VirtualBox 6.1 and 7.x" in r.output
    assert vbox.changes() == []


def test_version_parsing():
    assert vb.parse_version("7.0.14r161095\n") == ((7, 0, 14), "7.0.14r161095")
    assert vb.parse_version("7.1.4_Ubuntur165100\n")[0] == (7, 1, 4)
    warning = "WARNING: The vboxdrv kernel module is not loaded. Either there is no module\n6.1.50r161033\n"
    assert vb.parse_version(warning) == ((6, 1, 50), "6.1.50r161033")
    assert vb.parse_version("garbage") is None


def test_supported_versions_pass(vbox, monkeypatch):
    for version in ("6.1.50r161033", "7.0.14r161095", "7.1.4r165100"):
        monkeypatch.setenv("FAKE_VBOX_VERSION", version)
        get_driver("virtualbox").check_available()
    monkeypatch.setenv("FAKE_VBOX_VERSION", "not a version")
    with pytest.raises(BackendUnavailable, match="cannot read the VirtualBox version"):
        get_driver("virtualbox").check_available()


def test_a_locked_vm_is_reported_as_such(proj, vbox, tmp_path, monkeypatch):
    make_box(tmp_path)
    web(proj)
    up(proj)
    proj.cli("halt")
    _, vm = names(proj)
    monkeypatch.setenv("FAKE_VBOX_FAIL", "startvm:" + LOCKED.format(vm=vm))
    mark = vbox.mark()
    r = proj.cli("up")
    assert r.exit_code == 4, r.output
    assert f"VM '{vm}' is locked by another process: The machine '{vm}' is already locked" in r.output
    assert "close its VirtualBox window" in r.output
    assert [c[0] for c in vbox.changes(mark)].count("startvm") > 1, "retried while VirtualBox might unlock it"
    monkeypatch.delenv("FAKE_VBOX_FAIL")
    assert vbox.vm(vm) is not None, "the machine is kept"
    up(proj)


def test_start_failures_are_explained(proj, vbox, tmp_path, monkeypatch):
    make_box(tmp_path)
    web(proj)
    up(proj)
    proj.cli("halt")
    cases = [
        ("VT-x is not available (VERR_VMX_NO_VMX)", 3, "cannot use hardware virtualization (VT-x/AMD-V)"),
        ("The virtual machine has terminated unexpectedly (VERR_VM_DRIVER_NOT_INSTALLED)", 3, "(vboxdrv) is not loaded"),
        ("Failed to open a session for the virtual machine", 6, "VBoxManage startvm failed: Failed to open a session"),
    ]  # fmt: skip
    for message, code, text in cases:
        monkeypatch.setenv("FAKE_VBOX_FAIL", f"startvm:{message}")
        r = proj.cli("up")
        assert r.exit_code == code, r.output
        assert text in r.output
    monkeypatch.delenv("FAKE_VBOX_FAIL")
    up(proj)


def test_busy_host_port_is_refused_before_anything_is_made(proj, vbox, tmp_path):
    make_box(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        web(proj, ports=f"[{{ guest = 80, host = {port} }}]")
        r = proj.cli("up")
        assert r.exit_code == 11, r.output
        assert f"host port 127.0.0.1:{port}/tcp (for guest port 80) is already in use" in r.output
        assert not [c for c in vbox.changes() if c[0] in ("import", "clonevm")]

        web(proj, ports=f"[{{ guest = 80, host = {port}, auto_correct = true }}]")
        up(proj)
        assert meta(vbox, names(proj)[1])["ports"][0]["host"] > port


def test_a_port_another_running_vm_forwards_is_a_port_conflict(proj, vbox, tmp_path):
    """The driver cannot see ports a running VM's NAT holds, VirtualBox refuses them at start."""
    make_box(tmp_path)
    port = free_port()
    devfile = f'[machines.web]\ndriver = "virtualbox"\nbox = "tiny"\nports = [{{ guest = 80, host = {port} }}]\n'
    proj.devfile(devfile)
    up(proj)
    other = proj.root.parent / "other"
    other.mkdir()
    (other / "Devfile").write_text(devfile)
    r = CliRunner().invoke(app, ["-f", str(other / "Devfile"), "up"])
    assert r.exit_code == 11, r.output
    assert "VirtualBox cannot forward a host port" in r.output and "VERR_NAT_REDIR_SETUP" in r.output
    assert [n for n in vbox.names() if n.startswith("devenv-other-")] == [], "the half-started machine is removed"


# -- the stand-in itself ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["modifyvm", "vm", "--cpu", "2"], 2, "Unknown option: --cpu"),
        (["modifyvm", "--cpus", "2", "vm"], 2, "The first argument must be the VM name or UUID"),
        (["modifyvm", "vm", "--natpf1", "ssh,tcp,127.0.0.1,2222,22"], 2, "Invalid NAT rule"),
        (["modifyvm", "vm", "--natpf1", "ssh,icmp,,2222,,22"], 2, "Invalid proto 'icmp'"),
        (["modifyvm", "vm", "--nic1", "natty"], 2, "Invalid --nic1 argument 'natty'"),
        (["import", "box.ovf", "--vmname", "base"], 2, 'Option "--vmname" requires preceding --vsys argument.'),
        (["clonevm", "base", "--options", "lnk"], 2, "Invalid clone options 'lnk'"),
        (["storageattach", "vm", "--port", "0", "--medium", "none"], 2, "Storage controller name not specified"),
        (["storagectl", "vm", "--name", "x", "--add", "floppydisk"], 2, "Invalid --add argument 'floppydisk'"),
        (["sharedfolder", "add", "vm", "--name", "s"], 2, "No host path (--hostpath) specified"),
        (["startvm", "vm", "--type", "invisible"], 2, "Invalid --type argument 'invisible'"),
        (["controlvm", "vm", "poweroff", "now"], 2, "Too many parameters: 'now'"),
        (["controlvm", "vm", "acpipowerbuton"], 2, "controlvm acpipowerbuton: not implemented"),
        (["snapshot", "vm", "take"], 2, "Missing snapshot name"),
        (["snapshot", "vm", "restore", "a", "b"], 2, "Expecting snapshot name only"),
        (["unregistervm", "vm", "--delet"], 2, "Unknown option: --delet"),
        (["showvminfo", "vm", "--machinereadable", "--details"], 2, "mutually exclusive"),
        (["frobnicate", "vm"], 2, "Invalid command 'frobnicate'"),
        (["showvminfo", "nope", "--machinereadable"], 1, "Could not find a registered machine named 'nope'"),
    ],
)
def test_the_stand_in_rejects_what_vboxmanage_rejects(vbox, args, code, message):
    r = vbox.run(*args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert r.stderr.startswith("VBoxManage: error: ") and message in r.stderr
    assert vbox.calls()[-1] == args, "every call is logged, failed ones too"


def test_the_stand_in_models_locks_and_dependencies(proj, vbox, tmp_path):
    make_box(tmp_path)
    web(proj)
    up(proj)
    _, vm = names(proj)
    r = vbox.run("modifyvm", vm, "--cpus", "2")
    assert r.returncode == 1 and "VBOX_E_INVALID_OBJECT_STATE" in r.stderr, "a running VM is locked"
    r = vbox.run("unregistervm", "devenv-base-tiny-1", "--delete")
    assert r.returncode == 1 and "linked clone(s)" in r.stderr
    r = vbox.run("snapshot", "devenv-base-tiny-1", "delete", "base")
    assert r.returncode == 1 and "linked clone(s)" in r.stderr
    r = vbox.run("snapshot", vm, "list", "--machinereadable")
    assert r.returncode == 1 and r.stdout == "This machine does not have any snapshots\n"
    r = vbox.run("modifyvm", vm, "--cpu", "2", FAKE_VBOX_FAIL="modifyvm:injected failure")
    assert r.returncode == 2 and "Unknown option: --cpu" in r.stderr, "syntax is checked before a fault"
    r = vbox.run("getextradata", vm, "devenv/project", FAKE_VBOX_FAIL="getextradata:injected failure")
    assert (r.returncode, r.stderr) == (1, "VBoxManage: error: injected failure\n")


def test_machine_readable_parsing():
    text = 'name="a vm"\n"SATA Controller-0-0"="/x/disk.vmdk"\ncpus=2\ndescription="say \\"hi\\""\nnoise\n'
    assert vb.parse_machinereadable(text) == {
        "name": "a vm",
        "SATA Controller-0-0": "/x/disk.vmdk",
        "cpus": "2",
        "description": 'say "hi"',
    }
    listing = 'SnapshotName="a"\nSnapshotUUID="1"\nSnapshotName-1="b"\nSnapshotName-1-1="c"\nCurrentSnapshotName="c"\n'
    assert vb.snapshot_names(listing) == ["a", "b", "c"]
    assert vb.parse_list(
        '"one" {0a1b2c3d-0000-0000-0000-000000000001}\n"two words" {00000000-0000-0000-0000-000000000002}\n'
    ) == [
        "one",
        "two words",
    ]
