"""What a machine carries while devenv provisions it through the package cache, and loses after.

apt gets a proxy *detector*, not a fixed proxy: for a mirror the cache serves it answers the
cache's address while the cache answers, else DIRECT. A machine never depends on the cache: a
proxy that stopped, a Devfile step run by hand later, or a machine left configured by a killed
devenv all still reach the mirror. HTTPS sources are not touched (apt's https method has no
proxy set), and sources on other hosts or ports go straight out.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

CONF = "/etc/apt/apt.conf.d/00devenv-package-cache"
DETECT = "/var/lib/devenv/apt-proxy-detect"
# Every path the cache puts into a machine: a box is checked for none of them (bake, package).
PATHS = (CONF, DETECT)

_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")

# Run as root in the machine: $1 is the detector's text, $2 the apt.conf line. Machines without
# apt (busybox, Alpine) say so and are left alone.
_INSTALL = (
    "if ! [ -d /etc/apt/apt.conf.d ] || ! command -v apt-get >/dev/null 2>&1; then echo devenv:no-apt; exit 0; fi; "
    "set -e; umask 022; mkdir -p /var/lib/devenv; "
    f'printf "%s" "$1" > {DETECT}.tmp; chmod 755 {DETECT}.tmp; mv -f {DETECT}.tmp {DETECT}; '
    f'printf "%s\\n" "$2" > {CONF}.tmp; mv -f {CONF}.tmp {CONF}; echo devenv:configured'
)
REMOVE = f"rm -f {CONF} {CONF}.tmp {DETECT} {DETECT}.tmp; rmdir /var/lib/devenv 2>/dev/null; exit 0"


def detector(address: str, port: int, hosts: set[str]) -> str:
    """The script apt runs for each host it contacts ($1: the URI)."""
    ip = ipaddress.ip_address(address)  # devenv's own value; checked anyway, it lands in a script
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    names = sorted(h for h in hosts if _HOST.fullmatch(h))
    cases = "|".join(names)
    return f"""#!/bin/sh
# Written by devenv while it provisions this machine, removed when it is done. apt runs it for
# each host it fetches from ($1 is the URI): Debian and Ubuntu mirrors go through the host's
# package cache while the cache answers; anything else, or everything when it does not, DIRECT.
hp=${{1#*://}}; hp=${{hp%%/*}}; hp=${{hp##*@}}; host=${{hp%:80}}
case "$host" in *:*|"") echo DIRECT; exit 0;; esac
case "$host" in
  {cases}) ;;
  *) echo DIRECT; exit 0;;
esac
if command -v bash >/dev/null 2>&1 && timeout 2 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null; then
  echo http://{ip}:{port}/
else
  echo DIRECT
fi
"""


def install_argv(address: str, port: int, hosts: set[str]) -> list[str]:
    conf = f'Acquire::http::Proxy-Auto-Detect "{DETECT}";  // devenv package cache, while devenv provisions'
    return ["/bin/sh", "-c", _INSTALL, "devenv-cache", detector(address, port, hosts), conf]


def remove_argv() -> list[str]:
    return ["/bin/sh", "-c", REMOVE]


# What apt prints when a fetch failed (its own E:/W:/Err: lines, so another tool's "could not
# connect" never counts); with the cache in the way, the step runs again without it.
FETCH_FAILED = re.compile(
    r"^\s*(?:E|W): (?:Failed to fetch |Unable to fetch some archives|Some index files failed to download)"
    r"|^\s*Err:\d+ http://|Hash Sum mismatch|File has unexpected size"
)
# Machines with apt: the probe that comes before the cache is started for them.
PROBE = "[ -d /etc/apt/apt.conf.d ] && command -v apt-get >/dev/null 2>&1 && echo devenv:apt || echo devenv:no-apt"
_CORRUPT = re.compile(r"Failed to fetch (\S+)\s+(?:Hash Sum mismatch|File has unexpected size)")


def corrupt_files(lines: list[str]) -> set[str]:
    """The file names apt found corrupt (hash or size), from its output."""
    out: set[str] = set()
    text = "\n".join(lines)
    for m in _CORRUPT.finditer(text):
        name = unquote(m.group(1).rstrip("/").rsplit("/", 1)[-1])  # apt writes '+' as %2b
        if name:
            out.add(name)
    if not out and "Hash Sum mismatch" in text:
        for m in re.finditer(r"Failed to fetch (\S+)", text):
            out.add(unquote(m.group(1).rsplit("/", 1)[-1]))
    return {n for n in out if "/" not in n and n not in ("", ".", "..")}
