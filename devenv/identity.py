"""Per-machine SSH identity: a client key pair and a host key pair, made by devenv.

The host key is generated here and handed to the guest at first boot (NoCloud seed), so the
first connection already knows which key to expect: the known_hosts file is written before
the machine exists and ssh runs with StrictHostKeyChecking=yes. No trust on first use.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devenv.errors import BackendUnavailable, CommandFailed


@dataclass(frozen=True)
class MachineKeys:
    folder: Path

    @property
    def client_key(self) -> Path:
        return self.folder / "id_ed25519"

    @property
    def client_pub(self) -> str:
        return (self.folder / "id_ed25519.pub").read_text().strip()

    @property
    def host_key(self) -> Path:
        return self.folder / "ssh_host_ed25519_key"

    @property
    def host_pub(self) -> str:
        return (self.folder / "ssh_host_ed25519_key.pub").read_text().strip()

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    def pin(self, host: str, port: int) -> None:
        """Write the known_hosts entry for where the machine's SSH is reachable."""
        key_type, key = self.host_pub.split()[:2]
        entry = f"[{host}]:{port}" if port != 22 else host
        self.known_hosts.write_text(f"{entry} {key_type} {key}\n")
        self.known_hosts.chmod(0o600)


def _keygen(path: Path, comment: str) -> None:
    if shutil.which("ssh-keygen") is None:
        raise BackendUnavailable("ssh-keygen is not installed", hint="apt-get install openssh-client")
    r = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise CommandFailed(f"ssh-keygen failed: {r.stderr.strip()}")


def ensure_keys(folder: Path, comment: str) -> MachineKeys:
    """The machine's keys, generated once (0600, in a 0700 folder)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    keys = MachineKeys(folder)
    if not keys.client_key.exists():
        _keygen(keys.client_key, f"devenv client {comment}")
    if not keys.host_key.exists():
        _keygen(keys.host_key, f"devenv host {comment}")
    return keys
