"""libvirt domain XML and metadata, checked against libvirt's built-in test hypervisor (test:///default)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt  # noqa: F401 - a test dependency (devenv[libvirt]); missing it must fail, not skip
import pytest

from devenv.contract import BoxArtifact, MachineState, Target
from devenv.drivers.libvirt import driver as lv
from devenv.model import devfile


def _machine(tmp_path: Path, extra: str = ""):
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "Devfile").write_text(
        '[machines.vm]\ndriver = "libvirt"\nbox = "tiny"\nmemory = "300MiB"\ncpus = 2\nhostname = "vm-host"\n'
        'ports = [{ guest = 80, host = 18123 }, { guest = 53, host = 18124, protocol = "udp", host_ip = "127.0.0.2" }]\n'
        'sync = [{ host = "src", guest = "/src", type = "rsync" }]\n' + extra
    )
    df = devfile.load(tmp_path / "Devfile")
    return df, Target(df.project_id, df.root, df.machines["vm"])


def _xml(tmp_path, monkeypatch, kvm: bool = False, extra: str = "") -> tuple[str, Target]:
    monkeypatch.setattr(lv, "hardware_virt_usable", lambda: kvm)
    df, target = _machine(tmp_path, extra)
    box = BoxArtifact(
        "tiny",
        "1",
        str(tmp_path / "disk.qcow2"),
        "sha256:x",
        {"kernel": "/boxes/vmlinuz", "initrd": "/boxes/initrd.img", "cmdline": "console=ttyS0"},
    )
    driver = lv.LibvirtDriver()
    forwards = [
        {"host_ip": "127.0.0.1", "host": 18123, "guest": 80, "protocol": "tcp"},
        {"host_ip": "127.0.0.2", "host": 18124, "guest": 53, "protocol": "udp"},
    ]
    sync = driver._sync_plan(target, box)
    xml = driver.domain_xml(
        target=target,
        box=box,
        name=target.resource_name,
        uri="qemu:///system",
        folder=tmp_path / "store",
        ssh_port=2222,
        ssh_user="root",
        keys_dir=tmp_path / "keys",
        forwards=forwards,
        sync=sync,
    )
    return xml, target


def test_domain_xml_shape(tmp_path, monkeypatch):
    xml, target = _xml(tmp_path, monkeypatch)
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu", "no vmx/svm: software emulation, whatever libvirt claims"
    assert root.findtext("name") == target.resource_name
    assert root.find("memory").text == "300" and root.findtext("vcpu") == "2"
    assert root.find("os/kernel").text == "/boxes/vmlinuz" and root.find("os/cmdline").text == "console=ttyS0"
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev
    assert "hostfwd=tcp:127.0.0.1:18123-:80" in netdev and "hostfwd=udp:127.0.0.2:18124-:53" in netdev
    assert "restrict=on" not in netdev
    assert not [f for f in netdev.split(",") if f.startswith("hostfwd=") and ":0.0.0.0:" in f]
    disk = root.find("devices/disk[@device='disk']/source").get("file")
    assert disk.endswith("store/disk.qcow2"), "the machine writes its overlay, never the box"
    assert root.find("devices/rng").get("model") == "virtio"
    # rsync sync: no shared file system device
    assert root.find("devices/filesystem") is None


def test_kvm_only_when_the_cpu_has_it_and_overridable(tmp_path, monkeypatch):
    xml, _ = _xml(tmp_path, monkeypatch, kvm=True)
    assert ET.fromstring(xml).get("type") == "kvm"
    xml, _ = _xml(tmp_path, monkeypatch, kvm=True, extra='[machines.vm.libvirt]\ndomain_type = "qemu"\n')
    assert ET.fromstring(xml).get("type") == "qemu"


def test_metadata_and_state_on_the_test_hypervisor(tmp_path, monkeypatch):
    xml, target = _xml(tmp_path, monkeypatch)
    monkeypatch.setenv("DEVENV_LIBVIRT_URI", "test:///default")
    driver = lv.LibvirtDriver()
    conn = driver.conn()
    # The test driver does not know QEMU's command-line namespace: check the rest of the XML.
    root = ET.fromstring(xml)
    root.set("type", "test")
    for el in list(root):
        if el.tag.endswith("commandline") or el.tag == "seclabel":
            root.remove(el)
    conn.defineXML(ET.tostring(root, encoding="unicode"))
    handle = f"test:///default#{target.resource_name}"
    try:
        meta = driver.metadata(handle)
        assert meta["project"] == target.project_id and meta["machine"] == "vm"
        assert meta["ssh"]["port"] == "2222"
        assert [str(b) for b in driver.ports(handle)] == [
            "127.0.0.1:2222 -> 22/tcp",
            "127.0.0.1:18123 -> 80/tcp",
            "127.0.0.2:18124 -> 53/udp",
        ]
        assert driver.sync_kind(handle) == "rsync"
        assert driver.state(handle) is MachineState.STOPPED
        assert driver.find(target) == handle, "found by its deterministic name, without .devenv/"
    finally:
        dom = conn.lookupByName(target.resource_name)
        dom.undefine()
    assert driver.state(handle) is MachineState.NOT_CREATED


def test_unavailable_messages(monkeypatch):
    driver = lv.LibvirtDriver()
    err = driver._unavailable(
        "qemu:///system",
        Exception("Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory"),
    )
    assert "libvirtd is not running" in err.message and "libvirtd" in err.hint
    err = driver._unavailable("qemu:///system", Exception("Failed to connect socket: Permission denied"))
    assert "permission denied" in err.message and "libvirt' group" in err.hint


def test_forwards_refuse_a_busy_host_port_unless_auto_correct(tmp_path):
    import socket

    from devenv.errors import PortConflict

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "Devfile").write_text(
            f'[machines.vm]\ndriver = "libvirt"\nbox = "tiny"\nports = [{{ guest = 80, host = {port} }}, {{ guest = 81 }}]\n'
        )
        df = devfile.load(tmp_path / "Devfile")
        driver = lv.LibvirtDriver()
        with pytest.raises(PortConflict) as exc:
            driver._forwards(Target(df.project_id, df.root, df.machines["vm"]))
        assert f"host port 127.0.0.1:{port}/tcp (for guest port 80) is already in use" in exc.value.message
        (tmp_path / "Devfile").write_text(
            f'[machines.vm]\ndriver = "libvirt"\nbox = "tiny"\n'
            f"ports = [{{ guest = 80, host = {port}, auto_correct = true }}, {{ guest = 81 }}]\n"
        )
        df = devfile.load(tmp_path / "Devfile")
        fwd = driver._forwards(Target(df.project_id, df.root, df.machines["vm"]))
        assert fwd[0]["host"] > port and fwd[0]["guest"] == 80
        assert fwd[1]["host"] > 0 and fwd[1]["host_ip"] == "127.0.0.1", "no host port given: a free one is chosen"


class _Conn:
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    def isAlive(self) -> bool:  # noqa: N802 - libvirt's name
        return True

    def getHostname(self) -> str:  # noqa: N802 - libvirt's name
        return self.hostname


def test_libvirt_on_another_machine_is_refused_before_anything_is_made():
    import socket

    from devenv.drivers.libvirt.driver import LibvirtDriver
    from devenv.errors import UnsupportedOperation

    d = LibvirtDriver()
    d._conns["qemu+ssh://root@bighost/system"] = _Conn("bighost")
    with pytest.raises(UnsupportedOperation) as exc:
        d._check_same_host("qemu+ssh://root@bighost/system")
    assert "libvirt on another machine (bighost)" in exc.value.message and "run devenv on bighost" in exc.value.hint
    # The same machine through ssh (as the remote-engine test does) is fine.
    d._conns["qemu+ssh://root@127.0.0.1:2222/system"] = _Conn(socket.gethostname())
    d._check_same_host("qemu+ssh://root@127.0.0.1:2222/system")
