"""Docker driver: one container per machine.

Machine lifecycle and exec go through `dockerapi`: its own HTTP client on the local socket
(no SDK import on the hot path), the docker SDK's low-level client for DOCKER_HOST=ssh://,
tcp:// and docker contexts. Image work (pulling, importing, committing) uses the SDK.

The driver never builds a box: devenv.boxes.builders does, through the contract (BoxSources for
base images, a BuildTarget container to bake in, Package to commit it); prepare_box only looks
the box's image up.
"""

from __future__ import annotations

import os
import re
import shlex
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from devenv.contract import (
    LABEL_MACHINE,
    LABEL_PROJECT,
    LABEL_ROOT,
    QUIET,
    BoxArtifact,
    Features,
    HostEndpoint,
    MachineState,
    Ownership,
    PortBinding,
    Reporter,
    Target,
    safe_handle,
)
from devenv.drivers.docker import keepalive
from devenv.drivers.hostports import check_host_addresses, is_loopback, resolve_host_port
from devenv.errors import BackendUnavailable, BoxError, MachineStateError, NotPublished, PortConflict, UsageError
from devenv.model.recipe import (
    IMAGE_REPO,
    LABEL_BAKED,
    LABEL_BOX,
    LABEL_KEEPALIVE,
    LABEL_ORIGIN,
    LABEL_VERSION,
    check_origin,
    find_recipe,
    parse_ref,
)
from devenv.model.schema import MISSING, Bool, Custom, Field, ListOf, MapOf, Problem, Str, Table
from devenv.transports.dockerapi import context_host


def machine_init(opts: dict, box: BoxArtifact) -> bool | str:
    """PID 1 of the machine: its own `init`, else what its box declares, else Docker's init."""
    init = opts.get("init")
    if init is None:
        init = box.extra.get("init") or True
    return init


def _init(value: Any, path: tuple, problems: list) -> Any:
    if isinstance(value, bool) or value == "systemd":
        return value
    problems.append(Problem(path, f'expected true, false or "systemd", got {value!r}'))
    return MISSING


# systemd as PID 1 in an unprivileged container: it needs its runtime folders on tmpfs, the
# cgroup file system (cgroup v1: the host's, read-only, is enough; cgroup v2: a private cgroup
# namespace), `container=` in its environment, and SIGRTMIN+3 to shut down cleanly.
# Not /tmp: the engine's archive API (how files reach a container) cannot write into a tmpfs
# mount -- the copy "succeeds" into the layer underneath, hidden -- and provisioning uploads to
# /tmp, as Vagrant projects' file steps do (destination = "/tmp/app.conf", then a shell step).
SYSTEMD_TMPFS = {"/run": "rw,nosuid,nodev,mode=755", "/run/lock": "rw,nosuid,nodev,noexec"}
SYSTEMD_STOP_SIGNAL = "SIGRTMIN+3"
LABEL_NETWORK = "devenv.network"  # a project network's Devfile name (its engine name is devenv-PROJECT-NAME)
SYSTEMD_BOOT_TIMEOUT = 120.0  # seconds until is-system-running must say running (or degraded)


def _endpoint(machine: Any, att: Any) -> dict:
    """How a machine sits on a project network: found by its name and hostname, at its fixed address."""
    endpoint: dict[str, Any] = {"Aliases": list(dict.fromkeys([machine.name, machine.hostname]))}
    if att.ip:
        endpoint["IPAMConfig"] = {"IPv4Address": att.ip}
    return endpoint


def _command(value: Any, path: tuple, problems: list) -> Any:
    if isinstance(value, str):
        return value
    return ListOf(Str(nonempty=False)).check(value, path, problems)


_OPTIONS = Table(
    {
        "command": Field(
            Custom(
                _command,
                {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                description="Run the image's own entrypoint with these arguments instead of devenv's "
                "keep-alive (a string or an array)",
            )
        ),
        "use_image_command": Field(
            Bool(description="Run the image's own entrypoint/command instead of devenv's keep-alive"), default=False
        ),
        "privileged": Field(Bool(description="Run privileged (off by default; think twice)"), default=False),
        "cap_add": Field(ListOf(Str()), default=list),
        "user": Field(Str(description="User the container's main process runs as")),
        "workdir": Field(Str()),
        "network": Field(Str(description="Docker network to join (default bridge)")),
        "init": Field(
            Custom(
                _init,
                {"anyOf": [{"type": "boolean"}, {"const": "systemd"}]},
                description='PID 1: true = Docker\'s init (reaps zombies), false = none, "systemd" = boot '
                "systemd (unprivileged) so services run and come back after halt + up; default: what the "
                'box declares (debian-12: "systemd"), else true',
            ),
        ),
        "labels": Field(MapOf(Str(nonempty=False)), default=dict),
        "shm_size": Field(Str()),
    },
    description="Options for the Docker driver",
)


# A box must run like any image (`docker run BOX CMD...` in production), not with devenv's
# keep-alive as its entrypoint. In a commit, `ENTRYPOINT []` keeps the container's entrypoint;
# [""] is the engine's "none" (it ignores it when running, as `docker run --entrypoint ""`).
_NO_ENTRYPOINT = 'ENTRYPOINT [""]'
# Images made from a root file system have no environment: a box gets the usual PATH.
_PATH = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image_name_ok(name: str) -> bool:
    return re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]*", name) is not None


class DockerDriver:
    name: ClassVar[str] = "docker"
    features: ClassVar[Features] = Features(
        suspend=True, package=True, box_images=True, box_sources=True, networks=True, host_access=True
    )
    reporter: Reporter = QUIET  # set by the core before use
    options: ClassVar[Table] = _OPTIONS

    def __init__(self) -> None:
        self._client: Any = None
        self._arch: str | None = None
        self._engine: Any = None
        self._fresh: set[str] = set()  # containers this process created with the keep-alive in place
        self._cgroups: str | None = None  # the engine host's cgroup version, asked once

    # -- engine access -----------------------------------------------------------------------
    def endpoint(self) -> str:
        """Where the engine is: DOCKER_HOST, else the current `docker context`, else the default socket."""
        return os.environ.get("DOCKER_HOST") or context_host() or "unix:///var/run/docker.sock"

    @property
    def engine(self) -> Any:
        """The Engine API client (dockerapi.UnixEngine or SdkEngine) every lifecycle call uses."""
        if self._engine is None:
            from devenv.transports import dockerapi

            endpoint = self.endpoint()
            if endpoint.startswith("unix://"):  # the local engine, rootless ones and contexts included
                self._engine = dockerapi.UnixEngine(endpoint[len("unix://") :])
            else:
                self._engine = dockerapi.SdkEngine(self.client.api)
        return self._engine

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        try:
            import docker
        except ImportError as exc:  # pragma: no cover - docker is a core dependency
            raise BackendUnavailable("the docker Python package is missing", hint="pip install docker") from exc
        endpoint = self.endpoint()
        try:
            if endpoint.startswith("ssh://"):
                # The system ssh client honours ~/.ssh/config and agents; paramiko would not.
                client = docker.DockerClient(base_url=endpoint, use_ssh_client=True, timeout=120)
            elif "DOCKER_HOST" in os.environ:
                client = docker.from_env(timeout=120)
            else:
                client = self._from_context(docker) or docker.DockerClient(base_url=endpoint, timeout=120)
            client.api.ping()
        except Exception as exc:  # noqa: BLE001 - every way the engine can be unreachable
            raise self._unavailable(endpoint, exc) from exc
        return client

    def _from_context(self, docker: Any) -> Any:
        """The current `docker context`, when it is not the default socket."""
        name = os.environ.get("DOCKER_CONTEXT")
        try:
            from docker.context import ContextAPI

            ctx = ContextAPI.get_context(name) if name else ContextAPI.get_current_context()
        except Exception:  # noqa: BLE001 - no or broken context config: fall back to the socket
            return None
        if ctx is None or ctx.name == "default" or not ctx.Host:
            return None
        return docker.DockerClient(base_url=ctx.Host, use_ssh_client=ctx.Host.startswith("ssh://"), timeout=120)

    def _unavailable(self, endpoint: str, exc: Exception) -> BackendUnavailable:
        text = str(exc)
        if endpoint.startswith("unix://"):
            sock = endpoint[len("unix://") :]
            if not os.path.exists(sock):
                return BackendUnavailable(
                    f"the Docker engine is not running: no socket at {sock}",
                    hint="start it: `sudo systemctl start docker` (or run `dockerd` as root); "
                    "scripts/engines.sh in the devenv repository installs and starts it",
                )
            if "Permission denied" in text or isinstance(getattr(exc, "__context__", None), PermissionError):
                return BackendUnavailable(
                    f"permission denied on the Docker socket {sock}",
                    hint="add your user to the 'docker' group (`sudo usermod -aG docker $USER`, then log in again) "
                    "or run as root",
                )
            if "Connection refused" in text:
                return BackendUnavailable(
                    f"the Docker engine does not answer on {sock} (connection refused)",
                    hint="the socket is stale: restart the engine (`sudo systemctl restart docker` or `dockerd`)",
                )
        return BackendUnavailable(
            f"cannot reach the Docker engine at {endpoint}: {text.splitlines()[0] if text else type(exc).__name__}",
            hint="check DOCKER_HOST / `docker context` and that the engine runs (`docker info`)",
        )

    def _errors(self) -> Any:
        import docker.errors

        return docker.errors

    def check_available(self, machine=None) -> None:
        try:
            self.engine.ping()
        except BackendUnavailable:
            raise  # connecting the SDK (remote engines) explained it already
        except Exception as exc:  # noqa: BLE001 - refused, missing socket, engine error: all "unavailable"
            raise self._unavailable(self.endpoint(), exc) from exc

    def describe_engine(self, machine=None) -> str:
        info = self._eng(self.engine.version)
        return f"engine {info.get('Version')} at {self.endpoint()}"

    def _call(self, what: str, fn, *args, **kwargs):
        """Call the SDK, turning a connection lost mid-command into BackendUnavailable."""
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.ConnectionError as exc:
            self._client = None
            raise self._unavailable(self.endpoint(), exc) from exc

    def _eng(self, fn, *args, **kwargs):
        """Call the engine client, turning an engine that went away into BackendUnavailable."""
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            self._client = self._engine = None
            raise self._unavailable(self.endpoint(), exc) from exc

    def _image(self, ref: str) -> dict | None:
        return self._eng(self.engine.inspect_image, ref)

    @staticmethod
    def _artifact(name: str, version: str | None, ref: str, img: dict) -> BoxArtifact:
        labels = (img.get("Config") or {}).get("Labels") or {}
        baked = [b for b in labels.get(LABEL_BAKED, "").split(",") if b]
        # Boxes devenv built carry its keep-alive already: `up` need not copy it in (~40 ms).
        has_keepalive = labels.get(LABEL_KEEPALIVE) == keepalive.digest()
        extra = {
            "baked": baked,
            "arch": img.get("Architecture", ""),
            "keepalive": has_keepalive,
            # What the box's recipe declares as PID 1 (init = "systemd"): the machine's default.
            "init": "systemd" if labels.get(f"{LABEL_BOX}.init") == "systemd" else None,
            # A box that came from (or went to) a registry: the digests it is known by there.
            "pulled_from": (img.get("RepoDigests") or [None])[0],
        }
        return BoxArtifact(name=name, version=version, ref=ref, digest=img["Id"], extra=extra)

    # -- validation ----------------------------------------------------------------------------
    def validate(self, machine) -> list[Problem]:
        problems: list[Problem] = []
        if machine.box:
            ref = parse_ref(machine.box)
            if ref.kind == "file":
                problems.append(
                    Problem(
                        ("box",), 'the docker driver cannot boot a .box file; use a box recipe name or "docker:IMAGE"'
                    )
                )
            elif ref.kind == "image" and not image_name_ok(ref.name):
                problems.append(Problem(("box",), f"'{ref.name}' is not a valid image reference"))
        for i, s in enumerate(machine.sync):
            if s.type not in ("auto", "bind"):
                problems.append(
                    Problem(
                        ("sync", i, "type"),
                        f"the docker driver syncs with bind mounts; "
                        f'type \'{s.type}\' is not supported (use "auto" or "bind")',
                    )
                )
        if machine.driver_options().get("network") and any(not a.network.implicit for a in machine.networks):
            problems.append(
                Problem(("docker", "network"), "a machine on the Devfile's networks cannot also set docker network")
            )
        shm = machine.driver_options().get("shm_size")
        if shm is not None:
            try:
                docker_bytes(shm)
            except UsageError as exc:
                problems.append(Problem(("docker", "shm_size"), exc.message))
        return problems

    def preflight(self, target: Target) -> None:
        # Host addresses are this host's only when the engine publishes ports here.
        if target.machine.ports and self._engine_is_local():
            check_host_addresses(target)

    # -- boxes ---------------------------------------------------------------------------------
    def prepare_box(self, target: Target, box: str) -> BoxArtifact:
        """The image the box names. An engine image is pulled when missing; a recipe's box must
        be built already (devenv.boxes.builders.ensure_built, which `up` runs first)."""
        ref = parse_ref(box)
        if ref.kind == "image":
            img = self._image(ref.name) or self._pull(ref.name, target.name)
            art = self._artifact(str(ref), None, ref.name, img)
            del art.extra["baked"]
            return art
        if ref.kind == "registry":
            # An exact published artifact (`up --box oci://HOST/REPO@sha256:...`, or by tag): the
            # engine pulls it and checks the digest; it runs under its registry name.
            from devenv.boxes import oci

            image = oci.parse_ref(ref.name).image
            img = self._image(image) or self._pull(image, target.name)
            labels = (img.get("Config") or {}).get("Labels") or {}
            return self._artifact(labels.get(LABEL_BOX) or box, labels.get(LABEL_VERSION), image, img)
        if ref.version:
            # A pinned version (Devfile or lock) that is already built: the recipe is read only to
            # check that this project's recipe (when it has one) is what built the image.
            tag = f"{IMAGE_REPO}/{ref.name}:{ref.version}"
            img = self._image(tag)
            if img is not None:
                origin = ((img.get("Config") or {}).get("Labels") or {}).get(LABEL_ORIGIN)
                if origin:
                    try:
                        mine = find_recipe(ref, target.project_root)
                    except BoxError:
                        mine = None  # no recipe for it here: a box from elsewhere, used as it is
                    if mine is not None:
                        check_origin(origin, mine, f"the image {tag}")
                return self._artifact(ref.name, ref.version, tag, img)
        try:
            recipe = find_recipe(ref, target.project_root, warn=self.reporter.warn)
        except BoxError:
            # No recipe: a box made by `devenv package` or added by hand, newest version first.
            from devenv.boxes.store import version_key

            built = sorted(
                (b for b in self.list_boxes() if b["name"] == ref.name and b["tag"]),
                key=lambda b: version_key(b["version"] or ""),
                reverse=True,
            )
            if not built:
                raise
            b = built[0]
            return self._artifact(ref.name, b["version"], b["tag"], self._image(b["tag"]) or {"Id": b["digest"]})
        img = self._image(recipe.docker_tag)
        if img is None:
            raise BoxError(
                f"box {recipe.name}@{recipe.version} is not built on this Docker engine (no image {recipe.docker_tag})",
                hint=f"build it: `devenv box build {recipe.name}` (`devenv up` builds a missing box itself)",
            )
        origin = ((img.get("Config") or {}).get("Labels") or {}).get(LABEL_ORIGIN)
        check_origin(origin, recipe, f"the image {recipe.docker_tag}")
        return self._artifact(recipe.name, recipe.version, recipe.docker_tag, img)

    def _pull(self, image: str, machine: str | None) -> dict:
        """Pull an image; returns its inspect data."""
        errors = self._errors()
        if "@" in image:  # by digest: the engine checks what it pulls against it
            repo, tag = image, None
        else:
            repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
        try:
            with self.reporter.progress(machine, f"pulling image {image}"):
                for ev in self.client.api.pull(
                    repo, tag=tag if tag is None else (tag or "latest"), stream=True, decode=True
                ):
                    if "error" in ev:
                        raise errors.APIError(ev["error"])
            img = self._image(image)
            if img is None:
                raise errors.APIError("the pull finished but the engine does not have the image")
            return img
        except errors.APIError as exc:
            raise BoxError(
                f"image {image} is not on the engine and cannot be pulled: {exc.explanation or exc}",
                hint="load or build it first (`docker load`, `docker import`, `docker build`), or use a box recipe",
            ) from exc

    # -- BoxSources: base images for box builds (devenv.boxes.builders.docker) --------------------
    def has_image(self, ref: str) -> bool:
        return self._image(ref) is not None

    def pull_image(self, ref: str, machine: str | None = None) -> None:
        self._pull(ref, machine)

    def import_rootfs(self, tar: Path, ref: str) -> None:
        """`docker import` of a root file system tar as the image ``ref`` (REPO:TAG)."""
        errors = self._errors()
        repo, _, version = ref.rpartition(":")
        try:
            self._call("import", self.client.api.import_image_from_file, str(tar), repository=repo, tag=version)
        except errors.APIError as exc:
            why = exc.explanation or exc
            raise BoxError(f"the engine does not import the root file system as {ref}: {why}") from exc
        if self._image(ref) is None:
            raise BoxError(f"importing the root file system left no image {ref} on the engine")

    def remove_image(self, ref: str) -> None:
        errors = self._errors()
        try:
            self._call("remove image", self.client.images.remove, ref, noprune=False)
        except errors.APIError:
            pass  # gone already, or still the parent of a committed box: untagged is enough

    def push_box(self, local: str, remote: str, machine: str | None = None) -> str:
        errors = self._errors()
        repo, _, tag = remote.rpartition(":")
        try:
            self._call("tag", self.client.api.tag, local, repo, tag=tag)
            digest = None
            with self.reporter.progress(machine, f"pushing {local} to {remote}"):
                for ev in self.client.api.push(repo, tag=tag, stream=True, decode=True):
                    if "error" in ev:
                        raise errors.APIError(ev["error"])
                    aux = ev.get("aux") or {}
                    digest = aux.get("Digest") or digest
        except errors.APIError as exc:
            why = getattr(exc, "explanation", None) or exc
            raise BoxError(
                f"the engine cannot push {local} to {remote}: {why}",
                hint=f"is the registry running? Credentials come from `docker login {repo.split('/')[0]}`",
            ) from exc
        finally:
            try:  # the registry's name for the image was only the way to push it
                self._call("untag", self.client.api.remove_image, remote, noprune=True)
            except errors.APIError:
                pass
        if not digest:
            raise BoxError(f"the engine pushed {remote} but reported no digest")
        return digest

    def pull_box(self, remote: str, local: str, machine: str | None = None) -> str:
        errors = self._errors()
        by_digest = "@" in remote
        repo, _, ref = remote.partition("@") if by_digest else remote.rpartition(":")
        try:
            with self.reporter.progress(machine, f"pulling {remote}"):
                for ev in self.client.api.pull(repo, tag=ref, stream=True, decode=True):
                    if "error" in ev:
                        raise errors.APIError(ev["error"])
            img = self._image(remote)
            if img is None:
                raise errors.APIError("the pull finished but the engine does not have the image")
            local_repo, _, local_tag = local.rpartition(":")
            self._call("tag", self.client.api.tag, img["Id"], local_repo, tag=local_tag)
        except errors.APIError as exc:
            why = str(getattr(exc, "explanation", None) or exc)
            low = why.lower()
            if "manifest unknown" in low or "not found" in low:
                raise NotPublished(
                    f"{remote} is not in the registry ({why})", hint="`devenv box publish` it, or check the version"
                ) from exc
            if "connection refused" in low or "no such host" in low or "timeout" in low or "dial tcp" in low:
                raise BackendUnavailable(
                    f"the engine cannot reach the registry for {remote}: {why}",
                    hint="is the registry running and reachable from the engine?",
                ) from exc
            raise BoxError(f"the engine cannot pull {remote}: {why}") from exc
        # The registry tag stays beside devenv's: with it the engine keeps the image's registry
        # digest, which says the box was pulled (Devfile.lock then refuses another digest).
        return img["Id"]

    def list_boxes(self) -> list[dict]:
        out = []
        for img in self._call("list images", self.client.images.list, filters={"label": LABEL_BOX}):
            # A pulled team box keeps its registry tag too (so the engine keeps its registry
            # digest): one box, listed under devenv's own tag, where it came from beside it.
            tags = [t for t in img.tags or [] if t.startswith(f"{IMAGE_REPO}/")] or img.tags or [None]
            others = [t for t in img.tags or [] if t not in tags]
            for tag in tags:
                out.append(
                    {
                        "baked": [b for b in img.labels.get(LABEL_BAKED, "").split(",") if b],
                        "name": img.labels.get(LABEL_BOX),
                        "version": img.labels.get(LABEL_VERSION),
                        "tag": tag,
                        "digest": img.id,
                        "size": img.attrs.get("Size"),
                        "provider": "docker",
                        "also": others,
                    }
                )
        return out

    def remove_box(self, name: str, version: str | None) -> list[str]:
        errors = self._errors()
        removed = []
        for b in self.list_boxes():
            if b["name"] == name and (version is None or b["version"] == version) and b["tag"]:
                try:
                    for other in b.get("also") or []:  # its registry tag: the box goes as a whole
                        self.client.images.remove(other, noprune=True)
                    self.client.images.remove(b["tag"])
                except errors.APIError as exc:
                    if "conflict" in str(exc).lower() or "being used" in str(exc):
                        raise BoxError(
                            f"box {b['tag']} is in use by a container", hint="destroy the machines that use it first"
                        ) from exc
                    raise
                removed.append(b["tag"])
        return removed

    # -- lifecycle -----------------------------------------------------------------------------
    def _engine_is_local(self) -> bool:
        """True when the engine's host ports are this machine's (unix socket or a loopback TCP URL)."""
        if self.engine.local:
            return True
        url = self.engine.base_url
        return url == "http+docker://localhost" or url.startswith(
            ("http://127.", "https://127.", "http://localhost", "https://localhost")
        )

    def _arch_x86_64(self, box: BoxArtifact) -> bool:
        """Our keep-alive is x86-64 code: it fits when the image (not just the engine) is x86-64."""
        arch = box.extra.get("arch")
        if not arch:
            if self._arch is None:
                self._arch = self._eng(self.engine.info).get("Architecture", "")
            arch = self._arch
        return arch in ("x86_64", "amd64")

    def _port_bindings(self, target: Target) -> dict:
        """HostConfig.PortBindings: {"80/tcp": [{"HostIp": ..., "HostPort": ...}]}."""
        bindings: dict[str, list] = {}
        # Host ports can be checked only when the engine publishes them on this host.
        check_local = self._engine_is_local()
        for p in target.machine.ports:
            host = p.host
            if host is not None and check_local:
                host = resolve_host_port(
                    target.name, p.host_ip, host, p.guest, p.protocol, p.auto_correct, self.reporter
                )
            if not is_loopback(p.host_ip):
                # Allowed, but it exposes the machine beyond this host: say so every time.
                self.reporter.warn(
                    f"{target.name}: port {p.guest}/{p.protocol} is reachable from other hosts (host_ip = {p.host_ip})"
                )
            bindings.setdefault(f"{p.guest}/{p.protocol}", []).append(
                {"HostIp": p.host_ip, "HostPort": "" if host is None else str(host)}
            )
        return bindings

    @staticmethod
    def exposure_warnings(target: Target) -> list[str]:
        """What the machine's options open beyond an unprivileged container, one line each.

        Like a port on 0.0.0.0 these are allowed (some tools need them) but never silent:
        `up` says so every time it creates the container."""
        opts = target.machine.driver_options()
        out = []
        if opts.get("privileged"):
            out.append(
                "privileged = true: the container gets every device of the host and every capability; "
                "root in it can control the host kernel (load modules, mount host disks)"
            )
        caps = [str(c) for c in opts.get("cap_add") or []]
        if caps:
            out.append(f"cap_add = {caps}: root in the container gets these host capabilities: {', '.join(caps)}")
        network = str(opts.get("network") or "")
        if network == "host":
            out.append(
                'network = "host": the container shares the host\'s network stack; it can reach every service '
                "listening on the host's loopback, and what it listens on is reachable as the host"
            )
        elif network.startswith("container:"):
            out.append(f"network = {network!r}: the container shares the network stack of another container")
        return [f"{target.name}: {w}" for w in out]

    def container_config(self, target: Target, box: BoxArtifact, env: dict[str, str] | None = None) -> dict:
        """The Engine API body of POST /containers/create for this machine."""
        m = target.machine
        opts = m.driver_options()
        for warning in self.exposure_warnings(target):
            self.reporter.warn(warning)
        ports = self._port_bindings(target)
        host: dict[str, Any] = {
            "Mounts": [
                {"Type": "bind", "Source": str(s.host), "Target": s.guest, "ReadOnly": bool(s.read_only)}
                for s in m.sync
            ],
            "PortBindings": ports,
            "Privileged": bool(opts.get("privileged", False)),
            "Init": machine_init(opts, box) is True,
        }
        systemd = machine_init(opts, box) == "systemd"
        if systemd:
            host["Tmpfs"] = dict(SYSTEMD_TMPFS)
            if self._cgroup_version() == "2":
                host["CgroupnsMode"] = "private"
            else:
                host["Mounts"].append(
                    {"Type": "bind", "Source": "/sys/fs/cgroup", "Target": "/sys/fs/cgroup", "ReadOnly": True}
                )
        if opts.get("cap_add"):
            host["CapAdd"] = list(opts["cap_add"])
        if m.cpus:
            host["NanoCpus"] = int(m.cpus * 1e9)
        if m.memory:
            host["Memory"] = int(m.memory)
        if opts.get("network"):
            host["NetworkMode"] = opts["network"]
        networking = None
        if self._joins(target):
            first = m.networks[0]
            host["NetworkMode"] = self._network_name(target, first.name)
            networking = {"EndpointsConfig": {host["NetworkMode"]: _endpoint(m, first)}}
        if opts.get("shm_size"):
            host["ShmSize"] = docker_bytes(opts["shm_size"])
        config: dict[str, Any] = {
            "Image": box.ref,
            "Hostname": m.hostname,
            "Labels": {**opts.get("labels", {}), **target.labels},
            "Env": [f"{k}={v}" for k, v in (env or {}).items()],
            "ExposedPorts": {key: {} for key in ports},
            "HostConfig": host,
            "NetworkingConfig": networking,
        }
        if opts.get("user"):
            config["User"] = opts["user"]
        if opts.get("workdir"):
            config["WorkingDir"] = opts["workdir"]
        if systemd:
            config["Entrypoint"] = ["/sbin/init"]
            config["Cmd"] = []
            config["StopSignal"] = SYSTEMD_STOP_SIGNAL
            config["Env"].append("container=docker")  # how systemd knows it runs in a container
        elif not opts.get("use_image_command") and "command" not in opts:
            if self._arch_x86_64(box):
                config["Entrypoint"] = [keepalive.PATH_IN_CONTAINER]
            else:
                # No hand-assembled keep-alive for this architecture: rely on the image's sleep.
                config["Entrypoint"] = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"]
            config["Cmd"] = []
        elif "command" in opts:
            cmd = opts["command"]
            config["Cmd"] = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        return {k: v for k, v in config.items() if v is not None}

    def create(self, target: Target, box: BoxArtifact, *, env: dict[str, str] | None = None) -> str:
        from devenv.transports.dockerapi import EngineError

        existing = self.find(target)
        if existing:
            return existing
        config = self.container_config(target, box, env)
        joined = self._joins(target)
        for att in joined:
            self._ensure_network(target, att)
        try:
            cid = self._eng(self.engine.create_container, config, target.resource_name)
        except EngineError as exc:
            if exc.status == 409:  # a concurrent devenv created it first: use that one
                found = self.find(target)
                if found:
                    return found
            raise BoxError(f"cannot create the container for '{target.name}': {exc.message}") from exc
        for att in joined[1:]:
            try:
                self._eng(
                    self.engine.connect_network,
                    self._network_name(target, att.name),
                    cid,
                    _endpoint(target.machine, att),
                )
            except EngineError as exc:
                self.destroy(cid)
                raise MachineStateError(f"cannot join network '{att.name}': {exc.message}") from exc
        if config.get("Entrypoint") == [keepalive.PATH_IN_CONTAINER]:
            if not box.extra.get("keepalive"):
                self._eng(self.engine.put_archive, cid, "/", keepalive.tar_archive())
            self._fresh.add(cid)
        return cid

    def find(self, target: Target) -> str | None:
        if not target.labels:
            # A box build's machine (contract.BuildTarget) carries no labels: its unique name finds it.
            info = self._inspect(target.resource_name)
            return info["Id"] if info else None
        found = self._eng(
            self.engine.containers, [f"{LABEL_PROJECT}={target.project_id}", f"{LABEL_MACHINE}={target.name}"]
        )
        # The project id is a short hash: another folder can share it. Only a container made for
        # this very root (or by an older devenv, which recorded none) is this machine's.
        root = str(target.project_root)
        mine = [c for c in found if (c.get("Labels") or {}).get(LABEL_ROOT, root) == root]
        return mine[0]["Id"] if mine else None

    def owns(self, handle: str, target: Target) -> Ownership:
        """OURS only for a container labelled with this project's id, this machine's name and (when
        recorded) this project's real root."""
        if not safe_handle(handle):
            return Ownership.FOREIGN
        info = self._inspect(handle)
        if info is None:
            return Ownership.GONE
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_PROJECT) != target.project_id or labels.get(LABEL_MACHINE) != target.name:
            return Ownership.FOREIGN
        # The id is a short hash a hostile folder name can collide with: the recorded real root
        # decides. A container without one was made by an older devenv: the labels suffice.
        if labels.get(LABEL_ROOT, str(target.project_root)) != str(target.project_root):
            return Ownership.FOREIGN
        return Ownership.OURS

    def start(self, handle: str) -> None:
        from devenv.transports.dockerapi import EngineError

        info = self._inspect(handle)
        if info is None:
            raise MachineStateError("the container is gone", hint="run `devenv up` to recreate it")
        entrypoint = (info["Config"].get("Entrypoint") or [None])[0]
        keeps_alive = entrypoint == keepalive.PATH_IN_CONTAINER
        try:
            if keeps_alive and handle not in self._fresh:
                # A create interrupted before the keep-alive was copied in (kill -9): repair it.
                if not self._eng(self.engine.archive_exists, handle, keepalive.PATH_IN_CONTAINER):
                    self._eng(self.engine.put_archive, handle, "/", keepalive.tar_archive())
            self._eng(self.engine.start, handle)
        except EngineError as exc:
            if exc.status == 404:
                raise MachineStateError("the container is gone", hint="run `devenv up` to recreate it") from exc
            text = exc.message
            if "/sbin/init" in text and entrypoint == "/sbin/init":
                raise MachineStateError(
                    'init = "systemd", but the box has no systemd (no /sbin/init)',
                    hint='use a box with systemd (debian-12) or drop init = "systemd"',
                ) from exc
            if "port is already allocated" in text or "address already in use" in text:
                raise PortConflict(
                    f"a forwarded host port is already in use: {text}",
                    hint="free the port or change `ports` in the Devfile",
                ) from exc
            raise MachineStateError(f"the container does not start: {text}") from exc
        if keeps_alive:
            return  # devenv's own keep-alive does not exit by itself
        if entrypoint == "/sbin/init":
            self._wait_for_systemd(handle, info)
            return
        # A container whose command exits at once is not a running machine: say why, with its output.
        time.sleep(0.05)
        exited = self._exited(handle)
        if exited is not None:
            raise MachineStateError(
                f"the container exited right after starting (exit code {exited[0]})" + exited[1],
                hint="its command ends by itself: drop [machines.NAME.docker] command/use_image_command, "
                "or give it a command that keeps running",
            )

    def _cgroup_version(self) -> str:
        """The engine host's cgroup version ("1" or "2"), asked once."""
        if self._cgroups is None:
            self._cgroups = str(self._eng(self.engine.info).get("CgroupVersion") or "1")
        return self._cgroups

    def _exited(self, handle: str) -> tuple[object, str] | None:
        """(exit code, ":\n" + the last log lines, or "") of a container that is not running; None while it runs."""
        info = self._inspect(handle)
        if info is not None and info["State"].get("Running"):
            return None
        logs = self._eng(self.engine.logs, handle, 10).decode(errors="replace").strip() if info else ""
        return ((info or {}).get("State", {}).get("ExitCode"), f":\n{logs}" if logs else "")

    def _wait_for_systemd(self, handle: str, info: dict) -> None:
        """Wait until systemd has booted (`is-system-running`: running or degraded) so provisioning
        finds a working systemctl; degraded lists the failed units as a warning."""
        name = (info.get("Config", {}).get("Labels") or {}).get(LABEL_MACHINE, handle[:12])
        transport = self.transport(handle)
        deadline = time.monotonic() + SYSTEMD_BOOT_TIMEOUT
        state = ""
        while True:
            lines: list[str] = []
            exited = self._exited(handle)
            if exited is not None:
                raise MachineStateError(
                    f"systemd stopped right after it started in '{name}'" + exited[1],
                    hint='the box must have systemd as /sbin/init (debian-12 has it); or drop init = "systemd"',
                )
            code = transport.run(["systemctl", "is-system-running"], on_output=lines.append)
            state = lines[-1].strip() if lines else ""
            if state in ("running", "degraded"):
                break
            if code == 127 or "not found" in state:
                raise MachineStateError(
                    f"'{name}' has no systemctl: its box has no systemd",
                    hint='use a box with systemd (debian-12) or drop init = "systemd"',
                )
            if time.monotonic() > deadline:
                raise MachineStateError(
                    f"systemd in '{name}' did not finish booting in {SYSTEMD_BOOT_TIMEOUT:.0f}s "
                    f"(state: {state or '?'})",
                    hint=f"look inside: `devenv ssh {name} -c 'systemctl list-jobs'`",
                )
            time.sleep(0.2)
        if state == "degraded":
            failed: list[str] = []
            transport.run(["systemctl", "--failed", "--no-legend", "--plain"], on_output=failed.append)
            units = ", ".join(line.split()[0] for line in failed if line.strip()) or "?"
            self.reporter.warn(f"{name}: systemd is up but degraded: failed units {units}")

    def stop(self, handle: str, *, force: bool = False) -> None:
        from devenv.transports.dockerapi import EngineError

        try:
            if force:
                self._eng(self.engine.kill, handle)
            else:
                self._eng(self.engine.stop, handle, 10)
        except EngineError as exc:
            if exc.status in (304, 404, 409) or "is not running" in exc.message:
                return
            raise MachineStateError(f"the container does not stop: {exc.message}") from exc

    def destroy(self, handle: str) -> None:
        from devenv.transports.dockerapi import EngineError

        info = self._inspect(handle)
        try:
            self._eng(self.engine.remove, handle)
        except EngineError as exc:
            if exc.status == 404 or "already in progress" in exc.message:
                return
            raise MachineStateError(f"the container cannot be removed: {exc.message}") from exc
        labels = ((info or {}).get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_PROJECT):
            self._remove_unused_networks(labels[LABEL_PROJECT], labels.get(LABEL_ROOT))

    # -- private networks (contract.Networks) ---------------------------------------------------
    @staticmethod
    def _joins(target: Target) -> list:
        """The project networks the machine joins (none when `network` names an engine network)."""
        return [] if target.machine.driver_options().get("network") else list(target.machine.networks)

    @staticmethod
    def _network_name(target: Target, name: str) -> str:
        return f"devenv-{target.project_id}-{name}"

    def _project_networks(self, project_id: str, root: str | None) -> list[dict]:
        found = self._eng(self.engine.networks, [f"{LABEL_PROJECT}={project_id}"])
        return [n for n in found if root is None or (n.get("Labels") or {}).get(LABEL_ROOT, root) == root]

    # `up` makes a project's machines in threads: two machines on one network with a fixed subnet
    # would both create it, and the engine refuses the second with "Pool overlaps" (not a 409).
    _network_lock = threading.Lock()

    def _ensure_network(self, target: Target, att: Any) -> None:
        """The project network ``att`` names, made (labelled) when it does not exist yet."""
        with self._network_lock:
            self._ensure_network_locked(target, att)

    def _ensure_network_locked(self, target: Target, att: Any) -> None:
        from devenv.transports.dockerapi import EngineError

        name = self._network_name(target, att.name)
        for n in self._project_networks(target.project_id, str(target.project_root)):
            if (n.get("Labels") or {}).get(LABEL_NETWORK) != att.name:
                continue
            subnets = [c.get("Subnet") for c in ((n.get("IPAM") or {}).get("Config") or [])]
            if att.network.subnet and att.network.subnet not in subnets:
                raise MachineStateError(
                    f"network '{att.name}' exists with subnet {', '.join(map(str, subnets)) or '?'}, "
                    f"not {att.network.subnet}",
                    hint="`devenv destroy` the project's machines, then `devenv up` makes it again",
                )
            return
        config: dict[str, Any] = {
            "Name": name,
            "Driver": "bridge",
            "Internal": bool(att.network.internal),
            "CheckDuplicate": True,
            "Labels": {
                LABEL_PROJECT: target.project_id,
                LABEL_NETWORK: att.name,
                LABEL_ROOT: str(target.project_root),
            },
        }
        if att.network.subnet:
            config["IPAM"] = {"Driver": "default", "Config": [{"Subnet": att.network.subnet}]}
        try:
            self._eng(self.engine.create_network, config)
        except EngineError as exc:
            if exc.status == 409:  # made meanwhile (another devenv process on the same engine)
                return
            if "overlap" in exc.message and any(
                (x.get("Labels") or {}).get(LABEL_NETWORK) == att.name
                for x in self._project_networks(target.project_id, str(target.project_root))
            ):
                return  # the same: made meanwhile under its own subnet
            hint = "pick another subnet in [networks] (ip route shows the host's)" if "overlap" in exc.message else None
            raise MachineStateError(f"cannot make network '{att.name}': {exc.message}", hint=hint) from exc

    def _remove_unused_networks(self, project_id: str, root: str | None) -> list[str]:
        from devenv.transports.dockerapi import EngineError

        removed = []
        for n in self._project_networks(project_id, root):
            info = self._eng(self.engine.inspect_network, n["Id"]) or {}
            if info.get("Containers"):
                continue  # another machine of the project is still on it
            try:
                self._eng(self.engine.remove_network, n["Id"])
                removed.append(n.get("Name") or n["Id"][:12])
            except EngineError as exc:
                if exc.status not in (403, 404, 409):  # in use by a machine joining right now, or gone
                    raise MachineStateError(f"cannot remove network {n.get('Name')}: {exc.message}") from exc
        return removed

    def addresses(self, handle: str) -> dict[str, str]:
        info = self._inspect(handle) or {}
        project = ((info.get("Config") or {}).get("Labels") or {}).get(LABEL_PROJECT)
        prefix = f"devenv-{project}-"
        out = {}
        for net, ep in ((info.get("NetworkSettings") or {}).get("Networks") or {}).items():
            if project and net.startswith(prefix) and ep.get("IPAddress"):
                out[net[len(prefix) :]] = ep["IPAddress"]
        return out

    def _inspect(self, handle: str) -> dict | None:
        return self._eng(self.engine.inspect_container, handle)

    # -- the host's services (contract.HostAccess) ----------------------------------------------
    def host_endpoint(self, handle: str) -> HostEndpoint | None:
        """The default bridge's gateway: every container with a route off its networks reaches it
        (the host's own address, delivered locally, whichever bridge the container sits on), while
        an internal-only network keeps its containers off it as off everything else."""
        if not self._engine_is_local():
            return None  # a remote engine's bridge is on another host
        info = self._inspect(handle) or {}
        mode = str((info.get("HostConfig") or {}).get("NetworkMode") or "")
        if mode == "host":
            return HostEndpoint("127.0.0.1", "127.0.0.1")
        if mode == "none" or mode.startswith("container:"):
            return None
        routed = [
            ep.get("Gateway")
            for ep in ((info.get("NetworkSettings") or {}).get("Networks") or {}).values()
            if ep.get("Gateway")
        ]
        if not routed:
            return None
        bridge = self._eng(self.engine.inspect_network, "bridge") or {}
        gateways = [c.get("Gateway") for c in ((bridge.get("IPAM") or {}).get("Config") or []) if c.get("Gateway")]
        gateway = next((g for g in gateways if ":" not in g), None) or routed[0]
        return HostEndpoint(gateway, gateway)

    def state(self, handle: str) -> MachineState:
        info = self._inspect(handle)
        if info is None:
            return MachineState.NOT_CREATED
        status = info["State"]["Status"]
        if status in ("running", "restarting"):
            return MachineState.RUNNING
        if status == "paused":
            return MachineState.SUSPENDED
        if status == "removing":
            return MachineState.NOT_CREATED
        return MachineState.STOPPED

    def ports(self, handle: str) -> list[PortBinding]:
        info = self._inspect(handle)
        if not info:
            return []
        out = []
        for key, binds in (info["NetworkSettings"].get("Ports") or {}).items():
            guest, _, proto = key.partition("/")
            for b in binds or []:
                out.append(PortBinding(host_ip=b["HostIp"], host=int(b["HostPort"]), guest=int(guest), protocol=proto))
        return sorted(out, key=lambda b: (b.guest, b.host))

    def sync_kind(self, handle: str) -> str:
        return "bind mount"

    def transport(self, handle: str):
        from devenv.transports.docker import DockerTransport

        info = self._inspect(handle) or {}
        # A box build's container has no labels: its name (devenv-build-...) is what output shows.
        name = (info.get("Config", {}).get("Labels") or {}).get(LABEL_MACHINE) or info.get("Name", "").lstrip("/")
        name = name or handle[:12]
        return DockerTransport(self.engine, handle, name, docker_host=os.environ.get("DOCKER_HOST"))

    def sweep(self, project_id: str, root: Path | None = None) -> list[str]:
        """Remove every container labelled for the project (even without state).

        With ``root``, one whose recorded root is another folder (a colliding short id) stays."""
        removed = []
        for c in self._eng(self.engine.containers, [f"{LABEL_PROJECT}={project_id}"]):
            if root is not None and (c.get("Labels") or {}).get(LABEL_ROOT, str(root)) != str(root):
                continue
            self.destroy(c["Id"])
            removed.append((c.get("Names") or ["/" + c["Id"][:12]])[0].lstrip("/"))
        removed += self._remove_unused_networks(project_id, str(root) if root is not None else None)
        return removed

    def package(
        self,
        handle: str,
        target: Target,
        name: str,
        version: str,
        baked: list[str],
        *,
        record: Mapping[str, Any] | None = None,
    ) -> dict:
        """Commit the machine's container as box NAME@VERSION (devenv-box/NAME:VERSION).

        ``record`` (a box build): more labels, devenv.box.KEY=VALUE, and the usual PATH."""
        label = f"LABEL {LABEL_BOX}={name} {LABEL_VERSION}={version} {LABEL_BAKED}={','.join(baked)}"
        info = self._inspect(handle) or {}
        if (info.get("Config", {}).get("Entrypoint") or [None])[0] == keepalive.PATH_IN_CONTAINER:
            label += f" {LABEL_KEEPALIVE}={keepalive.digest()}"  # the committed files include it
        for key, value in (record or {}).items():
            label += f" {LABEL_BOX}.{_label_word(key)}={_label_word(str(value))}"
        changes = [_NO_ENTRYPOINT, 'CMD ["/bin/sh"]', label]
        if record is not None:
            changes.insert(2, _PATH)
        img = self._call(
            "commit",
            self.client.containers.get(handle).commit,
            repository=f"{IMAGE_REPO}/{name}",
            tag=version,
            changes=changes,
        )
        return {"provider": "docker", "ref": f"{IMAGE_REPO}/{name}:{version}", "digest": img.id}

    # -- optional roles ------------------------------------------------------------------------
    def suspend(self, handle: str) -> None:
        self._eng(self.engine.pause, handle)

    def resume(self, handle: str) -> None:
        self._eng(self.engine.unpause, handle)


def _label_word(text: str) -> str:
    """A key or value of a commit's LABEL line: as is when plain, else a quoted string."""
    import json

    return text if re.fullmatch(r"[A-Za-z0-9._,:/@+-]+", text) else json.dumps(text)


def docker_bytes(value: str | int) -> int:
    """A size as docker's CLI takes it: 67108864, "64m", "1g", "512k", "1GiB"."""
    if isinstance(value, int):
        return value
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    num, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
    try:
        return int(float(num) * units[unit])
    except ValueError:
        raise UsageError(f'\'{value}\' is not a size (use e.g. "64m" or "1g")') from None
