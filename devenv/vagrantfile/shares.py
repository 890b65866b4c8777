"""What a machine shares with the host and its peers: `forwarded_port` -> ports,
`synced_folder` -> sync, `private_network` -> networks (and `public_network` -> a note).

Vagrant's defaults differ from devenv's in two places the notes say: a forwarded port without
host_ip binds every host address under VirtualBox (devenv: 127.0.0.1), and the project folder is
shared at /vagrant unless disabled (kept: a bind mount on Docker, virtiofs or a copy on libvirt).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from devenv.vagrantfile.context import Context, lost, opt, shown
from devenv.vagrantfile.document import Entry, Item, Note, Section

_HOW = {
    "docker": "a bind mount (live, both ways)",
    "libvirt": "virtiofs where the box and the host have it, else a copy (`devenv rsync` pushes it again)",
}
_TYPES = {"nfs": "NFS exported from the host", "smb": "an SMB share", "sshfs": "sshfs (a plugin)"}
_PORT_OPTIONS = ("guest", "host", "host_ip", "protocol", "auto_correct", "guest_ip", "id")
_FOLDER_KEPT = ("hostpath", "guestpath", "disabled", "type", "create", "id", "rsync__exclude", "mount_options")


# ---------------------------------------------------------------------------------------------
# forwarded ports


def ports(ctx: Context, vm: dict, docker: dict | None) -> list[Item]:
    """Every forwarded_port, then the docker provider's `ports` ("HOST:GUEST") when it is carried."""
    items = [
        port(ctx, n.get("options") or {}, ctx.where(n))
        for n in vm.get("networks") or []
        if n["type"] == "forwarded_port"
    ]
    if docker is not None:
        rec = docker.get("ports")
        for spec in opt(docker, "ports") or []:
            m = re.fullmatch(r"(?:(\[?[0-9A-Fa-f:.]+\]?):)?(\d+):(\d+)(?:/(tcp|udp))?", str(spec))
            if not m:
                items.append(lost(f"the docker provider's port {shown(spec)}", ctx.where(rec)))
                continue
            ip, host, guest, proto = m.groups()
            o: dict[str, Any] = {"guest": int(guest), "host": int(host), "protocol": proto or "tcp"}
            if ip:
                o["host_ip"] = ip.strip("[]")
            items.append(port(ctx, o, ctx.where(rec)))
    return items


def _port_number(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    try:
        n = int(v)
    except (TypeError, ValueError):
        return None
    return n if 1 <= n <= 65535 else None


def port(ctx: Context, o: dict, where: str | None) -> Item:
    what = "forwarded_port " + ", ".join(
        f"{k}: {shown(v)}" for k, v in o.items() if not (k == "protocol" and v == "tcp")
    )
    if o.get("id") == "ssh":
        return lost(
            f"{what} (Vagrant's SSH port): devenv reaches the machine itself (`devenv ssh`, `devenv ssh-config`)", where
        )
    guest, host = _port_number(o.get("guest")), _port_number(o.get("host"))
    if guest is None:
        return lost(f"{what}: no valid guest port", where)
    entry: dict[str, Any] = {"guest": guest}
    notes: list[Note] = []
    if host is not None:
        entry["host"] = host
    elif o.get("host") is not None:
        notes.append(Note(f"host: {shown(o['host'])} is not a port: devenv picks a free one", "lost", where))
    ip = o.get("host_ip")
    if ip is None or ip == "":
        # Said once in the header too: Vagrant's VirtualBox provider binds every host address.
        notes.append(Note(f"{what}: on 127.0.0.1 only (Vagrant: every host address)", "changed", where))
    elif ip not in ("localhost", "127.0.0.1"):
        entry["host_ip"] = str(ip)
    proto = str(o.get("protocol") or "tcp").lower()
    if proto != "tcp":
        entry["protocol"] = proto
    if o.get("auto_correct"):
        entry["auto_correct"] = True
    if o.get("guest_ip"):
        notes.append(
            Note(f"guest_ip: {shown(o['guest_ip'])}: devenv forwards to the machine's own address", "lost", where)
        )
    extra = {k: v for k, v in o.items() if k not in _PORT_OPTIONS}
    if extra:
        notes.append(Note(", ".join(f"{k}: {shown(v)}" for k, v in extra.items()), "lost", where))
    return Item(entry, notes or [Note(what, where=where)])


def free_colliding_ports(items_by_machine: list[list[Item]]) -> None:
    """The same host port forwarded twice: Vagrant refuses it (or, with auto_correct, picks another
    at `up`); devenv refuses it in `validate`, so the later one lets devenv pick a free port."""
    seen: set[tuple[int, str, str]] = set()
    for items in items_by_machine:
        for item in items:
            v = item.value
            if v is None or "host" not in v:
                continue
            key = (v["host"], v.get("protocol", "tcp"), v.get("host_ip", "127.0.0.1"))
            clash = any(k[0] == key[0] and k[1] == key[1] and _overlap(k[2], key[2]) for k in seen)
            if not clash:
                seen.add(key)
                continue
            how = (
                "auto_correct would pick another port at `vagrant up`"
                if v.get("auto_correct")
                else ("Vagrant would refuse the collision")
            )
            item.notes.append(
                Note(
                    f"host port {v['host']} is forwarded already ({how}): devenv picks a free one "
                    "(`devenv port NAME` shows it)",
                    "changed",
                )
            )
            item.value = {k: x for k, x in v.items() if k != "host"}


def _overlap(a: str, b: str) -> bool:
    return a == b or a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::")


# ---------------------------------------------------------------------------------------------
# synced folders


def folders(ctx: Context, vm: dict, docker: dict | None) -> list[Item]:
    items = [
        folder(ctx, f.get("options") or {}, ctx.where(f), implicit=f.get("implicit", False))
        for f in vm.get("synced_folders") or []
    ]
    if docker is not None:
        where = ctx.where(docker.get("volumes"))
        for spec in opt(docker, "volumes") or []:
            parts = str(spec).split(":")
            if len(parts) < 2:
                items.append(lost(f"the docker provider's volume {shown(spec)} (a named volume)", where))
                continue
            o = {"hostpath": parts[0], "guestpath": parts[1], "mount_options": parts[2:]}
            item = folder(ctx, o, where, implicit=False)
            item.notes.insert(0, Note("the docker provider's volume", where=where))
            items.append(item)
    return items


def folder(ctx: Context, o: dict, where: str | None, *, implicit: bool) -> Item:
    host_written, guest = str(o.get("hostpath") or "."), str(o.get("guestpath") or "")
    if implicit:
        what = "the project folder at /vagrant (Vagrant's default share)"
    else:
        what = f"synced_folder {shown(host_written)}, {shown(guest)}"
    if o.get("disabled"):
        return Item(None, [Note(f"{what}: disabled in the Vagrantfile", where=where)])
    if not guest.startswith("/"):
        return lost(f"{what}: the guest path is not absolute", where)
    host = ctx.path(host_written)
    if not host.absolute.is_dir():
        made = " (Vagrant makes it: create: true)" if o.get("create") else ""
        return lost(
            f"{what}: the host folder {host.text} does not exist{made}; import-vagrant writes nothing "
            f'into the project: make it, then add {{ host = "{host.text}", guest = "{guest}" }}',
            where,
        )
    entry: dict[str, Any] = {"host": host.text, "guest": guest}
    notes: list[Note] = []
    mount = [str(x) for x in o.get("mount_options") or []] if isinstance(o.get("mount_options"), list) else []
    if "ro" in mount:
        entry["read_only"] = True
    how = _HOW[ctx.driver]
    if implicit:
        notes.append(
            Note(
                f"Vagrant shares the project folder at /vagrant unless it is disabled (a VirtualBox "
                f"shared folder, or rsync on some boxes); here {how}",
                "changed",
            )
        )
    typ = str(o.get("type") or "").lower()
    if typ == "rsync" and ctx.driver == "libvirt":
        entry["type"] = "rsync"
        exclude = o.get("rsync__exclude")
        exclude = [exclude] if isinstance(exclude, str) else exclude
        if isinstance(exclude, list) and exclude:
            entry["exclude"] = [str(x) for x in exclude]
        notes.append(Note("type rsync: a copy at `devenv up` and `devenv rsync` (no rsync-auto)", "changed", where))
    elif typ == "rsync":
        notes.append(Note(f"type rsync (a copy at `vagrant up` and `vagrant rsync`): here {how}", "changed", where))
        if o.get("rsync__exclude"):
            notes.append(
                Note(f"rsync__exclude: {shown(o['rsync__exclude'])}: a bind mount shares everything", "lost", where)
            )
    elif typ == "virtiofs" and ctx.driver == "libvirt":
        entry["type"] = "virtiofs"
    elif typ not in ("", "virtualbox", "vboxsf", "docker"):
        kind = _TYPES.get(typ, "a Vagrant synced folder type")
        if typ == "9p":
            kind = "9p, which Debian's cloud kernel lacks"
        notes.append(Note(f"type {typ} ({kind}): here {how}", "changed", where))
    if ctx.driver == "libvirt" and entry.get("read_only") and entry.get("type", "auto") in ("auto", "virtiofs"):
        entry["type"] = "rsync"
        notes.append(
            Note(
                "read-only: a copy (a virtiofs share cannot be read-only; Debian's kernel has no 9p)", "changed", where
            )
        )
    if host.outside:
        entry["allow_outside_project"] = True
        notes.append(
            Note(
                f"{host.text} is outside the project: devenv shares a folder outside the Devfile's folder "
                "only with allow_outside_project = true, set because the Vagrantfile shares it",
                "changed",
                where,
            )
        )
    extra = {k: v for k, v in o.items() if k not in _FOLDER_KEPT}
    if mount and mount != ["ro"]:
        extra["mount_options"] = mount
    if extra:
        why = " (files keep their host owner and mode)" if {"owner", "group"} & set(extra) else ""
        notes.append(Note(", ".join(f"{k}: {shown(v)}" for k, v in extra.items()) + why, "lost", where))
    return Item(entry, notes or [Note(what, where=where)])


# ---------------------------------------------------------------------------------------------
# private networks


class Networks:
    """The project's [networks.NAME] tables, made while each machine's private_network entries
    are mapped: one network per subnet the addresses are in (a /24 unless a netmask says), the
    VirtualBox internal network's name when it has one, "dhcp" for type: "dhcp"."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.subnets: dict[str, ipaddress.IPv4Network | None] = {}
        self.sections: dict[str, Section] = {}
        self.used: set[tuple[str, str]] = set()

    def machine(self, vm: dict, machine: str) -> list[Item]:
        items: list[Item] = []
        for n in vm.get("networks") or []:
            o, where = n.get("options") or {}, self.ctx.where(n)
            if n["type"] == "forwarded_port":
                continue
            if n["type"] == "public_network":
                items.append(
                    lost(
                        "public_network (the machine bridged onto your LAN): devenv does not bridge "
                        'machines onto a host network; forward ports instead (host_ip = "0.0.0.0" shares '
                        "one on your network)",
                        where,
                    )
                )
            elif n["type"] == "private_network":
                items.append(self.private(o, where, machine))
            else:
                items.append(lost(f"network {n['type']}: {shown(o)}", where))
        return items

    def _add(self, name: str, subnet: ipaddress.IPv4Network | None, note: str) -> None:
        self.subnets[name] = subnet
        entries = {"subnet": Entry(str(subnet))} if subnet is not None else {}
        self.sections[name] = Section(f"networks.{name}", [Note(note)], entries)

    def private(self, o: dict, where: str | None, machine: str) -> Item:
        intnet = o.get("virtualbox__intnet")
        wanted = re.sub(r"[^a-z0-9_-]+", "-", str(intnet).lower()).strip("-")[:32] if isinstance(intnet, str) else ""
        wanted = wanted if re.fullmatch(r"[a-z0-9][a-z0-9_-]*", wanted or "-") else ""
        ip_text = o.get("ip")
        notes: list[Note] = []
        if str(o.get("type") or "") == "dhcp" or not ip_text:
            name = wanted or "dhcp"
            if name not in self.subnets:
                self._add(name, None, "Vagrant's DHCP private network: devenv picks the subnet and each address")
            notes.append(Note("private_network type: dhcp", where=where))
            self._rest(notes, o, where)
            return Item({"name": name}, notes)
        try:
            addr = ipaddress.ip_address(str(ip_text))
        except ValueError:
            return lost(f"private_network ip: {shown(ip_text)} is not an IP address", where)
        if not isinstance(addr, ipaddress.IPv4Address):
            return lost(f"private_network ip: {ip_text}: devenv's private networks are IPv4", where)
        prefix = _prefix(o.get("netmask"))
        cidr = ipaddress.IPv4Network(f"{addr}/{prefix}", strict=False)
        found = next((n for n, c in self.subnets.items() if c is not None and addr in c), None)
        if found is not None:
            name = found
        else:
            if any(c is not None and c.overlaps(cidr) for c in self.subnets.values()):
                return lost(
                    f"private_network ip: {ip_text}/{prefix} overlaps another private network of this Vagrantfile",
                    where,
                )
            name = wanted if wanted and wanted not in self.subnets else self._new_name()
            self._add(
                name,
                cidr,
                f"Vagrant's private network {cidr} (host-only): the host has {next(cidr.hosts())} "
                "and reaches each machine at its address, as with Vagrant",
            )
        net = self.subnets[name]
        assert net is not None
        entry: dict[str, Any] = {"name": name}
        if addr in (net.network_address, net.broadcast_address, next(net.hosts())):
            notes.append(
                Note(
                    f"ip {addr} is the network's own or the host's address on {net}: devenv gives the machine another",
                    "changed",
                    where,
                )
            )
        elif (name, str(addr)) in self.used:
            notes.append(Note(f"ip {addr} is another machine's too: devenv gives {machine} another", "changed", where))
        else:
            entry["ip"] = str(addr)
            self.used.add((name, str(addr)))
            notes.append(Note(f"private_network ip: {addr}", where=where))
        self._rest(notes, o, where)
        return Item(entry, notes)

    def _new_name(self) -> str:
        if "private" not in self.subnets:
            return "private"
        i = 2
        while f"private-{i}" in self.subnets:
            i += 1
        return f"private-{i}"

    def _rest(self, notes: list[Note], o: dict, where: str | None) -> None:
        rest = {k: v for k, v in o.items() if k not in ("ip", "type", "netmask", "protocol", "virtualbox__intnet")}
        if o.get("virtualbox__intnet"):
            notes.append(
                Note(
                    f"virtualbox__intnet: {shown(o['virtualbox__intnet'])} (a VirtualBox internal network, "
                    "which the host is not on): here a network the host is on",
                    "changed",
                    where,
                )
            )
        if rest.get("auto_config") is False:
            rest.pop("auto_config")
            notes.append(Note("auto_config: false (the box set the address itself): devenv sets it", "changed", where))
        if rest:
            notes.append(Note(", ".join(f"{k}: {shown(v)}" for k, v in rest.items()), "lost", where))


def _prefix(netmask: Any) -> int:
    """A netmask ("255.255.255.0", 24) as a prefix length devenv takes (/8 to /29); else /24."""
    if netmask is None:
        return 24
    try:
        if isinstance(netmask, int) or str(netmask).isdigit():
            n = int(netmask)
        else:
            n = ipaddress.ip_network(f"0.0.0.0/{netmask}").prefixlen
    except ValueError:
        return 24
    return n if 8 <= n <= 29 else 24
