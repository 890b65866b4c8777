"""Vagrant-compatible .box archives and box catalogs.

A .box is a tar (optionally gzip) with metadata.json at its root plus the provider's files.
For the libvirt provider (vagrant-libvirt's format): box.img (qcow2), metadata.json
{"provider": "libvirt", "format": "qcow2", "virtual_size": GB} and a Vagrantfile; devenv adds
vmlinuz/initrd.img for direct kernel boot and points the Vagrantfile at them.
A catalog is Vagrant's JSON: {"name", "versions": [{"version", "providers": [{"name", "url",
"checksum_type", "checksum"}]}]}.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from devenv.boxes import archive, diskcheck, store
from devenv.contract import QUIET, Reporter
from devenv.errors import BoxError, NotPublished, Unreachable
from devenv.model.schema import USER_NAME_PATTERN

LIBVIRT_VAGRANTFILE = """\
# Written by devenv: boots the box's own kernel and initrd (direct kernel boot).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "kvm"
    libvirt.kernel = File.expand_path("vmlinuz", __dir__)
    libvirt.initrd = File.expand_path("initrd.img", __dir__)
    libvirt.cmd_line = {cmdline}
  end
end
"""


def _virtual_size_gb(disk: Path) -> int:
    import subprocess

    r = subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        return 1
    return max(1, -(-json.loads(r.stdout)["virtual-size"] // 1024**3))


@contextlib.contextmanager
def _output_file(out: Path) -> Iterator[BinaryIO]:
    """A new file next to ``out`` that becomes ``out`` (atomically) when the block succeeds.

    Made by mkstemp (O_CREAT|O_EXCL, a random name, never through a link): a fixed sibling name
    like ``.OUT.tmp`` is one a repository can plant as a symlink to a host file, which a plain
    open(..., "w") would truncate and fill. os.replace puts the file in place of ``out`` itself
    (a link planted as ``out`` is replaced, never followed)."""
    parent = out.parent if str(out.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), 0o644)  # explicit, never the process umask
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_libvirt_box(stored: store.StoredBox, out: Path) -> Path:
    """Pack a stored libvirt box as a Vagrant .box (tar.gz), written atomically."""
    disk = stored.file("disk")
    if disk is None:
        raise BoxError(f"box {stored.name}@{stored.version} has no disk to pack")
    meta = {"provider": "libvirt", "format": "qcow2", "virtual_size": _virtual_size_gb(disk)}
    with (
        _output_file(out) as fh,
        tarfile.open(fileobj=fh, mode="w:gz", compresslevel=1) as tar,
        tempfile.TemporaryDirectory() as d,
    ):
        mp = Path(d) / "metadata.json"
        mp.write_text(json.dumps(meta) + "\n")
        tar.add(mp, "metadata.json")
        vf = Path(d) / "Vagrantfile"
        vf.write_text(LIBVIRT_VAGRANTFILE.format(cmdline=json.dumps(stored.meta.get("cmdline", ""))))
        tar.add(vf, "Vagrantfile")
        info = Path(d) / "devenv.json"
        info.write_text(json.dumps({k: v for k, v in stored.meta.items() if k != "files"}, indent=2) + "\n")
        tar.add(info, "devenv.json")
        tar.add(disk, "box.img")
        for key, arc in (("kernel", "vmlinuz"), ("initrd", "initrd.img")):
            f = stored.file(key)
            if f is not None:
                tar.add(f, arc)
    return out


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Only collision-resistant digests verify a box: md5 and sha1 are refused, not accepted weakly.
CHECKSUM_TYPES = {"sha256": 64, "sha512": 128}
CATALOG_MAX = 16 * 1024 * 1024


def parse_checksum(text: str | None) -> tuple[str, str] | None:
    """'sha256:HEX', 'sha512:HEX' or a bare HEX (its length tells which) -> (algo, hex)."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise BoxError(f"a checksum must be text like sha256:HEX, not {type(text).__name__}")
    text = text.strip()
    if ":" in text:
        algo, _, value = text.partition(":")
    else:
        algo, value = {128: "sha512"}.get(len(text), "sha256"), text
    algo, value = algo.strip().lower(), value.strip().lower()
    if algo not in CHECKSUM_TYPES:
        weak = " (md5 and sha1 no longer prove a file is the published one)" if algo in ("md5", "sha1") else ""
        raise BoxError(
            f"unsupported checksum type {archive.shown(algo)}{weak}; nothing was downloaded",
            hint="use sha256:HEX or sha512:HEX (ask the box's publisher for one)",
        )
    if len(value) != CHECKSUM_TYPES[algo] or any(c not in "0123456789abcdef" for c in value):
        raise BoxError(
            f"invalid {algo} checksum {archive.shown(value)}: it must be {CHECKSUM_TYPES[algo]} hex digits",
            hint=f"give it as {algo}:HEX",
        )
    return algo, value


def _is_remote(ref: str) -> bool:
    return urllib.parse.urlparse(ref).scheme.lower() in ("http", "https")


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http/https (urllib would also follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urllib.parse.urlparse(newurl).scheme.lower() not in ("http", "https"):
            raise BoxError(f"{req.full_url} redirects to {archive.shown(newurl)}; only http(s) is followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _http_auth(parsed: urllib.parse.ParseResult) -> str | None:
    """The Authorization a catalog or box download sends, from the user's environment only (never
    stored by devenv, never in a Devfile or recipe): DEVENV_HTTP_TOKEN (Bearer), or
    DEVENV_HTTP_USER + DEVENV_HTTP_PASSWORD (Basic). Only over https, or plain http to loopback:
    a credential never crosses a network in clear text."""
    import base64
    import ipaddress

    token = os.environ.get("DEVENV_HTTP_TOKEN")
    user, password = os.environ.get("DEVENV_HTTP_USER"), os.environ.get("DEVENV_HTTP_PASSWORD")
    if not token and not (user and password):
        return None
    host = parsed.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parsed.scheme.lower() != "https" and not loopback:
        raise BoxError(
            f"refusing to send DEVENV_HTTP_* credentials to {archive.shown(parsed.geturl())} over plain http",
            hint="use the https:// URL (or unset DEVENV_HTTP_TOKEN / DEVENV_HTTP_USER for a public catalog)",
        )
    if token:
        return f"Bearer {token}"
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def fetch(url_or_path: str, dest: Path, *, max_bytes: int | None = None, reporter: Reporter = QUIET) -> Path:
    """A local path or a file:// / http(s):// URL, downloaded to a temp file first (no partial file).

    A download is capped at `max_bytes` (default: DEVENV_BOX_MAX_SIZE): a Content-Length over it is
    refused before reading, and reading stops once the cap is passed.
    """
    cap = max_bytes if max_bytes is not None else archive.max_total_bytes()
    parsed = urllib.parse.urlparse(url_or_path)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file"):
        src = Path(urllib.parse.unquote(parsed.path) if scheme else url_or_path).expanduser()
        if not src.is_file():
            raise BoxError(f"box file not found: {src}")
        if src.stat().st_size > cap:
            raise BoxError(f"{src} is larger than {cap} bytes", hint="raise DEVENV_BOX_MAX_SIZE if it is meant to be")
        return src
    if scheme not in ("http", "https"):
        raise BoxError(
            f"cannot fetch {archive.shown(url_or_path)}: only paths, file://, http:// and https:// are supported"
        )
    tmp = dest.with_name(f".{dest.name}.part")
    opener = urllib.request.build_opener(_SameSchemeRedirects)
    request = urllib.request.Request(url_or_path)
    auth = _http_auth(parsed)
    if auth:
        # Unredirected: a redirect (to a bucket, a CDN, anywhere) never carries the credential on.
        request.add_unredirected_header("Authorization", auth)
    started = time.monotonic()
    try:
        with reporter.progress(None, f"downloading {url_or_path}") as note:
            with opener.open(request, timeout=60) as r, open(tmp, "wb") as f:
                length = (r.headers.get("Content-Length") or "").strip()
                expected = int(length) if length.isdigit() else None
                if expected is not None and expected > cap:
                    raise BoxError(
                        f"{url_or_path} is {expected} bytes, more than the {cap} devenv accepts; nothing was added",
                        hint="raise DEVENV_BOX_MAX_SIZE if the box is meant to be this big",
                    )
                n = 0
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    n += len(chunk)
                    if n > cap:
                        raise BoxError(
                            f"{url_or_path} sent more than {cap} bytes; the download was stopped",
                            hint="raise DEVENV_BOX_MAX_SIZE if the box is meant to be this big",
                        )
                    f.write(chunk)
                    note.transfer(n, expected or n, started)
                if expected is not None and n != expected:
                    raise BoxError(
                        f"download of {url_or_path} was interrupted ({n} of {expected} bytes)", hint="try again"
                    )
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, a malformed URL or response
        tmp.unlink(missing_ok=True)
        if isinstance(exc, urllib.error.HTTPError) and exc.code == 404:
            raise NotPublished(f"cannot download {url_or_path}: {exc}", hint="check the URL") from exc
        raise Unreachable(f"cannot download {url_or_path}: {exc}", hint="check the URL and the network") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


def verify(path: Path, checksum: tuple[str, str] | None, what: str) -> str:
    """The file's sha256; a BoxError when it does not have the checksum given.

    The digest actually found is never printed: with a hostile catalog it would tell the sha256
    of any file devenv can read.
    """
    digest = _digest(path, "sha256")
    if checksum is not None:
        algo, expected = checksum
        actual = digest if algo == "sha256" else _digest(path, algo)
        if actual != expected:
            raise BoxError(
                f"checksum mismatch for {what}: it does not have {algo}:{expected}; the box was not added",
                hint="the file is corrupt or not the one published: download it again or check the checksum",
            )
    return digest


@dataclass
class Unpacked:
    """A .box unpacked into devenv's own temporary folder, its metadata checked."""

    folder: Path
    names: dict[str, int]
    provider: str
    extra: dict  # devenv.json, only the keys devenv uses, each of the right type


_USER_RE = re.compile(USER_NAME_PATTERN)  # shared with the Devfile options and recipes


def _extra(doc: dict | None, what: str) -> dict:
    """The keys devenv reads from a box's devenv.json, each checked: it is a downloaded file."""
    if not doc:
        return {}
    checks = {
        "cmdline": lambda v: isinstance(v, str) and len(v) <= 4096 and v.isprintable(),
        # ssh_user goes onto ssh's command line: a name, never something that reads as an option.
        "ssh_user": lambda v: isinstance(v, str) and _USER_RE.fullmatch(v) is not None,
        "sync": lambda v: isinstance(v, list) and all(x in ("virtiofs", "9p", "rsync") for x in v),
        "baked": lambda v: (
            isinstance(v, list) and all(isinstance(x, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", x) for x in v)
        ),
        "description": lambda v: isinstance(v, str) and len(v) <= 4096,
        "guest_additions": lambda v: isinstance(v, bool),
    }
    out = {}
    for key, ok in checks.items():
        if key in doc:
            if not ok(doc[key]):
                raise BoxError(
                    f"{what}: devenv.json has an invalid {key!r}: {archive.shown(repr(doc[key]), 80)}",
                    hint="nothing was added; get the box from its publisher again",
                )
            out[key] = doc[key]
    return out


def unpack(path: Path, parent: Path, *, what: str, provider: str | None = None) -> Unpacked:
    """Unpack a .box with checked members and check its metadata (and provider, when one is asked)."""
    folder, names = archive.extract(path, parent, what=what)
    try:
        meta = archive.read_json(folder, "metadata.json", what)
        if meta is None:
            raise BoxError(f"{what} is not a Vagrant box: no metadata.json at its root")
        got = meta.get("provider")
        if got not in archive.FORMATS:
            raise BoxError(
                f"{what} is a {archive.shown(str(got))} box; devenv adds libvirt and virtualbox boxes",
                hint='run it through the Vagrant bridge (driver = "vagrant") instead',
            )
        if got == "libvirt" and meta.get("format", "qcow2") != "qcow2":
            raise BoxError(
                f"{what}: its metadata.json says format {archive.shown(repr(meta.get('format')), 40)}; "
                "devenv adds libvirt boxes with a qcow2 disk only",
                hint="nothing was added",
            )
        if provider is not None and got != provider:
            raise BoxError(
                f"{what} is a {got} box, but a {provider} box was asked for; nothing was added",
                hint="the catalog (or recipe) lists it under the wrong provider: tell its publisher",
            )
        allowed = archive.allowed_in(got)
        stray = sorted(n for n in names if not allowed(n))
        if stray:
            raise BoxError(
                f"{what}: a {got} box does not contain {', '.join(map(archive.shown, stray))}; nothing was added"
            )
        extra = _extra(archive.read_json(folder, "devenv.json", what), what)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Unpacked(folder, names, got, extra)


def add_box_file(
    path: Path,
    *,
    name: str,
    version: str,
    checksum: str | None = None,
    provider: str | None = None,
    source: dict | None = None,
) -> store.StoredBox:
    """Import a .box file into the box store after verifying its checksum.

    `provider`: the provider the caller expects (a catalog's entry); a box of another one is
    refused. `source`: what is recorded as the box's origin (default: the file's path).
    """
    store.check_name(name, "box name")
    store.check_name(version, "box version")
    parsed = parse_checksum(checksum)
    sha = verify(path, parsed, str(path))
    # Unpacked next to the store (same file system): storing the disks is then a rename.
    box = unpack(path, store.ensure_store_root(), what=str(path), provider=provider)
    try:
        origin = dict(source) if source else {"file": str(Path(path).resolve())}
        origin["sha256"] = sha
        if box.provider == "virtualbox":
            return _add_virtualbox(box, path, name=name, version=version, origin=origin)
        if "box.img" not in box.names:
            raise BoxError(f"{path}: a libvirt box needs box.img")
        work = box.folder
        # The disk names no other file (backing file, data file, ...): QEMU would open it on this host.
        diskcheck.inspect(work / "box.img", ("qcow2",), f"{path}: box.img")
        files = {"disk": work / "box.img"}
        for key, fn in (("kernel", "vmlinuz"), ("initrd", "initrd.img")):
            if fn in box.names:
                files[key] = work / fn
        if ("kernel" in files) != ("initrd" in files):
            raise BoxError(f"{path}: a box with a kernel needs its initrd too (vmlinuz and initrd.img)")
        extra = {k: v for k, v in box.extra.items() if k in ("cmdline", "ssh_user", "sync", "baked", "description")}
        if "kernel" not in files:
            extra["bootloader"] = True
        extra["source"] = origin
        return store.store_box(name, version, "libvirt", files, extra, work=work)
    finally:
        shutil.rmtree(box.folder, ignore_errors=True)


def add(
    source: str,
    *,
    name: str | None = None,
    version: str | None = None,
    checksum: str | None = None,
    insecure: bool = False,
    reporter: Reporter = QUIET,
) -> store.StoredBox:
    """`devenv box add SOURCE`: a catalog (.json) or a .box file (a path or a URL).

    Everything that can be refused is refused before anything is downloaded: the names, the
    checksum's type, a remote box without a checksum (unless `insecure`, which is recorded).
    """
    if name is not None:
        store.check_name(name, "box name")
    if version is not None:
        store.check_name(version, "box version")
    if source.endswith(".json"):
        if checksum:
            raise BoxError(
                "--checksum is for a .box file; a catalog carries the checksum of each of its boxes",
                hint=f"run `devenv box add {source}` without --checksum",
            )
        return add_from_catalog(source, version=version, name=name, reporter=reporter)
    parsed = parse_checksum(checksum)
    remote = _is_remote(source)
    if remote and parsed is None and not insecure:
        raise BoxError(
            f"refusing to add {source} without a checksum: a downloaded box must be verified",
            hint="pass --checksum sha256:HEX (from the box's publisher), or --insecure to add it unverified "
            "(recorded in the box's source)",
        )
    path_part = urllib.parse.unquote(urllib.parse.urlparse(source).path) if "://" in source else source
    stem = path_part.rstrip("/").rsplit("/", 1)[-1].removesuffix(".box")
    if name is None and not store.valid_name(stem):
        raise BoxError(
            f"cannot name the box after {archive.shown(stem)}: not a plain name",
            hint="give one with --name NAME",
        )
    origin: dict = {"url": source} if remote else {"file": str(Path(path_part).expanduser().resolve())}
    if remote and parsed is None:
        origin["insecure"] = True
    with tempfile.TemporaryDirectory(prefix="devenv-download-") as tmp:
        path = fetch(source, Path(tmp) / "download.box", reporter=reporter)
        return add_box_file(Path(path), name=name or stem, version=version or "0", checksum=checksum, source=origin)


def _catalog_str(value: object, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BoxError(f"{what} must be text, not {type(value).__name__}")
    return str(value)


def add_from_catalog(
    catalog_ref: str, *, version: str | None = None, name: str | None = None, reporter: Reporter = QUIET
) -> store.StoredBox:
    """Resolve a Vagrant catalog (JSON): the newest (or given) version with a libvirt provider.

    A remote catalog may point only at http(s) URLs (never file:, never the user's own disk); the
    checksum type is checked before the box is downloaded; the box must be the provider listed.
    """
    remote = _is_remote(catalog_ref)
    with tempfile.TemporaryDirectory(prefix="devenv-catalog-") as d:
        path = fetch(catalog_ref, Path(d) / "catalog.json", max_bytes=CATALOG_MAX, reporter=reporter)
        try:
            cat = json.loads(Path(path).read_bytes().decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise BoxError(f"{catalog_ref} is not a box catalog (invalid JSON: {exc})") from None
        if not isinstance(cat, dict) or not isinstance(cat.get("versions", []), list):
            raise BoxError(f"{catalog_ref} is not a box catalog: expected {{'name', 'versions': [...]}}")
        raw_name = cat.get("name") or "box"
        if not isinstance(raw_name, str):
            raise BoxError(f"catalog {catalog_ref}: 'name' must be text")
        box_name = store.check_name(name or raw_name.replace("/", "-"), "box name (from the catalog)")
        candidates = []
        for v in cat.get("versions", []):
            if not isinstance(v, dict) or not isinstance(v.get("providers", []), list):
                raise BoxError(f"catalog {catalog_ref}: every entry of 'versions' must be an object with 'providers'")
            for p in v.get("providers", []):
                if not isinstance(p, dict) or p.get("name") != "libvirt":
                    continue
                ver = _catalog_str(v.get("version"), f"catalog {catalog_ref}: a version")
                store.check_name(ver, "box version (from the catalog)")
                if version is None or ver == version:
                    candidates.append((store.version_key(ver), ver, p))
        if not candidates:
            raise NotPublished(
                f"catalog {catalog_ref} has no libvirt box" + (f" at version {version}" if version else "")
            )
        _, ver, prov = max(candidates, key=lambda c: c[0])
        if not prov.get("checksum"):
            raise BoxError(f"catalog {catalog_ref}: {box_name}@{ver} has no checksum; devenv adds only verified boxes")
        ctype = _catalog_str(prov.get("checksum_type", "sha256"), "checksum_type")
        checksum = f"{ctype}:{_catalog_str(prov['checksum'], 'checksum')}"
        parse_checksum(checksum)  # before any download
        rel = _catalog_str(prov.get("url", ""), f"catalog {catalog_ref}: {box_name}@{ver} url")
        base = catalog_ref if "://" in catalog_ref else Path(catalog_ref).resolve().as_uri()
        url = urllib.parse.urljoin(base, rel)
        if remote and not _is_remote(url):
            raise BoxError(
                f"catalog {catalog_ref}: {box_name}@{ver} points at {archive.shown(url)}; a remote catalog may "
                "point only at http:// or https:// URLs",
                hint="nothing was read from this machine; tell the catalog's publisher",
            )
        box_path = fetch(url, Path(d) / "download.box", reporter=reporter)
        source = {"url": url, "catalog": catalog_ref}
        return add_box_file(
            Path(box_path), name=box_name, version=ver, checksum=checksum, provider="libvirt", source=source
        )


def _add_virtualbox(box: Unpacked, path: Path, *, name: str, version: str, origin: dict) -> store.StoredBox:
    """The virtualbox provider's layout: an OVF descriptor and the disks it names."""
    work = box.folder
    ovfs = sorted(n for n in box.names if n.endswith(".ovf"))
    if not ovfs:
        raise BoxError(f"{path}: a virtualbox box needs an .ovf descriptor at its root")
    if len(ovfs) > 1:
        raise BoxError(f"{path}: a virtualbox box has one .ovf descriptor, this one has {', '.join(ovfs)}")
    ovf = work / ovfs[0]
    names = archive.ovf_disk_files(work, ovfs[0], str(path))  # only the disk list is taken from it
    missing = [n for n in names if n not in box.names]
    if not names or missing:
        raise BoxError(
            f"{path}: the OVF names disk files that are not in the box: "
            f"{', '.join(map(archive.shown, missing)) or '(none)'}"
        )
    if len(names) > MAX_OVF_DISKS:
        raise BoxError(f"{path}: the OVF names {len(names)} disks; devenv imports boxes with at most {MAX_OVF_DISKS}")
    disks = [work / n for n in names]
    # Each disk self-contained (no text descriptor, no extent or parent naming another file).
    checked = [diskcheck.inspect(d, ("vmdk",), f"{path}: {d.name}") for d in disks]
    # The downloaded OVF is not kept: it may carry VirtualBox's own machine settings (<vbox:Machine>:
    # shared folders of the host, serial ports writing host files, bridged or forwarded NICs) that
    # `VBoxManage import` applies. devenv writes its own from the checked disks; only that is stored.
    ovf.unlink()
    ovf = work / "box.ovf"
    ovf.write_text(render_ovf([(d.name, c) for d, c in zip(disks, checked, strict=True)], name=f"{name}-{version}"))
    files = {"ovf": ovf, "disk": disks[0]}
    for i, d in enumerate(disks[1:], start=2):
        files[f"disk{i}"] = d
    vagrantfile = (archive.open_member(work, "Vagrantfile", 1024 * 1024, str(path)) or b"").decode("utf-8", "replace")
    meta = {k: v for k, v in box.extra.items() if k in ("ssh_user", "guest_additions", "baked", "description")}
    meta.setdefault("ssh_user", "vagrant" if "vagrant" in vagrantfile or not box.extra else "root")
    meta.setdefault("guest_additions", False)
    meta["source"] = origin
    return store.store_box(name, version, "virtualbox", files, meta, work=work)


OVF_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by devenv: one BIOS-bootable disk (SYSLINUX) on an IDE controller, NAT networking. -->
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:id="file1" ovf:href="{disk}"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1"
        ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks</Info>
    <Network ovf:name="NAT"><Description>NAT</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A devenv box</Info>
    <OperatingSystemSection ovf:id="96">
      <Info>Guest OS</Info><Description>Debian_64</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType></System>
      <Item><rasd:Caption>1 virtual CPU</rasd:Caption><rasd:ElementName>1 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:Caption>1024 MB of memory</rasd:Caption>
        <rasd:ElementName>1024 MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:Caption>ideController0</rasd:Caption>
        <rasd:ElementName>ideController0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>PIIX4</rasd:ResourceSubType><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on NAT</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection><rasd:ElementName>Ethernet adapter on NAT</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceSubType>virtio</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:Caption>disk1</rasd:Caption>
        <rasd:ElementName>disk1</rasd:ElementName><rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


MAX_OVF_DISKS = 4  # the four places of the IDE controller devenv's OVF puts them on
_VMDK_FORMATS = {
    "streamOptimized": "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
    "monolithicSparse": "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse",
}


def render_ovf(disks: list[tuple[str, diskcheck.DiskInfo]], *, name: str) -> str:
    """devenv's own OVF descriptor (OVF_TEMPLATE) for checked VMDK disks, the first one booted.

    Nothing in it comes from a download but the disks' plain file names (checked) and sizes (read
    from the disks themselves): one NAT adapter, an IDE controller, no shared folder, no serial port.
    """
    if not 1 <= len(disks) <= MAX_OVF_DISKS:
        raise BoxError(f"a VirtualBox box has 1 to {MAX_OVF_DISKS} disks, not {len(disks)}")
    for href, _ in disks:
        if not archive.plain_name(href) or not href.endswith(".vmdk"):
            raise BoxError(f"refusing to name the disk {archive.shown(href)} in an OVF: not a plain .vmdk name")
    if not store.valid_name(name):
        raise BoxError(f"refusing to name a VirtualBox box {archive.shown(name)}: not a plain name")

    def fmt(info: diskcheck.DiskInfo) -> str:
        return _VMDK_FORMATS.get(info.subformat, _VMDK_FORMATS["streamOptimized"])

    first, info = disks[0]
    text = OVF_TEMPLATE.format(disk=first, capacity=info.virtual_size, name=name).replace(
        _VMDK_FORMATS["streamOptimized"], fmt(info)
    )
    refs, entries, items = [], [], []
    for i, (href, info) in enumerate(disks[1:], start=2):
        refs.append(f'    <File ovf:id="file{i}" ovf:href="{href}"/>\n')
        entries.append(
            f'    <Disk ovf:capacity="{info.virtual_size}" ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}"\n'
            f'        ovf:format="{fmt(info)}"/>\n'
        )
        items.append(
            f"      <Item><rasd:AddressOnParent>{i - 1}</rasd:AddressOnParent><rasd:Caption>disk{i}</rasd:Caption>\n"
            f"        <rasd:ElementName>disk{i}</rasd:ElementName><rasd:HostResource>/disk/vmdisk{i}"
            f"</rasd:HostResource>\n        <rasd:InstanceID>{4 + i}</rasd:InstanceID><rasd:Parent>3</rasd:Parent>"
            "<rasd:ResourceType>17</rasd:ResourceType></Item>\n"
        )
    text = text.replace("  </References>", "".join(refs) + "  </References>", 1)
    text = text.replace("  </DiskSection>", "".join(entries) + "  </DiskSection>", 1)
    return text.replace("    </VirtualHardwareSection>", "".join(items) + "    </VirtualHardwareSection>", 1)


# What devenv's own OVF holds (render_ovf). A stored OVF with anything else -- VirtualBox's
# <vbox:Machine> settings, a serial port, a non-NAT adapter -- was not written by this devenv.
# Devices with no host side: CPU, memory, IDE/SCSI/SATA controllers, NIC (NAT only), disk, CD/DVD, floppy.
_OVF_RESOURCE_TYPES = {"3", "4", "5", "6", "10", "14", "15", "16", "17", "20"}


def check_own_ovf(path: Path, what: str) -> None:
    """Refuse a stored OVF that carries more than devenv's own descriptor would (see render_ovf).

    A box added by an older devenv kept the downloaded OVF; this stops it at import.
    """
    import xml.etree.ElementTree as ET

    data = archive.open_member(path.parent, path.name, archive.MAX_OVF, what)
    if data is None:
        raise BoxError(f"{what}: {path} is missing")
    lowered = data.lower()
    problem = None
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        problem = "it declares a DTD or entities"
    else:
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            problem = f"it is not valid XML ({exc})"
        else:
            for el in root.iter():
                local = el.tag.rpartition("}")[2]
                if local == "Machine" or el.tag.startswith("{http://www.virtualbox.org/"):
                    problem = "it carries VirtualBox machine settings (<vbox:Machine>)"
                elif local == "ResourceType" and (el.text or "").strip() not in _OVF_RESOURCE_TYPES:
                    problem = f"it describes a device of resource type {archive.shown((el.text or '').strip())}"
                elif local == "File" and not all(
                    archive.plain_name(v) for k, v in el.attrib.items() if k.rpartition("}")[2] == "href"
                ):
                    problem = "it names a file that is not a plain name beside it"
                elif local == "Connection" and (el.text or "").strip() != "NAT":
                    problem = f"it connects an adapter to {archive.shown((el.text or '').strip())}, not NAT"
                if problem:
                    break
    if problem:
        raise BoxError(
            f"{what}: the stored OVF {path} is not one devenv wrote: {problem}",
            hint="it was added by an older devenv, which kept the downloaded OVF: remove the box "
            "(`devenv box remove NAME@VERSION`) and add it again",
        )


def write_virtualbox_box(stored: store.StoredBox, out: Path) -> Path:
    """Pack a libvirt box for VirtualBox: its root put on a BIOS-bootable disk (SYSLINUX), as VMDK + OVF.

    Verified here by booting the same disk under QEMU without direct kernel boot; VirtualBox itself
    cannot run on our machines.
    """
    import subprocess

    from devenv.boxes import biosdisk

    disk, kernel, initrd = stored.file("disk"), stored.file("kernel"), stored.file("initrd")
    if disk is None or kernel is None or initrd is None:
        raise BoxError(f"box {stored.name}@{stored.version}: a VirtualBox box is made from a libvirt box with a kernel")
    cmdline = stored.meta.get("cmdline", "").replace("root=/dev/vda", "root=LABEL=root")
    if "root=" not in cmdline:
        cmdline = ("root=LABEL=root rw " + cmdline).strip()
    diskcheck.inspect(disk, ("qcow2",), f"box {stored.name}@{stored.version}")  # before qemu-img opens it
    with tempfile.TemporaryDirectory(dir=out.parent) as d:
        work = Path(d)
        root = work / "root.raw"
        r = subprocess.run(
            ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(disk), str(root)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise BoxError(f"qemu-img convert failed: {r.stderr.strip()}")
        raw = work / "bios.raw"
        biosdisk.make_bios_disk(root, kernel, initrd, cmdline, raw)
        root.unlink()
        vmdk = work / "box-disk001.vmdk"
        r = subprocess.run(
            [
                "qemu-img",
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
                str(raw),
                str(vmdk),
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise BoxError(f"qemu-img convert to vmdk failed: {r.stderr.strip()}")
        capacity = raw.stat().st_size
        raw.unlink()
        (work / "box.ovf").write_text(
            render_ovf(
                [(vmdk.name, diskcheck.DiskInfo("vmdk", capacity, "streamOptimized"))],
                name=f"{stored.name}-{stored.version}",
            )
        )
        (work / "metadata.json").write_text(json.dumps({"provider": "virtualbox"}) + "\n")
        (work / "Vagrantfile").write_text('Vagrant.configure("2") do |config|\n  config.vm.base_mac = nil\nend\n')
        extra = {k: v for k, v in stored.meta.items() if k in ("baked", "description")}
        (work / "devenv.json").write_text(json.dumps({**extra, "ssh_user": "root", "guest_additions": False}) + "\n")
        with _output_file(out) as fh, tarfile.open(fileobj=fh, mode="w") as tar:  # VMDK is compressed already
            for name in ("metadata.json", "box.ovf", vmdk.name, "Vagrantfile", "devenv.json"):
                tar.add(work / name, name)
    return out
