"""What the VM drivers (libvirt, VirtualBox) share: their metadata record answers ports, sync and
the SSH transport, so none of it lives in .devenv/."""

from __future__ import annotations

from devenv.contract import PortBinding
from devenv.drivers.hostports import ssh_transport


class VmMetadataMixin:
    """Needs `metadata(handle) -> {"machine", "ssh": {...}, "ports": [...], "sync": [...]} | None`."""

    gone_message = "the machine is gone"

    def metadata(self, handle: str) -> dict | None:  # pragma: no cover - provided by the driver
        raise NotImplementedError

    def ports(self, handle: str) -> list[PortBinding]:
        meta = self.metadata(handle) or {}
        out = []
        ssh = meta.get("ssh", {})
        if ssh.get("port"):
            out.append(PortBinding(host_ip=ssh.get("host", "127.0.0.1"), host=int(ssh["port"]), guest=22))
        for p in meta.get("ports", []):
            out.append(
                PortBinding(host_ip=p["host_ip"], host=int(p["host"]), guest=int(p["guest"]), protocol=p["protocol"])
            )
        return out

    def sync_kind(self, handle: str) -> str | None:
        kinds = sorted({s["kind"] for s in (self.metadata(handle) or {}).get("sync", [])})
        return ", ".join(kinds) if kinds else None

    def sync_plan(self, handle: str) -> list[dict]:
        return (self.metadata(handle) or {}).get("sync", [])

    def transport(self, handle: str):
        return ssh_transport(self.metadata(handle), self.gone_message)
