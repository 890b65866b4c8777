"""Host-side port handling and the SSH transport shared by the drivers.

One place decides whether a host port is free, picks free ones, applies auto_correct and
warns about ports exposed beyond loopback, so every driver behaves the same.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from devenv.contract import QUIET, Reporter, Target
from devenv.errors import DevfileError, MachineStateError, PortConflict

# bind() errors that say "this host has no such address" (not "the port is taken").
_NOT_HERE = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL)


def _not_here(ip: str, exc: OSError, where: str | None = None) -> DevfileError:
    at = f"{where}: " if where else ""
    return DevfileError(
        f"{at}host_ip {ip} is not an address of this host, so no port can be forwarded on it ({exc.strerror or exc})",
        hint="use 127.0.0.1 (the default), or an address `ip -brief address` lists on this host",
    )


def _bind(ip: str, port: int, proto: str) -> socket.socket:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        s = socket.socket(fam, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    except OSError as exc:  # no IPv6 on this host at all
        raise _not_here(ip, exc) from exc
    try:
        s.bind((ip, port))
    except OSError as exc:
        s.close()
        if isinstance(exc, socket.gaierror) or exc.errno in _NOT_HERE:
            raise _not_here(ip, exc) from exc
        raise
    return s


def port_free(ip: str, port: int, proto: str = "tcp") -> bool:
    """True when this host can bind ip:port (tcp or udp) right now; DevfileError when the
    address is not this host's (an error of the Devfile, not a busy port)."""
    try:
        _bind(ip, port, proto).close()
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise
    return True


def free_port(ip: str = "127.0.0.1") -> int:
    with _bind(ip, 0, "tcp") as s:
        return s.getsockname()[1]


def check_host_addresses(target) -> None:
    """Every forwarded port's host_ip is an address of this host (binding port 0 on it works).

    Run by `up` before it takes the project lock or writes anything: a Devfile naming an address
    this host lacks fails with the port entry named, and leaves no file behind."""
    seen: set[tuple[str, str]] = set()
    for i, p in enumerate(target.machine.ports):
        if (p.host_ip, p.protocol) in seen:
            continue
        seen.add((p.host_ip, p.protocol))
        try:
            _bind(p.host_ip, 0, p.protocol).close()
        except DevfileError as exc:
            raise _not_here(p.host_ip, exc.__cause__, f"machines.{target.name}.ports[{i}]") from exc  # type: ignore[arg-type]
        except OSError:
            pass  # anything else (no free port at all?) is for the real bind to report


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


def resolve_host_port(
    machine: str, ip: str, host: int | None, guest: int, proto: str, auto_correct: bool, reporter: Reporter = QUIET
) -> int:
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
    reporter.info(machine, f"host port {start} is in use: forwarding {host} -> {guest} instead")
    return host


def plan_forwards(target: Target, reporter: Reporter = QUIET) -> list[dict]:
    """Every Devfile port of a VM as {host_ip, host, guest, protocol}, host ports decided now."""
    out = []
    for p in target.machine.ports:
        host = resolve_host_port(target.name, p.host_ip, p.host, p.guest, p.protocol, p.auto_correct, reporter)
        if not is_loopback(p.host_ip):
            reporter.warn(
                f"{target.name}: port {p.guest}/{p.protocol} is reachable from other hosts (host_ip = {p.host_ip})"
            )
        out.append({"host_ip": p.host_ip, "host": host, "guest": p.guest, "protocol": p.protocol})
    return out


def ssh_transport(meta: dict | None, gone: str):
    """The SSH transport a VM driver recorded in its metadata (endpoint, user, key folder)."""
    from devenv.drivers.vm.identity import MachineKeys
    from devenv.transports.ssh import SshTransport

    if not meta:
        raise MachineStateError(gone, hint="run `devenv up` to recreate it")
    ssh = meta["ssh"]
    keys = MachineKeys(Path(ssh["keys"]))
    # ssh opens these paths itself: first every key file must be one devenv can have made (no link).
    if not keys.check():
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
