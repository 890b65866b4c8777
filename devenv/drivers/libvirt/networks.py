"""Private networks for libvirt machines: one isolated libvirt network per project network.

An isolated libvirt network (no <forward>) is a host bridge with dnsmasq on it and firewall rules
that drop every packet routed on or off it: machines reach each other and the host's bridge
address (DHCP and DNS), nothing else. Each machine gets a second NIC on it (the first stays QEMU
user networking, which keeps the 127.0.0.1 forwards and the way out to the package mirror):

- a DHCP reservation per machine (its MAC is derived from the machine and the network, so it is
  the same on every define) for its fixed address, or for one devenv picks in the upper half of
  the subnet (fixed addresses written in Devfiles are usually low: .10, .11 ...);
- a DNS entry per machine for its machine name and hostname, answered by the network's dnsmasq,
  which the machine's seed puts first in its resolv.conf (dnsmasq answers REFUSED for names it
  does not know on an isolated network, and the resolver then asks the next server).

The network carries devenv metadata (project, Devfile name, real root), so it is found, checked
and removed without .devenv/: with the project's last machine on it, and by sweep.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, NamedTuple
from xml.sax.saxutils import quoteattr

from devenv.contract import Target
from devenv.errors import MachineStateError, UnsupportedOperation
from devenv.model.networks import Attachment

NS = "https://devenv.invalid/xmlns/libvirt/1"  # the driver's metadata namespace
USER_NET_DNS = "10.0.2.3"  # QEMU user networking's resolver: names off the host, after the project's
FIRST_SLOT = 0x11  # PCI slots for project NICs: after the user-mode NIC (0x10), so it stays eth0

# `up` creates and starts a project's machines in threads of one process (the project lock keeps
# other processes out): one network's define, start and reservations are made one at a time.
_LOCK = threading.RLock()


def _serialised(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _LOCK:
            return fn(*args, **kwargs)

    return wrapper


class Joined(NamedTuple):
    """One project network a machine is on, as its domain XML and seed need it."""

    name: str  # the Devfile's network name
    network: str  # libvirt's network name
    mac: str
    ip: str
    gateway: str  # the host's address on the bridge: DHCP and DNS
    prefix: int


def network_name(project_id: str, name: str) -> str:
    return f"devenv-{project_id}-{name}"


def bridge_name(network: str) -> str:
    # Linux interface names have at most 15 characters: a digest of the network's name.
    return "dv" + hashlib.sha256(network.encode()).hexdigest()[:11]


def mac_for(resource_name: str, name: str) -> str:
    """A stable MAC in QEMU's locally administered range: the same machine gets the same lease."""
    h = hashlib.sha256(f"{resource_name}/{name}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


def _lib() -> Any:
    import libvirt

    return libvirt


def _meta(net: Any) -> dict[str, str] | None:
    lib = _lib()
    try:
        raw = net.metadata(lib.VIR_NETWORK_METADATA_ELEMENT, NS, 0)
    except (lib.libvirtError, AttributeError):
        # libvirt < 9.7 has no virNetworkGetMetadata: the XML carries the element anyway.
        root = ET.fromstring(net.XMLDesc(0)).find(f"metadata/{{{NS}}}network")
        return dict(root.attrib) if root is not None else None
    return dict(ET.fromstring(raw).attrib)


def lookup(conn: Any, name: str) -> Any | None:
    lib = _lib()
    try:
        return conn.networkLookupByName(name)
    except lib.libvirtError as exc:
        if exc.get_error_code() == lib.VIR_ERR_NO_NETWORK:
            return None
        raise


def host_routes() -> list[ipaddress.IPv4Network]:
    """The IPv4 subnets this host already routes (its interfaces, Docker's bridges, VPNs)."""
    out = []
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) < 8 or f[1] == "00000000":
            continue  # the default route says nothing about a private subnet
        dest = ipaddress.IPv4Address(int(f[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(f[7], 16).to_bytes(4, "little"))
        try:
            out.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
        except ValueError:
            continue
    return out


def _subnet_of(xml: str) -> ipaddress.IPv4Network | None:
    ip = ET.fromstring(xml).find("ip")
    if ip is None or ip.get("address") is None:
        return None
    mask = ip.get("netmask") or ip.get("prefix") or "24"
    return ipaddress.IPv4Network(f"{ip.get('address')}/{mask}", strict=False)


def pick_subnet(conn: Any, network: str) -> ipaddress.IPv4Network:
    """A free /24 for a network the Devfile gives no subnet: the same one for the same project
    network while it is free, never one the host routes or another libvirt network uses."""
    taken = host_routes()
    for net in conn.listAllNetworks(0):
        s = _subnet_of(net.XMLDesc(0))
        if s is not None:
            taken.append(s)
    start = int(hashlib.sha256(network.encode()).hexdigest(), 16) % 100
    for i in range(100):
        cand = ipaddress.IPv4Network(f"192.168.{100 + (start + i) % 100}.0/24")
        if not any(cand.overlaps(t) for t in taken):
            return cand
    raise MachineStateError(
        "no free /24 in 192.168.100.0-192.168.199.0 for a private network",
        hint='give the network a subnet in the Devfile: [networks.NAME] subnet = "10.77.0.0/24"',
    )


def network_xml(target: Target, att: Attachment, network: str, subnet: ipaddress.IPv4Network) -> str:
    q = quoteattr
    hosts = list(subnet.hosts())
    gateway = hosts[0]
    # The dynamic range is for guests that ask for a lease the reservations do not know (a box
    # whose MAC changed); machines always get their reserved address.
    half = hosts[len(hosts) // 2 :]
    return "\n".join(
        [
            "<network>",
            f"  <name>{network}</name>",
            "  <metadata>",
            f"    <devenv:network xmlns:devenv={q(NS)} project={q(target.project_id)} name={q(att.name)} "
            f"root={q(str(target.project_root))}/>",
            "  </metadata>",
            f"  <bridge name={q(bridge_name(network))} stp='off'/>",
            f"  <ip address='{gateway}' netmask='{subnet.netmask}'>",
            f"    <dhcp><range start='{half[0]}' end='{half[-1]}'/></dhcp>",
            "  </ip>",
            "</network>",
        ]
    )


def _dhcp_hosts(xml: str) -> list[dict[str, str]]:
    return [dict(h.attrib) for h in ET.fromstring(xml).findall("ip/dhcp/host")]


def _update(net: Any, section: int, command: int, xml: str) -> None:
    lib = _lib()
    flags = lib.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    if net.isActive():
        flags |= lib.VIR_NETWORK_UPDATE_AFFECT_LIVE
    net.update(command, section, -1, xml, flags)


def _owned(net: Any, target: Target) -> bool:
    meta = _meta(net) or {}
    return meta.get("project") == target.project_id and meta.get("root") in (None, str(target.project_root))


@_serialised
def ensure(conn: Any, target: Target, att: Attachment, uri: str) -> Joined:
    """The project network ``att`` names, defined and started, with this machine's DHCP
    reservation and DNS names on it; returns where the machine sits."""
    lib = _lib()
    if uri.split("?")[0].endswith("/session"):
        raise UnsupportedOperation(
            f"machine '{target.name}' joins network '{att.name}', and a session libvirt ({uri}) cannot make "
            "networks: a bridge and its DHCP/DNS need the system daemon",
            hint="use qemu:///system for this machine (as root or in the 'libvirt' group), or the docker driver",
        )
    name = network_name(target.project_id, att.name)
    net = lookup(conn, name)
    if net is not None and not _owned(net, target):
        raise MachineStateError(
            f"a libvirt network named {name} exists but is not devenv's network '{att.name}' of this project",
            hint=f"remove it (`virsh net-destroy {name}; virsh net-undefine {name}`) if it is not needed",
        )
    if net is not None and att.network.subnet:
        have = _subnet_of(net.XMLDesc(0))
        if have is not None and str(have) != att.network.subnet:
            raise MachineStateError(
                f"network '{att.name}' exists with subnet {have}, not {att.network.subnet}",
                hint="`devenv destroy` the project's machines on it first (the network goes with the last one)",
            )
    if net is None:
        subnet = ipaddress.IPv4Network(att.network.subnet) if att.network.subnet else pick_subnet(conn, name)
        for route in host_routes():
            if subnet.overlaps(route):
                raise MachineStateError(
                    f"network '{att.name}' ({subnet}) overlaps {route}, which this host already routes",
                    hint="pick another subnet in [networks] (`ip route` shows the host's)",
                )
        try:
            net = conn.networkDefineXML(network_xml(target, att, name, subnet))
        except lib.libvirtError as exc:
            raise MachineStateError(f"libvirt refused network '{att.name}': {exc}") from exc
    start(net, att.name)
    xml = net.XMLDesc(0)
    subnet = _subnet_of(xml)
    assert subnet is not None  # devenv's networks always have one
    gateway = str(next(subnet.hosts()))
    mac = mac_for(target.resource_name, att.name)
    hosts = _dhcp_hosts(xml)
    mine = next((h for h in hosts if h.get("mac") == mac), None)
    if mine is not None and att.ip and mine.get("ip") != att.ip:
        _update(net, lib.VIR_NETWORK_SECTION_IP_DHCP_HOST, lib.VIR_NETWORK_UPDATE_COMMAND_DELETE, _host_xml(mine))
        _remove_dns(net, mine["ip"])
        hosts.remove(mine)
        mine = None
    if mine is None:
        ip = att.ip or _free_ip(subnet, {h.get("ip") for h in hosts}, target.name)
        other = next((h for h in hosts if h.get("ip") == ip), None)
        if other is not None:
            raise MachineStateError(
                f"{ip} on network '{att.name}' is already machine '{other.get('name')}'s",
                hint="give each machine its own ip in the Devfile (`devenv destroy` a machine to free its address)",
            )
        mine = {"mac": mac, "name": target.name, "ip": ip}
        _update(net, lib.VIR_NETWORK_SECTION_IP_DHCP_HOST, lib.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, _host_xml(mine))
    _set_dns(net, mine["ip"], [target.name, target.machine.hostname])
    return Joined(att.name, name, mac, mine["ip"], gateway, subnet.prefixlen)


@_serialised
def start(net: Any, label: str) -> None:
    """Start a defined network (after a host reboot or a libvirtd restart it is inactive)."""
    lib = _lib()
    if net.isActive():
        return
    try:
        net.create()
    except lib.libvirtError as exc:
        if net.isActive():
            return  # started meanwhile (by libvirt's autostart or another client)
        text = str(exc)
        hint = None
        if "dnsmasq" in text:
            hint = "libvirt's networks need dnsmasq: apt-get install dnsmasq-base (scripts/libvirt.sh installs it)"
        elif "in use" in text or "overlap" in text.lower():
            hint = "pick another subnet in [networks] (`ip route` shows the host's)"
        raise MachineStateError(f"cannot start network '{label}': {text}", hint=hint) from exc


def _host_xml(h: dict[str, str]) -> str:
    return f"<host mac={quoteattr(h['mac'])} name={quoteattr(h.get('name', ''))} ip={quoteattr(h['ip'])}/>"


def _free_ip(subnet: ipaddress.IPv4Network, used: set[str | None], machine: str) -> str:
    hosts = list(subnet.hosts())[1:]  # the first is the host's (gateway)
    upper = hosts[len(hosts) // 2 :] or hosts
    start = int(hashlib.sha256(machine.encode()).hexdigest(), 16) % len(upper)
    for i in range(len(upper)):
        cand = str(upper[(start + i) % len(upper)])
        if cand not in used:
            return cand
    for cand in map(str, hosts):
        if cand not in used:
            return cand
    raise MachineStateError(f"no free address left on {subnet}", hint="use a larger subnet in [networks]")


def _remove_dns(net: Any, ip: str) -> None:
    lib = _lib()
    for h in ET.fromstring(net.XMLDesc(0)).findall("dns/host"):
        if h.get("ip") == ip:
            _update(
                net, lib.VIR_NETWORK_SECTION_DNS_HOST, lib.VIR_NETWORK_UPDATE_COMMAND_DELETE, ET.tostring(h, "unicode")
            )


def _set_dns(net: Any, ip: str, names: list[str]) -> None:
    lib = _lib()
    names = list(dict.fromkeys(names))
    for h in ET.fromstring(net.XMLDesc(0)).findall("dns/host"):
        if h.get("ip") == ip and [n.text for n in h.findall("hostname")] == names:
            return
    _remove_dns(net, ip)
    body = "".join(f"<hostname>{n}</hostname>" for n in names)  # names are RFC 1123 (the schema checks)
    _update(
        net, lib.VIR_NETWORK_SECTION_DNS_HOST, lib.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, f"<host ip='{ip}'>{body}</host>"
    )


@_serialised
def release(
    conn: Any, project_id: str, root: str | None, resource_name: str, keep: set[str] = frozenset()
) -> list[str]:
    """Take the machine's reservations and names off the project's networks (but those in
    ``keep``), and remove each network no machine is on any more. Returns the removed ones."""
    lib = _lib()
    removed = []
    for net in conn.listAllNetworks(0):
        meta = _meta(net) or {}
        if meta.get("project") != project_id or (root is not None and meta.get("root") not in (None, root)):
            continue
        name = meta.get("name", "")
        if name in keep:
            continue
        mac = mac_for(resource_name, name)
        for h in _dhcp_hosts(net.XMLDesc(0)):
            if h.get("mac") == mac:
                _update(net, lib.VIR_NETWORK_SECTION_IP_DHCP_HOST, lib.VIR_NETWORK_UPDATE_COMMAND_DELETE, _host_xml(h))
                _remove_dns(net, h["ip"])
        if not _dhcp_hosts(net.XMLDesc(0)) and not _in_use(conn, net.name()):
            removed.append(remove(net))
    return removed


def _in_use(conn: Any, network: str) -> bool:
    for dom in conn.listAllDomains(0):
        for src in ET.fromstring(dom.XMLDesc(0)).findall("devices/interface/source"):
            if src.get("network") == network:
                return True
    return False


def remove(net: Any) -> str:
    lib = _lib()
    name = net.name()
    try:
        if net.isActive():
            net.destroy()
        net.undefine()
    except lib.libvirtError as exc:
        if exc.get_error_code() != lib.VIR_ERR_NO_NETWORK:
            raise MachineStateError(f"cannot remove libvirt network {name}: {exc}") from exc
    return name


@_serialised
def sweep(conn: Any, project_id: str, root: str | None) -> list[str]:
    """The project's networks no domain is on, removed (after its domains were)."""
    out = []
    for net in conn.listAllNetworks(0):
        meta = _meta(net) or {}
        if meta.get("project") != project_id or (root is not None and meta.get("root") not in (None, root)):
            continue
        if not _in_use(conn, net.name()):
            out.append(remove(net))
    return out


def interface_xml(joined: list[Joined]) -> list[str]:
    q = quoteattr
    return [
        f"<interface type='network'><mac address={q(j.mac)}/><source network={q(j.network)}/>"
        f"<model type='virtio'/><address type='pci' domain='0x0000' bus='0x00' slot='{FIRST_SLOT + i:#04x}' "
        "function='0x0'/></interface>"
        for i, j in enumerate(joined)
    ]


def metadata_xml(joined: list[Joined]) -> list[str]:
    q = quoteattr
    return [f"<devenv:net name={q(j.name)} network={q(j.network)} mac={q(j.mac)} ip={q(j.ip)}/>" for j in joined]


def nameservers(joined: list[Joined]) -> list[str]:
    """The machine's resolvers: each project network's dnsmasq (the machines' names), then QEMU's."""
    return [*dict.fromkeys(j.gateway for j in joined), USER_NET_DNS]
