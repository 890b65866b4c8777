"""Boxes in an OCI registry: a VM box's files as one OCI artifact, pushed and pulled by digest.

A box's libvirt output (disk, kernel, initrd) is an OCI image manifest whose config is the box's
metadata (application/vnd.devenv.box.config.v1+json: name, version, provider, what it baked, its
recipe's identity, each file's sha256) and whose layers are its files (title annotations name
them). Tags: ``VERSION-PROVIDER`` (``2026.12.2-libvirt``); the Docker output is an ordinary image
under ``VERSION`` in the same repository, pushed and pulled by the engine itself.

The HTTP and the registry's authentication (Docker's config.json, credential stores, token and
basic auth) are the ORAS client's (oras-py); what devenv does itself is what a box needs: every
blob is hashed while it streams into a partial file and checked against the manifest's digest and
size before it is kept, a manifest named by digest is checked against that digest, and nothing is
stored until all of it checks out. Plain HTTP only to loopback registries, as Docker does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from devenv.errors import BackendUnavailable, BoxError, NotPublished, UsageError
from devenv.model.refs import REGISTRY_REPO

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.devenv.box.v1"
CONFIG_TYPE = "application/vnd.devenv.box.config.v1+json"
FILE_TYPE = "application/vnd.devenv.box.file.v1"
TITLE = "org.opencontainers.image.title"
KEY = "dev.devenv.box.key"  # which of the box's files a layer is: disk, kernel, initrd, ...
CHUNK = 8 * 1024 * 1024
MAX_MANIFEST = 4 * 1024 * 1024
TIMEOUT = 30  # seconds without a byte: a registry that stalls is reported, not waited on forever

_REF = re.compile(
    REGISTRY_REPO + r"(:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(@(?P<digest>sha256:[0-9a-f]{64}))?"
)
REF_HELP = "oci://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST], e.g. oci://registry.example.com/boxes/debian-12"


class OciRef(NamedTuple):
    host: str
    repo: str
    tag: str | None = None
    digest: str | None = None

    def with_tag(self, tag: str) -> OciRef:
        return self._replace(tag=tag)

    @property
    def reference(self) -> str:
        """What the manifest URL names: the digest when there is one (it decides), else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def image(self) -> str:
        """The engine's spelling: HOST/REPO:TAG or HOST/REPO@DIGEST."""
        base = f"{self.host}/{self.repo}"
        return f"{base}@{self.digest}" if self.digest else f"{base}:{self.tag or 'latest'}"

    def __str__(self) -> str:
        text = f"oci://{self.host}/{self.repo}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_ref(text: str) -> OciRef:
    m = _REF.fullmatch(text or "")
    if m is None:
        raise UsageError(f"'{text}' is not a registry reference", hint=f"write it as {REF_HELP}")
    return OciRef(m["host"], m["repo"], m["tag"], m["digest"])


def is_loopback(host: str) -> bool:
    import ipaddress

    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


Progress = Callable[[int, int], None]  # (bytes so far, total)


def docker_config() -> str:
    """Docker's client config (its credentials and credential stores): $DOCKER_CONFIG/config.json,
    else ~/.docker/config.json -- the file `docker login` writes."""
    folder = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    return os.path.join(folder, "config.json")


class Registry:
    """One registry host, through the ORAS client: its auth, its session."""

    def __init__(self, host: str) -> None:
        try:
            import oras.client
            import oras.logger
        except ImportError as exc:
            raise BackendUnavailable(
                "registry boxes need the ORAS client (oras-py), which is not installed",
                hint="pip install 'devenv[registry]'",
            ) from exc
        import logging

        # devenv reports what happened; the library prints nothing (its warnings go to this logger).
        logging.getLogger(oras.logger.__name__).disabled = True
        self.host = host
        insecure = is_loopback(host)
        self.scheme = "http" if insecure else "https"
        # TLS is verified against the system's CAs, or REQUESTS_CA_BUNDLE / DEVENV_REGISTRY_CA for
        # a team's own CA; never switched off.
        self._ca: bool | str = os.environ.get("DEVENV_REGISTRY_CA") or True
        self._insecure = insecure
        self._basic = False
        self.client = oras.client.OrasClient(hostname=host, insecure=insecure, tls_verify=self._ca)

    def _use_backend(self, backend: str) -> None:
        import oras.client

        self.client = oras.client.OrasClient(
            hostname=self.host, insecure=self._insecure, tls_verify=self._ca, auth_backend=backend
        )

    # -- plumbing ------------------------------------------------------------------------------
    def _url(self, ref: OciRef, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{ref.repo}/{path}"

    def ping(self) -> None:
        """A registry that does not answer is said in one line at once (the ORAS client would
        retry a refused connection for minutes)."""
        import requests

        r = None
        if self._insecure:
            # A loopback registry: TLS when it speaks TLS (a team's throw-away CA), plain HTTP
            # when it does not -- what Docker does for 127.0.0.0/8. A certificate that fails the
            # check is said, never talked past.
            try:
                r = self.client.session.get(f"https://{self.host}/v2/", timeout=5, verify=self._ca)
                self._insecure, self.scheme = False, "https"
                self._use_backend("token")
            except requests.exceptions.SSLError as exc:
                if "certificate" in str(exc).lower():
                    raise BackendUnavailable(
                        f"the registry {self.host} does not pass the TLS check: {_short(exc)}",
                        hint="give its CA in DEVENV_REGISTRY_CA (a PEM file), or fix its certificate",
                    ) from exc
            except requests.RequestException:
                pass  # refused or reset over TLS: try plain HTTP, which says whether it is there
        try:
            if r is None:
                r = self.client.session.get(f"{self.scheme}://{self.host}/v2/", timeout=5, verify=self._ca)
        except requests.exceptions.SSLError as exc:
            raise BackendUnavailable(
                f"the registry {self.host} does not pass the TLS check: {_short(exc)}",
                hint="give its CA in DEVENV_REGISTRY_CA (a PEM file), or fix its certificate",
            ) from exc
        except requests.RequestException as exc:
            raise BackendUnavailable(
                f"the registry {self.host} does not answer: {_short(exc)}",
                hint="is it running and reachable from here? (`curl http(s)://HOST/v2/`)",
            ) from exc
        if r.status_code not in (200, 401):
            raise BackendUnavailable(f"{self.host} is not an OCI registry (GET /v2/ answered {r.status_code})")
        # The registry says how it authenticates: a token service (Bearer, what hosted registries
        # run) or HTTP basic auth (a team's own distribution with htpasswd).
        challenge = r.headers.get("WWW-Authenticate", "")
        if r.status_code == 401 and challenge.lower().startswith("basic"):
            self._use_backend("basic")
            self._basic = True

    def _request(self, ref: OciRef, method: str, url: str, **kw: Any) -> Any:
        import requests

        auth = self.client.auth
        config = docker_config()
        auth.load_configs(
            self.client.get_container(f"{ref.host}/{ref.repo}"), configs=[config] if os.path.isfile(config) else None
        )
        try:
            if self._basic and not getattr(auth, "_basic_auth", None):
                # No credentials for this registry: asked as is, its 401 is the answer to report.
                r = self.client.session.request(method, url, verify=self._ca, timeout=TIMEOUT, **kw)
            else:
                r = self.client.do_request(url, method, **kw)
        except requests.RequestException as exc:
            raise BackendUnavailable(f"the registry {self.host} failed during {method}: {_short(exc)}") from exc
        except ValueError as exc:  # the ORAS client's "cannot respond to request for authentication"
            raise BoxError(
                f"the registry {self.host} refused the credentials for {ref.repo}: {exc}",
                hint=f"log in (`docker login {self.host}`): devenv uses Docker's credentials, never its own",
            ) from exc
        if r.status_code in (401, 403):
            raise BoxError(
                f"the registry {self.host} refused access to {ref.repo} ({r.status_code})",
                hint=f"log in (`docker login {self.host}`): devenv uses Docker's credentials, never its own",
            )
        return r

    # -- pull ----------------------------------------------------------------------------------
    def manifest(self, ref: OciRef) -> tuple[dict, str]:
        """The manifest ``ref`` names and its digest (checked against ``ref``'s digest, if any)."""
        r = self._request(ref, "GET", self._url(ref, f"manifests/{ref.reference}"), headers={"Accept": MANIFEST_TYPE})
        if r.status_code == 404:
            raise NotPublished(
                f"{ref} is not in the registry (no such tag or digest)",
                hint="`devenv box publish` it first, or check the name and version",
            )
        if r.status_code != 200:
            raise BoxError(f"the registry answered {r.status_code} for {ref}")
        body = r.content
        if len(body) > MAX_MANIFEST:
            raise BoxError(f"the manifest of {ref} is larger than {MAX_MANIFEST} bytes: refused")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.digest and digest != ref.digest:
            raise BoxError(
                f"the registry's manifest for {ref} has digest {digest}: it is not the artifact asked for",
                hint="the registry or something between is not serving what it was given; nothing was stored",
            )
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise BoxError(f"the manifest of {ref} is not JSON") from exc
        if not isinstance(doc, dict) or doc.get("mediaType", MANIFEST_TYPE) != MANIFEST_TYPE:
            raise BoxError(f"{ref} is not a devenv box artifact (manifest type {doc.get('mediaType')!r})")
        return doc, digest

    def blob(self, ref: OciRef, desc: dict, dest: Path, progress: Progress | None = None) -> None:
        """Stream the blob ``desc`` names into ``dest``, hashing as it comes; a blob whose size or
        sha256 differs from the descriptor is deleted and refused."""
        digest, size = desc.get("digest"), desc.get("size")
        if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise BoxError(f"{ref}: a layer has no sha256 digest ({digest!r}): refused")
        if not isinstance(size, int) or size < 0:
            raise BoxError(f"{ref}: a layer has no size: refused")
        import requests

        partial = dest.with_name(dest.name + ".partial")
        h = hashlib.sha256()
        got = 0
        try:
            r = self._request(ref, "GET", self._url(ref, f"blobs/{digest}"), stream=True)
            if r.status_code != 200:
                raise BoxError(f"{ref}: the registry answered {r.status_code} for blob {digest[:19]}")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                for chunk in r.iter_content(CHUNK):
                    got += len(chunk)
                    if got > size:
                        raise BoxError(f"{ref}: blob {digest[:19]} is longer than its {size} bytes: refused")
                    h.update(chunk)
                    f.write(chunk)
                    if progress:
                        progress(got, size)
        except requests.RequestException as exc:
            partial.unlink(missing_ok=True)
            raise BackendUnavailable(f"the download of {ref} broke off: {_short(exc)}", hint="try again") from exc
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise BoxError(
                f"cannot write {dest}: {exc.strerror or exc}", hint="free some disk space and try again"
            ) from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if got != size or "sha256:" + h.hexdigest() != digest:
            partial.unlink(missing_ok=True)
            why = f"{got} of {size} bytes" if got != size else f"its sha256 is sha256:{h.hexdigest()[:16]}..."
            raise BoxError(
                f"{ref}: blob {digest[:19]}... does not match its manifest ({why}): refused, nothing stored",
                hint="the registry holds a damaged or altered artifact: publish the box again",
            )
        partial.rename(dest)

    # -- push ----------------------------------------------------------------------------------
    def _has_blob(self, ref: OciRef, digest: str) -> bool:
        return self._request(ref, "HEAD", self._url(ref, f"blobs/{digest}")).status_code == 200

    def push_blob(self, ref: OciRef, path: Path, digest: str, progress: Progress | None = None) -> None:
        """Upload a file as a blob (skipped when the registry has it), in chunks."""
        if self._has_blob(ref, digest):
            return
        size = path.stat().st_size
        r = self._request(ref, "POST", self._url(ref, "blobs/uploads/"), headers={"Content-Length": "0"})
        if r.status_code != 202 or "Location" not in r.headers:
            raise BoxError(f"the registry {self.host} refused an upload to {ref.repo} ({r.status_code})")
        location = self._absolute(r.headers["Location"])
        sent = 0
        with open(path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{sent}-{sent + len(chunk) - 1}",
                    "Content-Length": str(len(chunk)),
                }
                r = self._request(ref, "PATCH", location, data=chunk, headers=headers)
                if r.status_code != 202:
                    raise BoxError(f"the registry {self.host} stopped the upload of {path.name} ({r.status_code})")
                location = self._absolute(r.headers.get("Location", location))
                sent += len(chunk)
                if progress:
                    progress(sent, size)
        sep = "&" if "?" in location else "?"
        r = self._request(ref, "PUT", f"{location}{sep}digest={digest}", headers={"Content-Length": "0"})
        if r.status_code != 201:
            raise BoxError(f"the registry {self.host} did not accept {path.name} ({r.status_code}: {r.text[:200]})")

    def push_manifest(self, ref: OciRef, manifest: dict) -> str:
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        r = self._request(
            ref, "PUT", self._url(ref, f"manifests/{ref.tag}"), data=body, headers={"Content-Type": MANIFEST_TYPE}
        )
        if r.status_code != 201:
            raise BoxError(f"the registry {self.host} did not accept the manifest of {ref} ({r.status_code})")
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def _absolute(self, location: str) -> str:
        return location if location.startswith(("http://", "https://")) else f"{self.scheme}://{self.host}{location}"


def _short(exc: BaseException) -> str:
    text = str(exc)
    # requests' messages carry the whole urllib3 chain: the last reason is the one to show
    m = re.search(r"\[Errno -?\d+\] ([^')\]]+)", text)
    if m:
        return m.group(1)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def push_box(
    ref: OciRef, files: dict[str, Path], config: dict, *, progress: Callable[[str, int, int], None] | None = None
) -> str:
    """Push a box's ``files`` (key -> path) with its metadata ``config`` under ``ref``'s tag;
    returns the manifest digest (what `--box ...@sha256:` names)."""
    reg = Registry(ref.host)
    reg.ping()
    layers = []
    for key, path in files.items():
        digest = "sha256:" + _sha256(path)
        reg.push_blob(ref, path, digest, (lambda d, t, k=key: progress(k, d, t)) if progress else None)
        layers.append(
            {
                "mediaType": FILE_TYPE,
                "digest": digest,
                "size": path.stat().st_size,
                "annotations": {TITLE: path.name, KEY: key},
            }
        )
    body = json.dumps(config, sort_keys=True).encode()
    config_path_digest = "sha256:" + hashlib.sha256(body).hexdigest()
    _push_bytes(reg, ref, body, config_path_digest)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_path_digest, "size": len(body)},
        "layers": layers,
        "annotations": {"org.opencontainers.image.version": str(config.get("version", ""))},
    }
    return reg.push_manifest(ref, manifest)


def _push_bytes(reg: Registry, ref: OciRef, body: bytes, digest: str) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile() as tmp:
        tmp.write(body)
        tmp.flush()
        reg.push_blob(ref, Path(tmp.name), digest)


class Pulled(NamedTuple):
    config: dict
    files: dict[str, Path]  # key -> file in the work folder, every one verified
    digest: str  # the manifest's


def pull_box(ref: OciRef, work: Path, *, progress: Callable[[str, int, int], None] | None = None) -> Pulled:
    """Fetch the box artifact ``ref`` names into ``work``, every byte checked; raises before
    anything is kept when a digest or size is wrong."""
    reg = Registry(ref.host)
    reg.ping()
    manifest, digest = reg.manifest(ref)
    cfg_desc = manifest.get("config") or {}
    if cfg_desc.get("mediaType") != CONFIG_TYPE:
        raise BoxError(f"{ref} is not a devenv box (its config is {cfg_desc.get('mediaType')!r})")
    if not isinstance(cfg_desc.get("size"), int) or cfg_desc["size"] > MAX_MANIFEST:
        raise BoxError(f"{ref}: the box's metadata is too large or has no size: refused")
    cfg_file = work / "config.json"
    reg.blob(ref, cfg_desc, cfg_file)
    try:
        config = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise BoxError(f"{ref}: the box's metadata is not JSON") from exc
    files: dict[str, Path] = {}
    from devenv.model.recipe import valid_name

    for layer in manifest.get("layers") or []:
        ann = layer.get("annotations") or {}
        key, title = ann.get(KEY), ann.get(TITLE)
        # Names from the registry become file names here: plain names only, each once.
        if not (isinstance(key, str) and valid_name(key) and isinstance(title, str) and valid_name(title)):
            raise BoxError(f"{ref}: a layer's name is not a plain file name ({title!r}): refused")
        if key in files or title == "config.json" or any(p.name == title for p in files.values()):
            raise BoxError(f"{ref}: two layers are named {title!r}: refused")
        dest = work / title
        reg.blob(ref, layer, dest, (lambda d, t, k=key: progress(k, d, t)) if progress else None)
        files[key] = dest
    cfg_file.unlink()
    return Pulled(config, files, digest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def find_pulled(digest: str, provider: str = "libvirt") -> Any:
    """The stored box that was pulled as the artifact ``digest`` (a manifest digest), or None."""
    from devenv.boxes import store

    for b in store.list_stored():
        if b.provider == provider and (b.meta.get("source") or {}).get("manifest") == digest:
            return b
    return None


def fetch_box(
    ref: OciRef,
    *,
    name: str | None = None,
    version: str | None = None,
    origin: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Any:
    """Pull the libvirt box artifact ``ref`` names and store it, checked like a built box.

    With ``name``/``version`` (a recipe's registry source) the artifact must say it is that box,
    and is stored as it. Without (``up --box oci://...``: an exact artifact, e.g. production's) it
    is stored under its own name and its version plus the digest's start, so that it is never
    taken for a local build of the same version."""
    import tempfile

    from devenv.boxes import diskcheck, store

    root = store.ensure_store_root()
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=root.parent) as tmp:
        pulled = pull_box(ref, Path(tmp), progress=progress)
        cfg = pulled.config
        said = (cfg.get("name"), cfg.get("version"), cfg.get("provider"))
        if cfg.get("provider") != "libvirt" or (name is not None and said[:2] != (name, version)):
            raise BoxError(
                f"{ref} is not box {name}@{version} (libvirt): it says {said[0]}@{said[1]} ({said[2]}); "
                "nothing was stored",
                hint="the registry's tag holds another artifact: publish the box again",
            )
        from devenv.model.recipe import valid_name

        box_name = name or cfg.get("name")
        box_version = version or f"{cfg.get('version')}-{pulled.digest[7:19]}"
        if not (isinstance(box_name, str) and valid_name(box_name) and valid_name(box_version)):
            raise BoxError(f"{ref}: its metadata names no usable box name or version: nothing was stored")
        if "disk" not in pulled.files:
            raise BoxError(f"{ref} has no disk: nothing was stored")
        # The same checks as a built or added box: a disk naming host files is refused.
        diskcheck.inspect(pulled.files["disk"], ("qcow2",), f"{ref}: disk")
        keep = ("cmdline", "ssh_user", "sync", "bootloader", "baked", "description")
        meta = {k: cfg[k] for k in keep if k in cfg}
        meta.update(
            {
                "origin": origin or cfg.get("origin"),
                "published_origin": cfg.get("origin"),
                "source": {
                    "registry": str(ref._replace(digest=None)) if ref.tag else str(ref),
                    "manifest": pulled.digest,
                },
            }
        )
        return store.store_box(box_name, box_version, "libvirt", pulled.files, meta, work=Path(tmp))
