"""Vagrant boxes -> devenv boxes: the table import-vagrant maps `config.vm.box` with.

devenv boots its own boxes, built locally from the Debian mirror (`debian-12`), not Vagrant
Cloud's. Debian boxes map to it; any other box maps to it too, with a note naming the original
box and what may differ, so that a migrated machine says plainly what it runs.
"""

from __future__ import annotations

import re

DEVENV_BOX = "debian-12"
DEVENV_RELEASE = 12

DEBIAN_CODENAMES = {
    "squeeze": 6,
    "wheezy": 7,
    "jessie": 8,
    "stretch": 9,
    "buster": 10,
    "bullseye": 11,
    "bookworm": 12,
    "trixie": 13,
    "sid": None,
    "testing": None,
}

# (pattern on the box name, how it reads in a note) for the Debian boxes of the table:
# debian/*64, bento/debian-*, generic/debian*.
_DEBIAN = (
    re.compile(r"debian/(?:contrib-)?(?P<codename>[a-z]+)64", re.I),
    re.compile(r"bento/debian-(?P<release>\d+)(?:\.\d+)*(?:-i386|-amd64|-arm64)?", re.I),
    re.compile(r"generic/debian(?P<release>\d+)", re.I),
    re.compile(r"generic-[a-z0-9]+/debian(?P<release>\d+)", re.I),
)

# Other distributions, by a word in the box name: what a migrated machine finds different.
_FAMILIES = (
    (
        r"ubuntu|precise|trusty|xenial|bionic|focal|jammy|noble",
        "Ubuntu",
        "apt works the same; package versions "
        "and some names differ (Debian 12 is close to Ubuntu 22.04/24.04), and PPAs (add-apt-repository) do not "
        "apply",
    ),
    (
        r"centos|rocky|alma|rhel|oracle|fedora|amazon|amzn|scientific",
        "a Red Hat family distribution",
        "its scripts use yum/dnf, rpm package names and SELinux; rewrite them for apt and Debian package names",
    ),
    (r"alpine", "Alpine Linux", "apk becomes apt, OpenRC becomes systemd, musl becomes glibc"),
    (r"arch|manjaro", "Arch Linux", "pacman becomes apt, rolling packages become Debian 12's"),
    (r"suse|sles", "openSUSE/SLES", "zypper becomes apt; package names differ"),
    (r"gentoo", "Gentoo", "portage becomes apt"),
    (
        r"freebsd|openbsd|netbsd|dragonfly",
        "a BSD system",
        "devenv runs Linux machines: the Vagrantfile's provisioning (pkg, rc.d) will not run as it is",
    ),
    (
        r"win|windows",
        "Windows",
        "devenv runs Linux machines: a Windows guest, its PowerShell provisioners and WinRM are not carried over",
    ),
    (r"macos|osx", "macOS", "devenv runs Linux machines"),
)


def map_box(box: str | None) -> tuple[str, str, str]:
    """(devenv box, kind of note, note text) for a Vagrant box name.

    The note kind is "info" for a Debian 12 box (the same release, devenv's own build) and
    "changed" otherwise."""
    if not box:
        return DEVENV_BOX, "changed", f"the Vagrantfile names no box: {DEVENV_BOX}, devenv's own Debian 12 box"
    release = _debian_release(box)
    if release == DEVENV_RELEASE:
        return (
            DEVENV_BOX,
            "info",
            f'Vagrant box "{box}" (Debian 12): devenv\'s own {DEVENV_BOX}, built from the Debian mirror',
        )
    if release is not None or _is_debian_name(box):
        was = f"Debian {release}" if release else "Debian (testing/unstable)"
        return (
            DEVENV_BOX,
            "changed",
            f'Vagrant box "{box}" ({was}) -> {DEVENV_BOX} (Debian 12, bookworm): package versions differ, and '
            "packages renamed between releases may need new names",
        )
    for pattern, name, differs in _FAMILIES:
        if re.search(pattern, box, re.I):
            return DEVENV_BOX, "changed", f'Vagrant box "{box}" is {name}; devenv uses {DEVENV_BOX} instead: {differs}'
    return (
        DEVENV_BOX,
        "changed",
        f'Vagrant box "{box}" -> {DEVENV_BOX} (Debian 12): devenv boots its own boxes, not Vagrant Cloud\'s; what '
        "the box had installed (and its distribution, if it is not Debian) may differ",
    )


def _debian_release(box: str) -> int | None:
    for pattern in _DEBIAN:
        m = pattern.fullmatch(box)
        if not m:
            continue
        groups = m.groupdict()
        if groups.get("release"):
            return int(groups["release"])
        return DEBIAN_CODENAMES.get(groups.get("codename", "").lower())
    return None


def _is_debian_name(box: str) -> bool:
    return bool(re.fullmatch(r"debian/[a-z-]+64", box, re.I))
