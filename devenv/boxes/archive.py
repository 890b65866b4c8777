"""Checked extraction of Vagrant .box archives. Standard library only, Python 3.11.0 and later.

A .box comes from the network, so its tar is hostile input. `tarfile.extractall(filter="data")`
is not relied on: Python 3.11.0-3.11.3 (Debian 12 ships 3.11.2) has no `filter=` at all, and
the filter itself had bypasses fixed only in later patch releases (CVE-2025-4517: a chain of
symlinks longer than PATH_MAX writes outside the folder). Instead every member is checked here
and written by devenv itself:

- its name is one plain file name from the allow-list of a box format (after a leading "./"):
  no "/", no "..", nothing absolute, nothing a box does not carry;
- it is a regular file (sparse included): links of any kind, devices, fifos and folders are
  refused; the archive's own "." folder entry is the one thing skipped;
- no name twice, at most MAX_MEMBERS members, the sizes summed against a cap
  (DEVENV_BOX_MAX_SIZE, default 64 GiB) and each checked against the free disk space;
- each file is created with O_CREAT|O_EXCL|O_NOFOLLOW relative to a descriptor of a fresh 0700
  folder this module made, so nothing it writes can land anywhere else.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

from devenv.errors import BoxError

# The pattern box recipes use for names and versions; it is also what a member may be called.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 255
MAX_MEMBERS = 64
DEFAULT_MAX_TOTAL = 64 * 1024**3
MAX_JSON = 1024 * 1024  # metadata.json, devenv.json, info.json: small by nature
MAX_OVF = 16 * 1024 * 1024

COMMON_FILES = frozenset({"metadata.json", "Vagrantfile", "info.json", "devenv.json"})
# What each box format may carry (checked against real boxes: vagrant-libvirt's create_box.sh and
# multi-disk boxes box_N.img; VirtualBox exports: box.ovf, box-disk001.vmdk, a .mf manifest,
# an EFI .nvram). Anything else is refused, including `vagrant package --include` folders.
_FORMAT_PATTERNS = {
    "libvirt": re.compile(r"box(_[0-9]{1,3})?\.img|vmlinuz|initrd\.img"),
    "virtualbox": re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.(ovf|vmdk|vdi|vhd|mf|nvram|cert)"),
}
FORMATS = tuple(_FORMAT_PATTERNS)
DISK_SUFFIXES = (".vmdk", ".vdi", ".vhd")

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def shown(text: str, limit: int = 120) -> str:
    """Text from an archive as it may appear in a message: as is when printable, else quoted with
    control and bidi characters escaped (they would drive the terminal)."""
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return cut if cut.isprintable() and cut.strip() == cut and cut else repr(cut)


def plain_name(name: str) -> bool:
    """One file name a box may use: the recipe pattern, no path, bounded length."""
    return len(name) <= MAX_NAME and NAME_RE.fullmatch(name) is not None


def allowed_in(fmt: str) -> Callable[[str], bool]:
    """The allow-list of one box format as a predicate on a member name."""
    pattern = _FORMAT_PATTERNS[fmt]
    return lambda name: plain_name(name) and (name in COMMON_FILES or pattern.fullmatch(name) is not None)


def allowed_in_any(name: str) -> bool:
    """A name some supported box format may carry (used while the format is not known yet)."""
    return any(allowed_in(fmt)(name) for fmt in FORMATS)


def max_total_bytes() -> int:
    """The cap on a box's unpacked size (and on a download): DEVENV_BOX_MAX_SIZE, e.g. 100GiB."""
    raw = os.environ.get("DEVENV_BOX_MAX_SIZE", "").strip()
    if not raw:
        return DEFAULT_MAX_TOTAL
    m = re.fullmatch(r"([0-9]{1,20})\s*([kKmMgGtT]?)(i?[bB])?", raw)
    if m is None or int(m.group(1)) == 0:
        raise BoxError(
            f"DEVENV_BOX_MAX_SIZE={shown(raw)} is not a size",
            hint="give bytes or a size such as 100GiB (the default is 64GiB)",
        )
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def _member_name(member: tarfile.TarInfo, what: str, allowed: Callable[[str], bool]) -> str | None:
    """The checked name a member is written under, None for the archive's own "." folder."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    if member.isdir() and name.rstrip("/") in ("", "."):
        return None
    if not plain_name(name) or not allowed(name):
        raise BoxError(
            f"{what}: the archive member {shown(member.name)} is not a file a box may contain; nothing was added",
            hint="a .box holds plain files at its root (metadata.json, the disks, Vagrantfile, ...): "
            "get the box from its publisher again",
        )
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE):
        kind = (
            "a symbolic link"
            if member.issym()
            else "a hard link"
            if member.islnk()
            else "a folder"
            if member.isdir()
            else "a device"
            if member.isdev() and not member.isfifo()
            else "a fifo"
            if member.isfifo()
            else f"of tar type {member.type!r}"
        )
        raise BoxError(
            f"{what}: the archive member {shown(member.name)} is {kind}; a box holds regular files only",
            hint="nothing was added; get the box from its publisher again",
        )
    return name


def _free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, dir_fd: int, what: str) -> None:
    src = tar.extractfile(member)
    if src is None:  # not a regular file after all
        raise BoxError(f"{what}: the archive member {shown(member.name)} has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise BoxError(f"{what}: cannot write {shown(name)}: {exc.strerror or exc}") from exc
    written = 0
    try:
        with src:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                try:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError as exc:
                    raise BoxError(
                        f"cannot unpack {what}: {exc.strerror or exc}",
                        hint="free some disk space (`devenv box prune` removes unused versions) and add it again",
                    ) from exc
                written += len(chunk)
    finally:
        os.close(fd)
    if written != member.size:
        raise BoxError(f"{what} is truncated: {shown(name)} holds {written} of {member.size} bytes")


def extract(
    archive: Path,
    parent: Path,
    *,
    what: str | None = None,
    allowed: Callable[[str], bool] = allowed_in_any,
    max_total: int | None = None,
) -> tuple[Path, dict[str, int]]:
    """Unpack `archive` into a fresh 0700 folder made inside `parent`.

    Returns the folder and {member name: size}. On any refusal or failure the folder is removed
    and a BoxError says why; nothing is ever written outside that folder.
    gzip, bzip2, xz and plain tar are read (what `tarfile` detects).
    """
    what = what or str(archive)
    cap = max_total if max_total is not None else max_total_bytes()
    folder = Path(tempfile.mkdtemp(prefix=".devenv-unpack-", dir=parent))
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            names = _extract_into(archive, folder, dir_fd, what, allowed, cap)
        finally:
            os.close(dir_fd)
    except BoxError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
        # A short or corrupt gzip/bzip2/xz stream surfaces as one of these, never as a write outside.
        shutil.rmtree(folder, ignore_errors=True)
        raise BoxError(
            f"{what} is not a valid .box archive: {exc}",
            hint="a .box is a tar (optionally gzip, bzip2 or xz); get it from its publisher again",
        ) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, names


def _extract_into(
    archive: Path, folder: Path, dir_fd: int, what: str, allowed: Callable[[str], bool], cap: int
) -> dict[str, int]:
    names: dict[str, int] = {}
    total = 0
    with tarfile.open(archive, mode="r:*") as tar:
        for member in tar:
            name = _member_name(member, what, allowed)
            if name is None:
                continue
            if name in names:
                raise BoxError(f"{what}: the archive holds {shown(name)} twice; nothing was added")
            if len(names) >= MAX_MEMBERS:
                raise BoxError(f"{what}: the archive holds more than {MAX_MEMBERS} files; a box has a few")
            total += member.size
            if total > cap:
                raise BoxError(
                    f"{what} unpacks to more than {_gib(cap)}; nothing was added",
                    hint="raise the cap with DEVENV_BOX_MAX_SIZE (e.g. 200GiB) if the box is meant to be this big",
                )
            free = _free_bytes(folder)
            if member.size > free:
                raise BoxError(
                    f"not enough free disk space to unpack {what}: {shown(name)} needs {_gib(member.size)}, "
                    f"{_gib(free)} free",
                    hint="free some disk space (`devenv box prune` removes unused versions) and add it again",
                )
            _write_member(tar, member, name, dir_fd, what)
            names[name] = member.size
    return names


def open_member(folder: Path, name: str, limit: int, what: str) -> bytes | None:
    """The bytes of an unpacked file (None when absent): a regular file of at most `limit` bytes."""
    path = folder / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise BoxError(f"{what}: {shown(name)} is not a regular file")
    if st.st_size > limit:
        raise BoxError(f"{what}: {shown(name)} is {st.st_size} bytes; more than the {limit} a box's {name} may have")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit + 1)[:limit]


def read_json(folder: Path, name: str, what: str) -> dict | None:
    """An unpacked JSON document that must be an object (None when the box has no such file)."""
    data = open_member(folder, name, MAX_JSON, what)
    if data is None:
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BoxError(
            f"{what}: {name} is not valid JSON ({exc})", hint="get the box from its publisher again"
        ) from None
    if not isinstance(doc, dict):
        raise BoxError(f"{what}: {name} must be a JSON object, not {type(doc).__name__}")
    return doc


def ovf_disk_files(folder: Path, ovf_name: str, what: str) -> list[str]:
    """The file names an OVF descriptor's <References><File href=...> list, in order, checked.

    Parsed with expat without namespace processing (a prefix VirtualBox did not declare is no
    error) and with every DTD, entity declaration and external entity refused.
    """
    import xml.parsers.expat

    data = open_member(folder, ovf_name, MAX_OVF, what)
    if data is None:
        raise BoxError(f"{what}: {shown(ovf_name)} is missing")
    lowered = data.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise BoxError(f"{what}: {shown(ovf_name)} declares a DTD or entities; an OVF descriptor has none")

    class Refused(Exception):
        pass

    def refuse(*_args: object) -> None:
        raise Refused()

    hrefs: list[str] = []
    stack: list[str] = []

    def local(tag: str) -> str:
        return tag.rpartition(":")[2]

    def start(tag: str, attrs: dict[str, str]) -> None:
        if local(tag) == "File" and stack and local(stack[-1]) == "References":
            href = next((v for k, v in attrs.items() if local(k) == "href"), None)
            if href is None:
                raise BoxError(f"{what}: {shown(ovf_name)} has a <File> without an href")
            hrefs.append(href)
        stack.append(tag)

    def end(_tag: str) -> None:
        stack.pop()

    parser = xml.parsers.expat.ParserCreate()
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except Refused:
        raise BoxError(f"{what}: {shown(ovf_name)} declares a DTD or entities; an OVF descriptor has none") from None
    except (xml.parsers.expat.ExpatError, RecursionError) as exc:
        raise BoxError(f"{what}: {shown(ovf_name)} is not valid XML ({exc})") from None
    out: list[str] = []
    for href in hrefs:
        if not plain_name(href) or not href.lower().endswith(DISK_SUFFIXES):
            raise BoxError(
                f"{what}: the OVF names the disk file {shown(href)}; a box's disks are plain file names "
                f"({', '.join(DISK_SUFFIXES)}) at the archive's root",
                hint="nothing was added; get the box from its publisher again",
            )
        if href not in out:
            out.append(href)
    return out
