"""Host-side port handling and the SSH transport shared by the drivers.

One place decides whether a host port is free, picks free ones, applies auto_correct and
warns about ports exposed beyond loopback, so every driver behaves the same.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from devenv import ui
from devenv.errors import MachineStateError, PortConflict


def port_free(ip: str, port: int, proto: str = "tcp") -> bool:
    """True when this host can bind ip:port (tcp or udp) right now."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(ip: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


def resolve_host_port(machine: str, ip: str, host: int | None, guest: int, proto: str, auto_correct: bool) -> int:
    """The host port to forward: the Devfile's, a free one when none is given, or the next free
    one with auto_correct; a taken port is a PortConflict otherwise."""
    if host is None:
        return free_port(ip)
    if port_free(ip, host, proto):
        return host
    if not auto_correct:
        raise PortConflict(
            f"host port {ip}:{host}/{proto} (for guest port {guest}) is already in use",
            hint="stop what uses it (`ss -ltnp`), pick another host port, or set auto_correct = true",
        )
    start = host
    while host < 65535 and not port_free(ip, host, proto):
        host += 1
    ui.info(machine, f"host port {start} is in use: forwarding {host} -> {guest} instead")
    return host


def plan_forwards(target) -> list[dict]:
    """Every Devfile port of a VM as {host_ip, host, guest, protocol}, host ports decided now."""
    out = []
    for p in target.machine.ports:
        host = resolve_host_port(target.name, p.host_ip, p.host, p.guest, p.protocol, p.auto_correct)
        if not is_loopback(p.host_ip):
            ui.warn(f"{target.name}: port {p.guest}/{p.protocol} is reachable from other hosts (host_ip = {p.host_ip})")
        out.append({"host_ip": p.host_ip, "host": host, "guest": p.guest, "protocol": p.protocol})
    return out


def ssh_transport(meta: dict | None, gone: str):
    """The SSH transport a VM driver recorded in its metadata (endpoint, user, key folder)."""
    from devenv.identity import MachineKeys
    from devenv.transport import SshTransport

    if not meta:
        raise MachineStateError(gone, hint="run `devenv up` to recreate it")
    ssh = meta["ssh"]
    keys = MachineKeys(Path(ssh["keys"]))
    if not keys.client_key.exists():
        raise MachineStateError(
            f"the SSH key of machine '{meta['machine']}' is missing ({keys.client_key})",
            hint="its .devenv/ folder was removed: `devenv destroy` and `devenv up` it to make a new identity",
        )
    return SshTransport(
        machine=meta["machine"],
        host=ssh.get("host", "127.0.0.1"),
        port=int(ssh["port"]),
        user=ssh.get("user", "root"),
        key=keys.client_key,
        known_hosts=keys.known_hosts,
    )


def ssh_banner(port: int, host: str = "127.0.0.1") -> bool:
    """True once an SSH server answers on host:port with its banner.

    A port forward (QEMU's user network, VirtualBox NAT) accepts the connection itself, before
    the guest listens: only the banner proves sshd is up."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(3)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False
