"""Private networks on the virtualbox driver, against the VBoxManage stand-in (tests/fakes/VBoxManage).

The stand-in keeps host-only interfaces beside its VMs and checks every hostonlyif, list
hostonlyifs and modifyvm --nicN/--hostonlyadapterN/--intnetN/--macaddressN call as VBoxManage
does; these tests look at what it then holds (interfaces, each VM's NICs) and at the calls it
logged, and read the guest's network-config back from the seed ISO.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import textwrap
from pathlib import Path

import pytest

from devenv.contract import Networks, role
from devenv.drivers.virtualbox.driver import VirtualBoxDriver
from devenv.model import devfile
from devenv.model.networks import Attachment, Network
from devenv.plugins import driver_class, driver_names, get_driver
from tests.support import require_module
from tests.unit.test_virtualbox import VBox, make_box, meta, seed_iso, up, use_stand_in

SUBNET = "192.168.57.0/24"  # inside 192.168.56.0/21, what VirtualBox 7 allows without networks.conf
GATEWAY = str(next(ipaddress.ip_network(SUBNET).hosts()))  # the host's address on it, as Vagrant's


@pytest.fixture
def vbox(tmp_path, monkeypatch, proj) -> VBox:
    return use_stand_in(tmp_path, monkeypatch)


def hostonlyifs(vbox: VBox) -> list[dict]:
    return vbox.state().get("hostonlyifs", [])


def user_interface(vbox: VBox, ip: str, mask: str = "255.255.255.0") -> str:
    """A host-only interface made outside devenv (as the VirtualBox GUI makes vboxnet0)."""
    r = vbox.run("hostonlyif", "create")
    assert r.returncode == 0, r.stderr
    name = re.search(r"Interface '(\w+)' was successfully created", r.stdout).group(1)
    r = vbox.run("hostonlyif", "ipconfig", name, "--ip", ip, "--netmask", mask)
    assert r.returncode == 0, r.stderr
    return name


def seed_file(vm: str, name: str) -> str:
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(seed_iso(vm))
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
    iso.close()
    return out.getvalue().decode()


def colon(mac: str) -> str:
    return ":".join(mac[i : i + 2] for i in range(0, 12, 2)).lower()


def vm_names(proj, *machines: str) -> list[str]:
    pid = proj.project().devfile.project_id
    return [f"devenv-{pid}-{m}" for m in machines]


def devfile_text(proj, text: str) -> None:
    proj.devfile('[defaults]\ndriver = "virtualbox"\nbox = "tiny"\n' + textwrap.dedent(text))


def recorded(vbox: VBox, vm: str, network: str) -> dict:
    return next(n for n in meta(vbox, vm)["networks"] if n["name"] == network)


def upper_half(addr: str, subnet: str) -> bool:
    net = ipaddress.ip_network(subnet)
    hosts = net.num_addresses - 2
    return int(net.network_address) + 1 + hosts // 2 <= int(ipaddress.ip_address(addr)) < int(net.broadcast_address)


# -- the two-machine project -----------------------------------------------------------------------
def test_a_fixed_ip_network_and_the_default_network(proj, vbox, tmp_path):
    make_box(tmp_path)
    devfile_text(
        proj,
        f"""
        [networks.internal]
        subnet = "{SUBNET}"
        [machines.web]
        networks = [{{ name = "internal", ip = "192.168.57.11" }}, "default"]
        [machines.db]
        """,
    )
    web_vm, db_vm = vm_names(proj, "web", "db")
    pid = proj.project().devfile.project_id
    theirs = user_interface(vbox, "192.168.56.1")  # VirtualBox's own vboxnet0: not devenv's
    mark = vbox.mark()

    up(proj)

    # One host-only interface made for the network with a subnet, the host on its first address.
    made = [i for i in hostonlyifs(vbox) if i["name"] != theirs]
    assert [(i["ip"], i["mask"]) for i in made] == [(GATEWAY, "255.255.255.0")]
    made = made[0]["name"]
    assert [c for c in vbox.changes(mark) if c[0] == "hostonlyif"] == [
        ["hostonlyif", "create"],
        ["hostonlyif", "ipconfig", made, "--ip", GATEWAY, "--netmask", "255.255.255.0"],
    ]
    # web: NAT, the host-only network, the default network (an internal network of the project).
    web, db = vbox.vm(web_vm), vbox.vm(db_vm)
    assert web["nics"] == {"1": "nat", "2": "hostonly", "3": "intnet"}
    assert web["nic_opts"]["2"]["hostonlyadapter"] == made
    assert db["nics"] == {"1": "nat", "2": "intnet"}
    assert web["nic_opts"]["3"]["intnet"] == db["nic_opts"]["2"]["intnet"] == f"devenv-{pid}-default"

    driver = get_driver("virtualbox")
    nets = role(driver, Networks)
    assert nets is not None
    web_addr, db_addr = nets.addresses(web_vm), nets.addresses(db_vm)
    assert web_addr["internal"] == "192.168.57.11"
    # The default network has one subnet for both machines, a private /24 no host-only interface
    # overlaps, and each machine an address of its own in its upper half.
    subnet = recorded(vbox, web_vm, "default")["subnet"]
    assert recorded(vbox, db_vm, "default")["subnet"] == subnet
    net = ipaddress.ip_network(subnet)
    assert net.prefixlen == 24 and net.is_private
    assert not any(
        net.overlaps(ipaddress.ip_network(f"{i['ip']}/{i['mask']}", strict=False)) for i in hostonlyifs(vbox)
    )
    assert web_addr["default"] != db_addr["default"]
    assert upper_half(web_addr["default"], subnet) and upper_half(db_addr["default"], subnet)
    assert set(db_addr) == {"default"}

    st = proj.status()
    assert st["web"]["addresses"] == web_addr and st["db"]["addresses"] == db_addr

    # The guest is configured from its seed: each NIC by the MAC VirtualBox has for it.
    yaml = require_module("yaml", "pip install pyyaml (ansible brings it)")
    cfg = yaml.safe_load(seed_file(web_vm, "network-config"))
    by_mac = {e["match"]["macaddress"]: e for e in cfg["ethernets"].values()}
    assert by_mac[colon(web["nic_opts"]["1"]["macaddress"])] == {
        "match": {"macaddress": colon(web["nic_opts"]["1"]["macaddress"])},
        "dhcp4": True,
    }
    assert by_mac[colon(web["nic_opts"]["2"]["macaddress"])]["addresses"] == ["192.168.57.11/24"]
    assert by_mac[colon(web["nic_opts"]["3"]["macaddress"])]["addresses"] == [f"{web_addr['default']}/24"]
    assert cfg["version"] == 2 and len(by_mac) == 3

    # destroy: the VMs take their NICs along; the interface devenv made goes, VirtualBox's stays.
    mark = vbox.mark()
    r = proj.cli("destroy", "-f")
    assert r.exit_code == 0, r.output
    assert vbox.vm(web_vm) is None and vbox.vm(db_vm) is None
    assert [i["name"] for i in hostonlyifs(vbox)] == [theirs]
    assert [c for c in vbox.changes(mark) if c[0] == "hostonlyif"] == [["hostonlyif", "remove", made]]


def test_an_address_without_ip_comes_from_the_upper_half_and_stays(proj, vbox, tmp_path):
    make_box(tmp_path)
    text = f"""
        [networks.internal]
        subnet = "{SUBNET}"
        [machines.web]
        networks = [{{ name = "internal", ip = "192.168.57.11" }}]
        [machines.db]
        networks = ["internal"]
        """
    devfile_text(proj, text)
    web_vm, db_vm = vm_names(proj, "web", "db")
    up(proj)
    addr = get_driver("virtualbox").addresses(db_vm)["internal"]
    assert upper_half(addr, SUBNET) and addr != "192.168.57.11"
    # Both on the one interface devenv made for the subnet.
    assert len(hostonlyifs(vbox)) == 1
    assert vbox.vm(web_vm)["nic_opts"]["2"]["hostonlyadapter"] == vbox.vm(db_vm)["nic_opts"]["2"]["hostonlyadapter"]

    devfile_text(proj, text.replace('networks = ["internal"]', 'networks = ["internal"]\ncpus = 2'))
    r = proj.cli("reload", "db")
    assert r.exit_code == 0, r.output
    assert vbox.vm(db_vm)["cpus"] == 2
    assert get_driver("virtualbox").addresses(db_vm) == {"internal": addr}, "a reload keeps the address"

    # A fixed address another machine already holds (devenv gave it that one) is refused.
    devfile_text(proj, text.replace('ip = "192.168.57.11"', f'ip = "{addr}"'))
    r = proj.cli("reload", "web")
    assert r.exit_code == 4, r.output
    assert f"{addr} on network 'internal' is already machine 'db's (devenv assigned it there)" in r.output
    assert "give machine 'db' another fixed ip" in r.output
    assert get_driver("virtualbox").addresses(web_vm) == {"internal": "192.168.57.11"}, "web is left as it was"


def test_assigned_addresses_skip_what_other_machines_hold():
    net = Network("internal", SUBNET)
    first = VirtualBoxDriver._address("db", Attachment(net), SUBNET, [], None)
    assert upper_half(first, SUBNET)
    peers = [{"name": "internal", "ip": first, "machine": "web"}]
    second = VirtualBoxDriver._address("db", Attachment(net), SUBNET, peers, None)
    assert second != first and upper_half(second, SUBNET)
    # A /29 has three addresses in its upper half; with all of them held, the error says what to do.
    small = "192.168.57.0/29"
    held = [{"name": "internal", "ip": f"192.168.57.{i}", "machine": f"m{i}"} for i in (4, 5, 6)]
    with pytest.raises(Exception, match="no free address left") as exc:
        VirtualBoxDriver._address("db", Attachment(Network("internal", small)), small, held, None)
    assert "fixed ip" in exc.value.hint


def test_an_internal_network_is_a_virtualbox_internal_network(proj, vbox, tmp_path):
    make_box(tmp_path)
    devfile_text(
        proj,
        """
        [networks.back]
        subnet = "10.20.30.0/24"
        internal = true
        [machines.web]
        networks = [{ name = "back", ip = "10.20.30.5" }]
        """,
    )
    (web_vm,) = vm_names(proj, "web")
    pid = proj.project().devfile.project_id
    up(proj)
    web = vbox.vm(web_vm)
    assert web["nics"] == {"1": "nat", "2": "intnet"} and web["nic_opts"]["2"]["intnet"] == f"devenv-{pid}-back"
    assert hostonlyifs(vbox) == [], "no host side: no host-only interface"
    assert [c for c in vbox.changes() if c[0] == "hostonlyif"] == []
    assert get_driver("virtualbox").addresses(web_vm) == {"back": "10.20.30.5"}


def test_a_network_left_at_reload_goes_with_its_last_machine(proj, vbox, tmp_path):
    make_box(tmp_path)
    text = f"""
        [networks.internal]
        subnet = "{SUBNET}"
        [machines.web]
        networks = [{{ name = "internal", ip = "192.168.57.11" }}]
        [machines.db]
        networks = [{{ name = "internal", ip = "192.168.57.12" }}]
        """
    devfile_text(proj, text)
    web_vm, db_vm = vm_names(proj, "web", "db")
    up(proj)
    (made,) = [i["name"] for i in hostonlyifs(vbox)]

    devfile_text(proj, text.replace('networks = [{ name = "internal", ip = "192.168.57.12" }]', "networks = []"))
    r = proj.cli("reload", "db")
    assert r.exit_code == 0, r.output
    assert vbox.vm(db_vm)["nics"]["2"] == "none" and "networks" not in meta(vbox, db_vm)
    assert [i["name"] for i in hostonlyifs(vbox)] == [made], "web is still on it"

    mark = vbox.mark()
    r = proj.cli("destroy", "-f", "web")
    assert r.exit_code == 0, r.output
    assert hostonlyifs(vbox) == []
    assert [c for c in vbox.changes(mark) if c[0] == "hostonlyif"] == [["hostonlyif", "remove", made]]


def test_an_existing_interface_on_the_subnet_is_used_and_left_alone(proj, vbox, tmp_path):
    make_box(tmp_path)
    theirs = user_interface(vbox, GATEWAY)
    devfile_text(
        proj,
        f"""
        [networks.internal]
        subnet = "{SUBNET}"
        [machines.web]
        networks = [{{ name = "internal", ip = "192.168.57.11" }}]
        """,
    )
    (web_vm,) = vm_names(proj, "web")
    mark = vbox.mark()
    up(proj)
    assert vbox.vm(web_vm)["nic_opts"]["2"]["hostonlyadapter"] == theirs
    assert [c for c in vbox.changes(mark) if c[0] == "hostonlyif"] == [], "nothing made: it is there"
    r = proj.cli("destroy", "-f")
    assert r.exit_code == 0, r.output
    assert [(i["name"], i["ip"]) for i in hostonlyifs(vbox)] == [(theirs, GATEWAY)], "never removed: not devenv's"


def test_a_removed_interface_is_made_again_when_the_machine_starts(proj, vbox, tmp_path):
    make_box(tmp_path)
    devfile_text(
        proj,
        f"""
        [networks.internal]
        subnet = "{SUBNET}"
        [machines.web]
        networks = [{{ name = "internal", ip = "192.168.57.11" }}]
        """,
    )
    (web_vm,) = vm_names(proj, "web")
    up(proj)
    assert proj.cli("halt").exit_code == 0
    (made,) = [i["name"] for i in hostonlyifs(vbox)]
    assert vbox.run("hostonlyif", "remove", made).returncode == 0  # by hand, or a VirtualBox reinstall

    up(proj)
    (again,) = hostonlyifs(vbox)
    assert (again["ip"], again["mask"]) == (GATEWAY, "255.255.255.0")
    assert vbox.vm(web_vm)["nic_opts"]["2"]["hostonlyadapter"] == again["name"]
    assert vbox.vm(web_vm)["state"] == "running"
    assert recorded(vbox, web_vm, "internal")["adapter"] == again["name"]


# -- errors ----------------------------------------------------------------------------------------
def test_a_subnet_virtualbox_does_not_allow_says_how_to_allow_it(proj, vbox, tmp_path, monkeypatch):
    make_box(tmp_path)
    devfile_text(
        proj,
        """
        [networks.lab]
        subnet = "10.10.0.0/24"
        [machines.web]
        networks = [{ name = "lab", ip = "10.10.0.5" }]
        """,
    )
    (web_vm,) = vm_names(proj, "web")
    r = proj.cli("up")
    assert r.exit_code == 3, r.output
    assert "/etc/vbox/networks.conf" in r.output and "192.168.56.0/21" in r.output
    assert "* 10.10.0.0/24" in r.output, "the hint names the line to add"
    assert hostonlyifs(vbox) == [], "the interface made for it is removed again"
    assert vbox.vm(web_vm) is None, "no half-made VM"

    monkeypatch.setenv("FAKE_VBOX_NETWORKS_CONF", "* 10.0.0.0/8 192.168.0.0/16\n")
    up(proj)
    assert [(i["ip"], i["mask"]) for i in hostonlyifs(vbox)] == [("10.10.0.1", "255.255.255.0")]


@pytest.mark.parametrize(
    ("theirs", "subnet", "why"),
    [
        (("192.168.56.1", "255.255.255.0"), "192.168.56.0/21", "192.168.56.1/24"),  # the same address, another mask
        (("192.168.57.5", "255.255.255.0"), SUBNET, "192.168.57.5/24"),  # the subnet, another host address
    ],
)
def test_a_subnet_colliding_with_an_interface_devenv_did_not_make_is_refused(proj, vbox, tmp_path, theirs, subnet, why):
    make_box(tmp_path)
    name = user_interface(vbox, *theirs)
    ip = str(ipaddress.ip_network(subnet).network_address + 10)
    devfile_text(
        proj,
        f"""
        [networks.lab]
        subnet = "{subnet}"
        [machines.web]
        networks = [{{ name = "lab", ip = "{ip}" }}]
        """,
    )
    mark = vbox.mark()
    r = proj.cli("up")
    assert r.exit_code == 4, r.output
    assert f"collides with the host-only interface {name} ({why}), which devenv did not make" in r.output
    assert "VBoxManage list hostonlyifs" in r.output
    assert vbox.changes(mark) == [], "found before anything is made"
    assert [(i["ip"], i["mask"]) for i in hostonlyifs(vbox)] == [theirs]


def test_virtualbox_failing_to_make_an_interface_names_the_module(proj, vbox, tmp_path, monkeypatch):
    make_box(tmp_path)
    devfile_text(
        proj,
        f"""
        [networks.internal]
        subnet = "{SUBNET}"
        [machines.web]
        networks = [{{ name = "internal", ip = "192.168.57.11" }}]
        """,
    )
    (web_vm,) = vm_names(proj, "web")
    monkeypatch.setenv(
        "FAKE_VBOX_FAIL",
        "hostonlyif/create:Failed to create the host-only adapter\\nVBoxNetAdpCtl: Error while adding new "
        "interface: failed to open /dev/vboxnetctl: No such file or directory",
    )
    r = proj.cli("up")
    assert r.exit_code == 3, r.output
    assert "cannot make a host-only interface for network 'internal'" in r.output
    assert "Failed to create the host-only adapter" in r.output and "vboxnetadp" in r.output
    assert hostonlyifs(vbox) == [] and vbox.vm(web_vm) is None


def test_validate_limits_a_machine_to_seven_networks(proj, vbox, tmp_path):
    nets = "".join(f"[networks.n{i}]\ninternal = true\n" for i in range(8))
    devfile_text(proj, nets + "[machines.web]\nnetworks = [" + ", ".join(f'"n{i}"' for i in range(8)) + "]\n")
    r = proj.cli("validate")
    assert r.exit_code != 0
    assert "a VirtualBox machine joins at most 7 private networks" in r.output


def test_the_refusal_names_the_drivers_that_make_networks(tmp_path):
    path = tmp_path / "Devfile"
    path.write_text(
        '[networks.lab]\nsubnet = "192.168.57.0/24"\n'
        '[machines.v]\ndriver = "vagrant"\nnetworks = ["lab"]\n[machines.v.vagrant]\ndir = "vm"\n'
    )
    _, found = devfile.check_text(path.read_text(), path)
    makers = [n for n in driver_names() if getattr(driver_class(n).features, "networks", False)]
    assert "virtualbox" in makers and "docker" in makers and "vagrant" not in makers
    assert [p.message for p in found if p.key == "machines.v.networks"] == [
        f"the vagrant driver does not make private networks yet (drivers that do: {', '.join(makers)})"
    ]


# -- the stand-in ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["hostonlyif"], 2, "Not enough parameters"),
        (["hostonlyif", "frob"], 2, "Invalid parameter 'frob'"),
        (["hostonlyif", "create", "vboxnet0"], 2, "Invalid parameter 'vboxnet0'"),
        (["hostonlyif", "create", "--name", "x"], 2, "Unknown option: --name"),
        (["hostonlyif", "remove"], 2, "Missing the interface name"),
        (["hostonlyif", "ipconfig", "vboxnet0"], 2, "Either --dhcp, --ip or --ipv6 must be given"),
        (["hostonlyif", "ipconfig", "vboxnet0", "--ip", "192.168.56.1", "--dhcp"], 2, "mutually exclusive"),
        (["hostonlyif", "ipconfig", "vboxnet0", "--netmask", "255.255.255.0"], 2, "--netmask needs --ip"),
        (["hostonlyif", "ipconfig", "vboxnet0", "--ip"], 2, "Missing the value of option '--ip'"),
        (["hostonlyif", "ipconfig", "vboxnet0", "--ipaddr", "1.2.3.4"], 2, "Unknown option: --ipaddr"),
        (["hostonlyif", "remove", "vboxnet7"], 1, "The host network interface named 'vboxnet7' could not be found"),
        (["list", "hostonlyif"], 2, "list hostonlyif: not implemented"),
        (["modifyvm", "vm", "--hostonlyadapter9", "vboxnet0"], 2, "Invalid index in option '--hostonlyadapter9'"),
        (["modifyvm", "vm", "--hostonly-adapter2", "vboxnet0"], 2, "Unknown option: --hostonly-adapter2"),
        (["modifyvm", "vm", "--nic2", "hostonlynetwork"], 2, "Invalid --nic2 argument 'hostonlynetwork'"),
        (["modifyvm", "vm", "--intnet2"], 2, "Missing the value of option '--intnet2'"),
    ],
)
def test_the_stand_in_rejects_what_vboxmanage_rejects(vbox, args, code, message):
    r = vbox.run(*args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert r.stderr.startswith("VBoxManage: error: ") and message in r.stderr


def test_the_stand_in_models_host_only_interfaces_and_nics(proj, vbox, tmp_path, monkeypatch):
    make_box(tmp_path)
    proj.devfile('[machines.web]\ndriver = "virtualbox"\nbox = "tiny"\n')
    up(proj)
    (vm,) = vm_names(proj, "web")
    assert proj.cli("halt").exit_code == 0

    # create: the lowest free vboxnetN with VirtualBox's default address; list shows it.
    r = vbox.run("hostonlyif", "create")
    assert r.returncode == 0 and "Interface 'vboxnet0' was successfully created" in r.stdout
    listing = vbox.run("list", "hostonlyifs").stdout
    assert "Name:            vboxnet0\n" in listing and "IPAddress:       192.168.56.1\n" in listing
    # ipconfig: networks.conf decides (default 192.168.56.0/21); a bad address or mask is refused.
    r = vbox.run("hostonlyif", "ipconfig", "vboxnet0", "--ip", "10.1.1.1")
    assert r.returncode == 1 and "E_ACCESSDENIED" in r.stderr
    r = vbox.run("hostonlyif", "ipconfig", "vboxnet0", "--ip", "192.168.58.1", "--netmask", "255.0.255.0")
    assert r.returncode == 1 and "E_INVALIDARG" in r.stderr
    r = vbox.run("hostonlyif", "ipconfig", "vboxnet0", "--ip", "10.1.1.1", FAKE_VBOX_NETWORKS_CONF="* 10.0.0.0/8")
    assert r.returncode == 0, r.stderr
    assert [(i["ip"], i["mask"]) for i in hostonlyifs(vbox)] == [("10.1.1.1", "255.255.255.0")]

    # NICs: a MAC must be 12 hex digits of a unicast address; an internal network needs a name.
    assert vbox.run("modifyvm", vm, "--macaddress2", "010000000001").returncode == 1
    assert vbox.run("modifyvm", vm, "--macaddress2", "08002700001").returncode == 1
    r = vbox.run("modifyvm", vm, "--nic3", "intnet", "--intnet3", "")
    assert r.returncode == 1 and "Empty or null internal network name" in r.stderr
    r = vbox.run(
        "modifyvm", vm, "--nic2", "hostonly", "--hostonlyadapter2", "vboxnet5", "--macaddress2", "0800270000AB"
    )
    assert r.returncode == 0, r.stderr
    info = vbox.run("showvminfo", vm, "--machinereadable").stdout
    assert 'nic2="hostonly"' in info and 'hostonlyadapter2="vboxnet5"' in info and 'macaddress2="0800270000AB"' in info
    assert re.search(r'^macaddress1="080027[0-9A-F]{6}"$', info, re.M)
    # startvm: a host-only NIC on an interface that does not exist is refused.
    r = vbox.run("startvm", vm, "--type", "headless")
    assert r.returncode == 1 and "Nonexistent host networking interface, name 'vboxnet5'" in r.stderr
    assert vbox.run("modifyvm", vm, "--hostonlyadapter2", "vboxnet0").returncode == 0
    assert vbox.run("startvm", vm, "--type", "headless", FAKE_VBOX_HOST_PORTS="unchecked").returncode == 0
    # remove: gone from the list.
    assert vbox.run("hostonlyif", "remove", "vboxnet0").returncode == 0
    assert vbox.run("list", "hostonlyifs").stdout == ""


def test_clones_get_mac_addresses_of_their_own(proj, vbox, tmp_path):
    make_box(tmp_path)
    devfile_text(proj, "[machines.a]\n[machines.b]\n")
    up(proj)
    a, b = (vbox.vm(v) for v in vm_names(proj, "a", "b"))
    base = vbox.vm("devenv-base-tiny-1")
    macs = {vm["nic_opts"]["1"]["macaddress"] for vm in (a, b, base)}
    assert len(macs) == 3, "clonevm makes new MAC addresses (without keepallmacs)"


def test_the_hostonly_record_lives_in_the_driver_storage(proj, vbox, tmp_path):
    make_box(tmp_path)
    devfile_text(
        proj,
        f"""
        [networks.internal]
        subnet = "{SUBNET}"
        [machines.web]
        networks = [{{ name = "internal", ip = "192.168.57.11" }}]
        """,
    )
    up(proj)
    record = Path(os.environ["DEVENV_HOME"]) / "virtualbox" / "hostonlyifs.json"
    (made,) = hostonlyifs(vbox)
    assert json.loads(record.read_text()) == {made["name"]: {"ip": made["ip"], "mask": made["mask"]}}
    # Reconfigured by someone since: no longer devenv's, so destroy leaves it.
    assert vbox.run("hostonlyif", "ipconfig", made["name"], "--ip", "192.168.58.1").returncode == 0
    assert proj.cli("destroy", "-f").exit_code == 0
    assert [i["name"] for i in hostonlyifs(vbox)] == [made["name"]]
    assert not record.exists()


def test_sweep_removes_an_interface_devenv_made_that_no_vm_is_on(proj, vbox, tmp_path):
    make_box(tmp_path)
    devfile_text(
        proj,
        f"""
        [networks.internal]
        subnet = "{SUBNET}"
        [machines.web]
        networks = [{{ name = "internal", ip = "192.168.57.11" }}]
        """,
    )
    (web_vm,) = vm_names(proj, "web")
    up(proj)
    (made,) = [i["name"] for i in hostonlyifs(vbox)]
    # The VM goes behind devenv's back (as a crashed `up` leaves an interface on no VM).
    assert vbox.run("controlvm", web_vm, "poweroff").returncode == 0
    assert vbox.run("unregistervm", web_vm, "--delete").returncode == 0
    assert get_driver("virtualbox").sweep(proj.project().devfile.project_id, proj.root) == [made]
    assert hostonlyifs(vbox) == []
