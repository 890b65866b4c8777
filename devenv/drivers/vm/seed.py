"""NoCloud seed: the ISO (volume label `cidata`) with meta-data and user-data that cloud-init
reads at first boot — and that devenv's own boxes apply with a small boot script.

The subset devenv writes (and its boxes understand): meta-data `instance-id`, `local-hostname`;
user-data (#cloud-config) `hostname`, `ssh_authorized_keys`, `ssh_keys` (ed25519 host key pair),
`disable_root: false`, `mounts` (9p shares), `ssh_pwauth: false`, and `manage_resolv_conf` with
`resolv_conf.nameservers` (the project networks' DNS first, for machines on private networks).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from devenv.errors import BackendUnavailable, StateError


def _q(s: str) -> str:
    # JSON strings are valid YAML double-quoted scalars: no YAML library needed.
    return json.dumps(s)


def meta_data(instance_id: str, hostname: str) -> str:
    return f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"


def user_data(
    *,
    hostname: str,
    authorized_key: str,
    host_key_private: str,
    host_key_public: str,
    mounts: list[tuple[str, str, str, str]] = (),
    nameservers: list[str] | tuple[str, ...] = (),
) -> str:
    from devenv.drivers.vm.identity import is_private_key, is_public_key

    # The keys come from the machine's key folder (identity reads them by descriptor and checks
    # them); checked again here because they are spliced into YAML the guest parses: a key that is
    # not exactly an OpenSSH key could carry more user-data than a key.
    if not (is_public_key(authorized_key) and is_public_key(host_key_public) and is_private_key(host_key_private)):
        raise StateError(
            "the machine's SSH keys are not OpenSSH ed25519 keys: refusing to put them in its seed",
            hint="remove the machine's key folder (.devenv/machines/NAME); `devenv up` makes new keys",
        )
    lines = [
        "#cloud-config",
        f"hostname: {_q(hostname)}",
        "disable_root: false",
        "ssh_pwauth: false",
        "ssh_deletekeys: true",
        "ssh_authorized_keys:",
        f"  - {_q(authorized_key)}",
        "ssh_keys:",
        "  ed25519_private: |",
        *[f"    {line}" for line in host_key_private.strip().splitlines()],
        f"  ed25519_public: {_q(host_key_public)}",
    ]
    if mounts:
        lines.append("mounts:")
        for tag, guest, fstype, options in mounts:
            lines.append(f'  - [{_q(tag)}, {_q(guest)}, {_q(fstype)}, {_q(options)}, "0", "0"]')
    if nameservers:
        import ipaddress

        # Addresses only (the driver's own, checked again here): they are spliced into YAML.
        servers = [str(ipaddress.IPv4Address(ns)) for ns in nameservers]
        lines += [
            "manage_resolv_conf: true",
            "resolv_conf:",
            f"  nameservers: [{', '.join(_q(ns) for ns in servers)}]",
            "  options: {timeout: 1, attempts: 2}",
        ]
    return "\n".join(lines) + "\n"


def write_iso(path: Path, files: dict[str, str]) -> None:
    """An ISO 9660 image labelled `cidata` (Joliet + Rock Ridge, so names keep their dashes)."""
    try:
        import pycdlib
    except ImportError as exc:
        raise BackendUnavailable(
            "pycdlib is needed to write the cloud-init seed", hint="pip install 'devenv[libvirt]'"
        ) from exc
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for i, (name, text) in enumerate(sorted(files.items())):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", rr_name=name, joliet_path=f"/{name}")
    tmp = path.with_suffix(".tmp")
    iso.write(str(tmp))
    iso.close()
    tmp.chmod(0o600)  # it carries the machine's private host key
    tmp.replace(path)
