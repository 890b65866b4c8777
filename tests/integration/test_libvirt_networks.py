"""Private networks for libvirt machines on real libvirtd + QEMU: an isolated libvirt network per
project network (its dnsmasq gives each machine its reserved address and answers its names),
a second NIC beside the user-mode one that keeps the 127.0.0.1 forwards.

Traffic stays between the VMs the test made, on the isolated networks devenv made (no route off
the host: libvirt's firewall rules reject anything routed on or off the bridge); the host talks
to the VMs only through their 127.0.0.1 SSH forwards.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.libvirt

TINY_PAIR = """\
[networks.lab]
subnet = "192.168.171.0/24"

[machines.one]
driver = "libvirt"
box = "tiny-vm"
memory = "256MiB"
hostname = "first-host"
networks = [{ name = "lab", ip = "192.168.171.11" }]

[machines.two]
driver = "libvirt"
box = "tiny-vm"
memory = "256MiB"
networks = ["lab"]
"""


def _networks(libvirt_driver, project_id: str) -> list[str]:
    from devenv.drivers.libvirt import networks as nets

    return [
        n.name() for n in libvirt_driver.conn().listAllNetworks(0) if (nets._meta(n) or {}).get("project") == project_id
    ]


def test_two_vms_reach_each_other_by_address_and_name_on_an_isolated_network(vm, tiny_box, libvirt_driver):
    vm.devfile(TINY_PAIR)
    r = vm.run("up", timeout=600)
    assert r.returncode == 0, r.stderr
    st = vm.status()
    assert st["one"]["addresses"] == {"lab": "192.168.171.11"}
    two_ip = st["two"]["addresses"]["lab"]
    assert two_ip.startswith("192.168.171.") and int(two_ip.rsplit(".", 1)[1]) >= 128  # devenv picked it

    # The network is isolated (no <forward>: no route off the host) and carries devenv's metadata.
    [name] = _networks(libvirt_driver, vm.project_id)
    xml = ET.fromstring(libvirt_driver.conn().networkLookupByName(name).XMLDesc(0))
    assert xml.find("forward") is None
    assert {h.get("ip") for h in xml.findall("ip/dhcp/host")} == {"192.168.171.11", two_ip}

    # eth0 stays QEMU's user network (SSH came through its forward); eth1 has the reservation.
    out = vm.run("ssh", "two", "-c", "ip -4 -o addr show dev eth1").stdout
    assert f"inet {two_ip}/24" in out
    assert vm.run("ssh", "two", "-c", "ping -c 1 -W 5 192.168.171.11 >/dev/null && echo ok").stdout == "ok\n"
    # Names: the machine name and the hostname, answered by the network's dnsmasq.
    for name_ in ("one", "first-host"):
        out = vm.run("ssh", "two", "-c", f"nslookup {name_}").stdout
        assert "192.168.171.11" in out, out
    assert two_ip in vm.run("ssh", "one", "-c", "nslookup two").stdout

    # halt + up: the network is started again if it is down (a libvirtd restart leaves it so).
    vm.run("halt", check=True)
    net = libvirt_driver.conn().networkLookupByName(name)
    net.destroy()
    vm.run("up", check=True, timeout=600)
    assert vm.run("ssh", "one", "-c", f"ping -c 1 -W 5 {two_ip} >/dev/null && echo ok").stdout == "ok\n"

    # destroy one machine: the network stays for the other, without its reservation
    vm.run("destroy", "-f", "two", check=True)
    xml = ET.fromstring(libvirt_driver.conn().networkLookupByName(name).XMLDesc(0))
    assert {h.get("ip") for h in xml.findall("ip/dhcp/host")} == {"192.168.171.11"}
    vm.run("destroy", "-f", check=True)
    assert _networks(libvirt_driver, vm.project_id) == []
    assert vm.domains(libvirt_driver) == []
