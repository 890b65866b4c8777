"""libvirt private networks (devenv/drivers/libvirt/networks.py) against libvirt's built-in test
hypervisor (test:///default): the network XML, reservations, names, conflicts and removal. The
real daemon, dnsmasq and guests are in tests/integration/test_libvirt_networks.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from devenv.contract import BoxArtifact, Target
from devenv.drivers.libvirt import driver as lv
from devenv.drivers.libvirt import networks as nets
from devenv.drivers.vm import seed
from devenv.errors import MachineStateError, UnsupportedOperation
from devenv.model import devfile

DEVFILE = """\
[networks.lab]
subnet = "10.213.7.0/24"

[machines.web]
driver = "libvirt"
box = "tiny"
hostname = "web-host"
networks = [{ name = "lab", ip = "10.213.7.11" }]

[machines.proxy]
driver = "libvirt"
box = "tiny"
networks = ["lab"]
"""


@pytest.fixture
def conn():
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    c = libvirt.open("test:///default")  # a fresh in-memory hypervisor per connection
    yield c
    c.close()


def _targets(tmp_path: Path, text: str = DEVFILE) -> dict[str, Target]:
    (tmp_path / "Devfile").write_text(text)
    df = devfile.load(tmp_path / "Devfile")
    return {n: Target(df.project_id, df.root, m) for n, m in df.machines.items()}


def _net(conn, t: Target):
    return ET.fromstring(conn.networkLookupByName(nets.network_name(t.project_id, "lab")).XMLDesc(0))


def test_a_network_is_isolated_and_carries_reservations_and_names(conn, tmp_path):
    t = _targets(tmp_path)
    web = nets.ensure(conn, t["web"], t["web"].machine.networks[0], "qemu:///system")
    proxy = nets.ensure(conn, t["proxy"], t["proxy"].machine.networks[0], "qemu:///system")
    assert (web.ip, web.gateway, web.prefix) == ("10.213.7.11", "10.213.7.1", 24)
    # devenv picks the proxy's address in the upper half (fixed ones are usually low)
    assert int(proxy.ip.rsplit(".", 1)[1]) >= 128 and proxy.ip.startswith("10.213.7.")

    root = _net(conn, t["web"])
    assert root.find("forward") is None  # isolated: libvirt routes nothing on or off the bridge
    assert len(root.find("bridge").get("name")) <= 15
    hosts = {h.get("name"): (h.get("mac"), h.get("ip")) for h in root.findall("ip/dhcp/host")}
    assert hosts == {"web": (web.mac, web.ip), "proxy": (proxy.mac, proxy.ip)}
    names = {h.get("ip"): [n.text for n in h.findall("hostname")] for h in root.findall("dns/host")}
    assert names == {web.ip: ["web", "web-host"], proxy.ip: ["proxy"]}

    # again (reload, start): the same MAC, the same address, nothing doubled
    again = nets.ensure(conn, t["web"], t["web"].machine.networks[0], "qemu:///system")
    assert again == web
    assert len(_net(conn, t["web"]).findall("ip/dhcp/host")) == 2


def test_a_taken_address_is_a_clear_error(conn, tmp_path):
    t = _targets(tmp_path)
    nets.ensure(conn, t["web"], t["web"].machine.networks[0], "qemu:///system")
    other = _targets(
        tmp_path, DEVFILE.replace('networks = ["lab"]', 'networks = [{ name = "lab", ip = "10.213.7.12" }]')
    )
    # a machine of the same project takes .12 first; then one that asks for .12 is refused
    nets.ensure(conn, other["proxy"], other["proxy"].machine.networks[0], "qemu:///system")
    clash = _targets(tmp_path, DEVFILE.replace("10.213.7.11", "10.213.7.12"))
    with pytest.raises(MachineStateError, match=r"10\.213\.7\.12 on network 'lab' is already machine 'proxy's"):
        nets.ensure(conn, clash["web"], clash["web"].machine.networks[0], "qemu:///system")


def test_a_changed_subnet_and_a_foreign_network_are_refused(conn, tmp_path):
    t = _targets(tmp_path)
    nets.ensure(conn, t["web"], t["web"].machine.networks[0], "qemu:///system")
    moved = _targets(tmp_path, DEVFILE.replace("10.213.7.", "10.213.8."))
    with pytest.raises(MachineStateError, match="exists with subnet 10.213.7.0/24, not 10.213.8.0/24"):
        nets.ensure(conn, moved["web"], moved["web"].machine.networks[0], "qemu:///system")

    # a network of the same name that devenv did not make (no metadata) is never used
    nets.remove(conn.networkLookupByName(nets.network_name(t["web"].project_id, "lab")))
    name = nets.network_name(t["web"].project_id, "lab")
    conn.networkDefineXML(f"<network><name>{name}</name><ip address='10.9.9.1' netmask='255.255.255.0'/></network>")
    with pytest.raises(MachineStateError, match="is not devenv's network 'lab'"):
        nets.ensure(conn, t["web"], t["web"].machine.networks[0], "qemu:///system")


def test_release_takes_the_reservation_and_the_last_machine_takes_the_network(conn, tmp_path):
    t = _targets(tmp_path)
    for m in ("web", "proxy"):
        nets.ensure(conn, t[m], t[m].machine.networks[0], "qemu:///system")
    pid, root = t["web"].project_id, str(t["web"].project_root)
    assert nets.release(conn, pid, root, t["proxy"].resource_name) == []
    xml = _net(conn, t["web"])
    assert [h.get("name") for h in xml.findall("ip/dhcp/host")] == ["web"]
    assert [h.get("ip") for h in xml.findall("dns/host")] == ["10.213.7.11"]
    # another folder's project with the same id never loses its networks
    assert nets.release(conn, pid, "/elsewhere", t["web"].resource_name) == []
    assert nets.release(conn, pid, root, t["web"].resource_name) == [nets.network_name(pid, "lab")]
    assert nets.lookup(conn, nets.network_name(pid, "lab")) is None


def test_a_session_libvirt_cannot_make_networks_and_says_so_before_anything(tmp_path):
    t = _targets(
        tmp_path, DEVFILE.replace('driver = "libvirt"', 'driver = "libvirt"\nlibvirt = { uri = "qemu:///session" }')
    )
    with pytest.raises(UnsupportedOperation, match="session libvirt .* cannot make networks") as exc:
        lv.LibvirtDriver().preflight(t["web"])
    assert "qemu:///system" in exc.value.hint


def test_the_domain_gets_a_second_nic_after_the_user_mode_one_and_the_seed_its_resolvers(conn, tmp_path, monkeypatch):
    t = _targets(tmp_path)
    joined = [nets.ensure(conn, t["web"], t["web"].machine.networks[0], "qemu:///system")]
    monkeypatch.setattr(lv, "hardware_virt_usable", lambda: False)
    box = BoxArtifact("tiny", "1", str(tmp_path / "disk.qcow2"), "sha256:x", {"kernel": "/k", "cmdline": ""})
    xml = lv.LibvirtDriver().domain_xml(
        target=t["web"],
        box=box,
        name=t["web"].resource_name,
        uri="qemu:///system",
        folder=tmp_path,
        ssh_port=2222,
        ssh_user="root",
        keys_dir=tmp_path,
        forwards=[],
        sync=[],
        joined=joined,
    )
    root = ET.fromstring(xml)
    [nic] = root.findall("devices/interface")
    assert nic.get("type") == "network" and nic.find("source").get("network") == joined[0].network
    assert nic.find("mac").get("address") == joined[0].mac
    assert int(nic.find("address").get("slot"), 16) > 0x10  # user-mode NIC (0x10) stays eth0
    # the domain defines on libvirt (the test hypervisor checks the XML against its schema)
    conn.defineXML(xml)
    meta = root.find("metadata/{https://devenv.invalid/xmlns/libvirt/1}machine")
    [net] = meta.findall("{https://devenv.invalid/xmlns/libvirt/1}net")
    assert (net.get("name"), net.get("ip")) == ("lab", "10.213.7.11")

    ud = seed.user_data(
        hostname="web-host",
        authorized_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x",
        host_key_private="-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        host_key_public="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl y",
        nameservers=nets.nameservers(joined),
    )
    assert 'nameservers: ["10.213.7.1", "10.0.2.3"]' in ud
    with pytest.raises(ValueError):
        seed.user_data(
            hostname="h",
            authorized_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x",
            host_key_private="-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            host_key_public="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl y",
            nameservers=["1.2.3.4\nruncmd: [evil]"],
        )
