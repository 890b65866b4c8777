"""Private networks between a project's machines: the `[networks.NAME]` tables and each machine's
`networks = [...]`, checked as a whole (names, subnets, fixed addresses) and resolved so that a
driver sees every network a machine joins with its subnet and address.

A project with more than one machine gets a network named "default" that every machine without
a `networks` key joins (machines reach each other by machine name and hostname there). A fixed
`ip` on a network without a `subnet` takes the address's /24, as Vagrant's private_network does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from devenv.model.schema import MISSING, Bool, Custom, Field, IPAddress, MapOf, Problem, Str, Table

DEFAULT = "default"
NETWORK_NAME = r"[a-z0-9][a-z0-9_-]{0,31}"


# NamedTuples, not dataclasses, and ipaddress imported where used: every command loads the model.
class Network(NamedTuple):
    name: str
    subnet: str | None = None  # an IPv4 CIDR; None: the engine picks one
    internal: bool = False  # no route off the host at all (Docker `internal`)
    implicit: bool = False  # the project's default network, not written in the Devfile


class Attachment(NamedTuple):
    """One network a machine joins, as its driver needs it."""

    network: Network
    ip: str | None = None  # a fixed IPv4 address, or None: the engine assigns one

    @property
    def name(self) -> str:
        return self.network.name


def _subnet(value: Any, path: tuple, problems: list) -> Any:
    import ipaddress

    if not isinstance(value, str):
        problems.append(Problem(path, f'expected a subnet like "192.168.57.0/24", got {type(value).__name__}'))
        return MISSING
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        why = " (its host bits are set)" if "host bits" in str(exc) else ""
        problems.append(Problem(path, f"'{value}' is not a subnet{why}; write one like \"192.168.57.0/24\""))
        return MISSING
    if net.version != 4:
        problems.append(Problem(path, "only IPv4 subnets are supported"))
        return MISSING
    if net.prefixlen > 29:
        problems.append(Problem(path, f"'{value}' is too small for machines (at most /29)"))
        return MISSING
    return str(net)


NETWORK_TABLE = Table(
    {
        "subnet": Field(Custom(_subnet, {"type": "string"}, description='An IPv4 subnet, e.g. "192.168.57.0/24"')),
        "internal": Field(Bool(description="No route off the host (no internet) for machines on it"), default=False),
    },
    description="A private network between the project's machines",
)
NETWORKS = MapOf(
    NETWORK_TABLE,
    description="Private networks between the project's machines",
    key_pattern=NETWORK_NAME,
    key_help="a network name: a-z, 0-9, _ and -",
)

ATTACHMENT_TABLE = Table(
    {
        "name": Field(Str(pattern=NETWORK_NAME, pattern_help="a network name: a-z, 0-9, _ and -"), required=True),
        "ip": Field(IPAddress(description="A fixed address on the network")),
    },
    description="A network the machine joins",
)


def _attachment(value: Any, path: tuple, problems: list) -> Any:
    if isinstance(value, str):
        value = {"name": value}
    return ATTACHMENT_TABLE.check(value, path, problems)


class _AttachmentNode(Custom):
    def json_schema(self) -> dict:  # built on export only
        return self._described({"anyOf": [{"type": "string"}, ATTACHMENT_TABLE.json_schema()]})


ATTACHMENT = _AttachmentNode(_attachment, {}, description='A network name, or { name = "...", ip = "..." }')


def resolve(
    declared: dict, machines: dict[str, dict], problems: list[Problem]
) -> tuple[dict[str, Network], dict[str, tuple[Attachment, ...]]]:
    """The project's networks and each machine's attachments, every problem reported with its key.

    ``declared``: the checked [networks] tables; ``machines``: per machine name, {"networks":
    checked list or None (key absent), "at": the key path of its networks entry}."""
    networks: dict[str, Network] = {}
    for name, t in (declared or {}).items():
        if t is MISSING:
            continue
        networks[name] = Network(name, t.get("subnet"), bool(t.get("internal", False)))
    wanting_default = [m for m, d in machines.items() if d.get("networks") is None]
    if len(machines) > 1 and wanting_default and DEFAULT not in networks:
        networks[DEFAULT] = Network(DEFAULT, implicit=True)

    import ipaddress

    # Fixed addresses on a network without a subnet: the /24 of the first one (Vagrant's habit).
    for d in machines.values():
        for a in d.get("networks") or []:
            if a is MISSING or "name" not in a or not a.get("ip"):
                continue
            net = networks.get(a["name"])
            if net is not None and net.subnet is None:
                cidr = str(ipaddress.ip_network(f"{a['ip']}/24", strict=False))
                networks[net.name] = Network(net.name, cidr, net.internal, net.implicit)

    _check_overlaps(networks, problems)
    used: dict[tuple[str, str], str] = {}
    out: dict[str, tuple[Attachment, ...]] = {}
    for m, d in machines.items():
        written = d.get("networks")
        if written is None:
            out[m] = (Attachment(networks[DEFAULT]),) if DEFAULT in networks and len(machines) > 1 else ()
            continue
        atts: list[Attachment] = []
        seen: set[str] = set()
        for i, a in enumerate(written):
            if a is MISSING or "name" not in a:
                continue  # reported by the schema
            at = (*d["at"], i)
            net = networks.get(a["name"])
            if net is None:
                known = ", ".join(sorted(networks)) or "none"
                problems.append(
                    Problem(
                        at + ("name",),
                        f"no network named '{a['name']}' (define [networks.{a['name']}]; known: {known})",
                    )
                )
                continue
            if net.name in seen:
                problems.append(Problem(at + ("name",), f"the machine joins network '{net.name}' twice"))
                continue
            seen.add(net.name)
            ip = a.get("ip")
            if ip is not None and not _ip_ok(ip, net, at + ("ip",), problems):
                continue
            if ip is not None:
                other = used.get((net.name, ip))
                if other is not None:
                    problems.append(
                        Problem(at + ("ip",), f"{ip} on network '{net.name}' is already machine '{other}'s")
                    )
                    continue
                used[(net.name, ip)] = m
            atts.append(Attachment(net, ip))
        out[m] = tuple(atts)
    return networks, out


def _ip_ok(ip: str, net: Network, at: tuple, problems: list[Problem]) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    if addr.version != 4:
        problems.append(Problem(at, "only IPv4 addresses are supported on private networks"))
        return False
    assert net.subnet is not None  # resolve() gave every network with a fixed address a subnet
    sub = ipaddress.ip_network(net.subnet)
    if addr not in sub:
        problems.append(Problem(at, f"{ip} is outside network '{net.name}' ({net.subnet})"))
        return False
    gateway = next(sub.hosts())
    if addr in (sub.network_address, sub.broadcast_address, gateway):
        what = "the host's gateway address" if addr == gateway else "not a host address"
        problems.append(Problem(at, f"{ip} is {what} on {net.subnet}: pick another"))
        return False
    return True


def _check_overlaps(networks: dict[str, Network], problems: list[Problem]) -> None:
    import ipaddress

    nets = [(n, ipaddress.ip_network(n.subnet)) for n in networks.values() if n.subnet]
    for i, (a, an) in enumerate(nets):
        for b, bn in nets[i + 1 :]:
            if an.overlaps(bn):
                where = ("networks", b.name, "subnet") if not b.implicit else ("networks", a.name, "subnet")
                problems.append(Problem(where, f"{bn} overlaps network '{a.name}' ({an})"))
