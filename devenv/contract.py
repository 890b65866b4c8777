"""The seams devenv's parts meet at. A driver or provisioner author reads this module alone.

    cli  ->  core (Project)  ->  Driver            owns a machine's lifecycle; hands out a Transport
                             ->  Provisioner       decides what to run; sees only a Transport
    box builders             ->  Driver + Provisioner, through this same contract
    every part               ->  Reporter          events; only the CLI renders them

**Driver lifecycle**, as the core calls it for `devenv up`:
``check_available`` (engine reachable?) -> ``validate`` (Devfile table, at load) -> ``preflight``
(host checks that change nothing) -> ``prepare_box`` (a box reference becomes a ``BoxArtifact``)
-> ``create`` (returns a handle: the engine's name for the machine) -> ``start`` -> ``transport``
(provisioning runs through it) -> ... ``stop`` / ``destroy``. ``state`` is always asked live.
A handle read back from ``.devenv/`` is used only after ``owns`` says ``OURS``: state files are
not trusted. ``find`` and ``sweep`` locate machines by the labels in ``Target.labels`` so a lost
state file never leaks one.

**Optional roles** are declared, never probed: a driver's ``features`` record says which of the
role protocols below (``Snapshots``, ``Suspend``, ``ApplySettings``, ``Package``, ``CopySync``,
``BoxImages``, ``BoxSources``) it implements, and the core asks ``features`` (``supports()``), not ``hasattr``.

**Registering**: a third-party driver is a class named in the ``devenv.drivers`` entry point
group (a provisioner: ``devenv.provisioners``); the Devfile's ``driver = "NAME"`` then accepts it
and ``[machines.X.NAME]`` is validated against its ``options`` table.

**Output**: drivers, provisioners and builders never print. They report through ``self.reporter``
(a driver; set by the core before use) or ``ctx.reporter`` (a provisioner). The CLI renders the
events as text or, with ``--progress json``, as one JSON object per line.
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol, TypeVar, cast, runtime_checkable

# What an author needs from the rest of devenv, re-exported so this module is the one import:
# option tables and problems (schema) and the errors a driver raises (each carries a hint).
from devenv.errors import (
    BackendUnavailable,
    BoxError,
    CommandFailed,
    DevenvError,
    MachineStateError,
    PortConflict,
    UnsupportedOperation,
)
from devenv.model.schema import Bool, Field, Int, ListOf, MapOf, Problem, Str, Table

if TYPE_CHECKING:
    from devenv.model.devfile import Machine

__all__ = [
    "LABEL_MACHINE",
    "LABEL_PROJECT",
    "LABEL_ROOT",
    "ApplySettings",
    "BackendUnavailable",
    "Bool",
    "BoxArtifact",
    "BoxError",
    "BoxImages",
    "BoxSources",
    "BuildTarget",
    "CommandFailed",
    "Connection",
    "CopySync",
    "DevenvError",
    "Driver",
    "Event",
    "EventKind",
    "QUIET",
    "Features",
    "Field",
    "Int",
    "LineSplitter",
    "ListOf",
    "MachineState",
    "MachineStateError",
    "MapOf",
    "Networks",
    "OutputFn",
    "Ownership",
    "Package",
    "PortBinding",
    "PortConflict",
    "Problem",
    "Provisioner",
    "Reporter",
    "RunContext",
    "Snapshots",
    "Str",
    "Suspend",
    "Table",
    "Target",
    "Transport",
    "UnsupportedOperation",
    "role",
    "safe_handle",
    "supports",
]

# Every engine object devenv makes carries these labels (container labels, domain metadata, VM
# extradata), so it is found again by label when .devenv/ is lost, and never mistaken for another's.
LABEL_PROJECT = "devenv.project"
LABEL_MACHINE = "devenv.machine"
LABEL_ROOT = "devenv.root"

OutputFn = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Reporter: progress as events
# --------------------------------------------------------------------------------------------
EventKind = Literal["info", "phase", "output", "warning", "error", "debug", "begin", "tick", "end"]


class Event:
    """One thing worth telling the user. Text is raw: the renderer masks secrets and escapes.

    A plain class, not a dataclass: the contract is imported by every command, and generating
    a dataclass's methods at import costs start-up time for nothing an event needs."""

    __slots__ = ("kind", "text", "machine", "phase", "data", "time")

    def __init__(
        self,
        kind: EventKind,
        text: str,
        machine: str | None = None,
        # Lifecycle phases the core reports ("create", "start", "step", "ready", "stop",
        # "destroy", ...) and box builds ("build", "bake"); None for plain messages.
        phase: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.text = text
        self.machine = machine
        self.phase = phase
        self.data: Mapping[str, Any] = data if data is not None else {}
        self.time = time.time()

    def __repr__(self) -> str:
        return (
            f"Event({self.kind!r}, {self.text!r}, machine={self.machine!r}, phase={self.phase!r}, data={self.data!r})"
        )


class ProgressNote:
    """What long work says of itself while it runs (one line, e.g. "120/800 MiB, 40 MiB/s")."""

    __slots__ = ("detail",)

    def __init__(self) -> None:
        self.detail = ""

    def transfer(self, done: int, total: int, started: float) -> None:
        mib = 1024 * 1024
        rate = done / max(time.monotonic() - started, 1e-3) / mib
        self.detail = f"{done / mib:.1f}/{total / mib:.1f} MiB, {rate:.1f} MiB/s"

    def files(self) -> Any:
        """A callback ``(key, bytes so far, size)`` for a transfer of several files: the note
        says the bytes of all of them and the rate since the first call was made."""
        started = time.monotonic()
        got: dict[str, int] = {}
        sizes: dict[str, int] = {}

        def update(key: str, done: int, size: int) -> None:
            got[key], sizes[key] = done, size
            self.transfer(sum(got.values()), sum(sizes.values()), started)

        return update


class Reporter:
    """What drivers, provisioners, box builders and the core report through.

    It only builds events and hands them to ``sink``; it never prints. ``debug`` says whether
    the receiver wants debug events (so a builder streams debootstrap's chatter only then).
    """

    def __init__(self, sink: Callable[[Event], None] | None = None, *, debug: bool = False) -> None:
        self._sink = sink
        self.debug_enabled = debug

    def emit(self, event: Event) -> None:
        if self._sink is not None:
            self._sink(event)

    def info(self, machine: str | None, text: str, **data: Any) -> None:
        self.emit(Event("info", text, machine, data=data))

    def phase(self, machine: str | None, phase: str, text: str, **data: Any) -> None:
        """A step of a machine's lifecycle (created, started, a provision step, ready)."""
        self.emit(Event("phase", text, machine, phase, data))

    def output(self, machine: str | None, line: str) -> None:
        """A line a command in the machine (or a build tool) printed."""
        self.emit(Event("output", line, machine))

    def warn(self, text: str, machine: str | None = None) -> None:
        self.emit(Event("warning", text, machine))

    def error(self, text: str, hint: str | None = None, machine: str | None = None) -> None:
        """A failure that does not end the command (the one that does is raised, not reported)."""
        self.emit(Event("error", text, machine, data={"hint": hint} if hint else {}))

    def debug(self, text: str, machine: str | None = None) -> None:
        if self.debug_enabled:
            self.emit(Event("debug", text, machine))

    @contextmanager
    def progress(
        self, machine: str | None, text: str, *, every: float = 5.0, phase: str | None = None
    ) -> Iterator[ProgressNote]:
        """Long work: a ``begin`` event, a ``tick`` every ``every`` seconds, an ``end`` when it
        succeeded (a failure is the caller's error to report), so slow work never looks hung.
        What the work says of itself (``note.detail``: bytes and rate of a transfer) rides on
        each tick."""
        self.emit(Event("begin", text, machine, phase))
        start = time.monotonic()
        done = threading.Event()
        note = ProgressNote()

        def ticker() -> None:
            while not done.wait(every):
                data: dict[str, Any] = {"elapsed": round(time.monotonic() - start, 1)}
                if note.detail:
                    data["detail"] = note.detail
                self.emit(Event("tick", text, machine, phase, data))

        t = threading.Thread(target=ticker, daemon=True)
        t.start()
        try:
            yield note
        finally:
            done.set()
            t.join()
        self.emit(Event("end", text, machine, phase, {"elapsed": round(time.monotonic() - start, 1)}))


QUIET = Reporter()  # the reporter of a part nobody gave one: reports go nowhere


# --------------------------------------------------------------------------------------------
# What a driver sees and returns
# --------------------------------------------------------------------------------------------
class MachineState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    NOT_CREATED = "not created"

    def __str__(self) -> str:
        return self.value


class Ownership(enum.Enum):
    """What the engine says about a handle read from .devenv/ (which is never trusted as such)."""

    OURS = "ours"  # exists and carries this project's id and this machine's name
    GONE = "gone"  # no such engine object (any more)
    FOREIGN = "foreign"  # exists, but another project's, not devenv's, or the handle is malformed


# Engine-side names devenv makes (and Docker ids): a handle outside this shape is never passed to
# an engine (no option injection into an engine CLI's argv, no path tricks in API URLs).
SAFE_HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


def safe_handle(handle: object) -> bool:
    return isinstance(handle, str) and SAFE_HANDLE.fullmatch(handle) is not None


@dataclass(frozen=True)
class Target:
    """One machine of one project, as a driver needs to see it."""

    project_id: str
    project_root: Path
    machine: Machine

    @property
    def name(self) -> str:
        return self.machine.name

    @property
    def resource_name(self) -> str:
        """Deterministic engine-side name: found again even when .devenv/ is lost."""
        return f"devenv-{self.project_id}-{self.machine.name}"

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_PROJECT: self.project_id,
            LABEL_MACHINE: self.machine.name,
            LABEL_ROOT: str(self.project_root),
        }


@dataclass(frozen=True)
class BuildTarget(Target):
    """The machine a box build bakes in (devenv.boxes.builders): made, baked, packaged, destroyed.

    It carries no labels: nothing of it may end up in the box (a Docker commit keeps the
    container's labels, and every machine made from the box would carry them). A driver finds it
    by its ``resource_name`` (``devenv-build-...``, unique per build), not by labels."""

    @property
    def labels(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class BoxArtifact:
    """What a driver boots: resolved from a box reference by ``prepare_box`` before ``create``."""

    name: str  # "debian-12" or "docker:alpine:3"
    version: str | None
    ref: str  # engine-side reference (image tag, qcow2 path, ...)
    digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # "baked": fingerprints of steps the box holds


@dataclass(frozen=True)
class PortBinding:
    host_ip: str
    host: int
    guest: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host} -> {self.guest}/{self.protocol}"


class Features(NamedTuple):
    """The optional roles a driver implements (each a protocol below), declared once per class.
    (A NamedTuple: immutable like a frozen dataclass, and cheaper to define at import.)"""

    snapshots: bool = False  # Snapshots
    suspend: bool = False  # Suspend
    apply_settings: bool = False  # ApplySettings: cpus/memory/ports changed without a new machine
    package: bool = False  # Package: a machine becomes a box
    copy_sync: bool = False  # CopySync: some sync folders are copies the core pushes (rsync)
    box_images: bool = False  # BoxImages: boxes live in the engine (images), listed/removed there
    box_sources: bool = False  # BoxSources: base images for box builds (pull one, import a root fs)
    networks: bool = False  # Networks: the machine joins the project's private networks (Machine.networks)
    host_access: bool = False  # HostAccess: the machine reaches a service devenv runs on the host (package cache)
    # Whether ``create`` fixes the machine's env (a container's environment). When False the core
    # passes the env with every command the transport runs instead.
    env_at_create: bool = True


class Driver(Protocol):
    name: ClassVar[str]  # "docker": also the Devfile's driver name and its [machines.X.docker] table
    needs_box: ClassVar[bool]  # False when the engine's own config names the image (a Vagrantfile)
    options: ClassVar[Table]  # the schema of [machines.NAME.<name>]
    features: ClassVar[Features]
    reporter: Reporter  # set by whoever uses the driver; QUIET until then

    def check_available(self, machine: Machine | None = None) -> None:
        """Raise BackendUnavailable (with the fix as hint) when the engine is not reachable."""
        ...

    def describe_engine(self, machine: Machine | None = None) -> str:
        """One line for `devenv doctor` about the engine in use ("engine 24.0 at unix:///...");
        called after check_available succeeded."""
        ...

    def validate(self, machine: Machine) -> list[Problem]:
        """Problems with the machine's settings for this engine (its driver table among them)."""
        ...

    def preflight(self, target: Target) -> None:
        """Checks against this host that change nothing (e.g. every port's host_ip is an address
        here), run by `up`/`reload` before the project lock or any file is written."""
        ...

    def prepare_box(self, target: Target, box: str | None) -> BoxArtifact:
        """Resolve the machine's box reference to what this engine boots (may import a box).
        ``box`` is None only for drivers with ``needs_box = False`` (the engine's config names it)."""
        ...

    def create(self, target: Target, box: BoxArtifact, *, env: Mapping[str, str] | None = None) -> str:
        """Make the machine (not started) and return its handle. ``env`` is the machine's
        resolved environment, for engines whose machines keep one (``features.env_at_create``)."""
        ...

    def find(self, target: Target) -> str | None:
        """The handle of this target's machine found by its labels, or None."""
        ...

    def owns(self, handle: str, target: Target) -> Ownership:
        """Whether the engine object a handle names is this target's machine.

        OURS only when it carries the target's project id and machine name. The core uses a
        handle from .devenv/ only when this says OURS: a forged or stale state file never makes
        devenv reach, change or remove anything else. Must not contact any engine other than the
        one the machine's Devfile entry names."""
        ...

    def start(self, handle: str) -> None: ...
    def stop(self, handle: str, *, force: bool = False) -> None: ...
    def destroy(self, handle: str) -> None:
        """Remove the machine; a machine that is already gone is not an error."""
        ...

    def state(self, handle: str) -> MachineState: ...
    def ports(self, handle: str) -> list[PortBinding]: ...
    def sync_kind(self, handle: str) -> str | None:
        """How the machine's sync folders reach it ("bind mount", "virtiofs", "rsync"...), for status."""
        ...

    def transport(self, handle: str) -> Transport: ...
    def sweep(self, project_id: str, root: Path | None = None) -> list[str]:
        """Remove this project's machines the state no longer names; returns what went."""
        ...


# Optional roles ------------------------------------------------------------------------------
@runtime_checkable
class Snapshots(Protocol):
    def snapshot_save(self, handle: str, name: str) -> None: ...
    def snapshot_restore(self, handle: str, name: str) -> None: ...
    def snapshot_list(self, handle: str) -> list[str]: ...
    def snapshot_delete(self, handle: str, name: str) -> None: ...


@runtime_checkable
class Suspend(Protocol):
    def suspend(self, handle: str) -> None: ...
    def resume(self, handle: str) -> None: ...


@runtime_checkable
class ApplySettings(Protocol):
    def apply_settings(self, handle: str, target: Target, box: BoxArtifact) -> bool:
        """Apply changed cpus/memory/ports/sync to the existing machine (its disk kept)."""
        ...


@runtime_checkable
class Package(Protocol):
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
        """Store the machine as box NAME@VERSION (``baked``: fingerprints of the steps it holds);
        returns the stored box's record (provider, ref, digest).

        ``record`` is given by a box build (a stopped BuildTarget machine): what the box records
        besides its name, version and steps (the recipe's origin, description, how it boots), as
        image labels ``devenv.box.KEY`` or box.json keys; the box is then the build's, not a copy
        of the machine's own box. None for `devenv package`."""
        ...


@runtime_checkable
class CopySync(Protocol):
    def sync_plan(self, handle: str) -> list[dict]:
        """The sync folders as made: dicts with host, guest and kind ("rsync": the core pushes)."""
        ...


@runtime_checkable
class BoxImages(Protocol):
    """Boxes that live inside the engine (Docker images), not in devenv's box store."""

    def list_boxes(self) -> list[dict]: ...
    def remove_box(self, name: str, version: str | None) -> list[str]: ...
    def push_box(self, local: str, remote: str, machine: str | None = None) -> str:
        """Push the box image ``local`` to the registry image ``remote`` (HOST/REPO:TAG) with the
        engine's own credentials; returns the manifest digest the registry gave it."""
        ...

    def pull_box(self, remote: str, local: str, machine: str | None = None) -> str:
        """Pull ``remote`` (by tag or @sha256 digest; the engine checks the digest) and tag it
        ``local``; returns its image id (what Devfile.lock pins)."""
        ...


@runtime_checkable
class BoxSources(Protocol):
    """Where a box build on an engine whose boxes are images (Docker) gets its base image; the
    builder then bakes in a BuildTarget machine made from it and stores that with Package."""

    def has_image(self, ref: str) -> bool: ...
    def pull_image(self, ref: str, machine: str | None = None) -> None:
        """Pull ``ref`` from its registry (a BoxError when it cannot be pulled)."""
        ...

    def import_rootfs(self, tar: Path, ref: str) -> None:
        """Make the image ``ref`` (REPO:TAG) from a root file system tar (``./bin/...``)."""
        ...

    def remove_image(self, ref: str) -> None:
        """Untag/remove ``ref``; one that is gone (or still used) is not an error."""
        ...


@runtime_checkable
class Networks(Protocol):
    """The driver makes the project's private networks (``target.machine.networks``: each with its
    subnet and the machine's fixed address, if any) when a machine joins one at create, so that
    machines reach each other by machine name and hostname; destroy and sweep remove a network
    when no machine of the project is on it any more. Found by labels, like machines."""

    def addresses(self, handle: str) -> dict[str, str]:
        """The machine's address on each private network, by the Devfile's network name."""
        ...


class HostEndpoint(NamedTuple):
    """Where a host service must listen for a machine to reach it, and the address the machine
    uses for it: ("127.0.0.1", "10.0.2.2") under user-mode networking, the bridge's gateway twice
    for a container. Never a wildcard address: the service stays off the host's other networks."""

    bind: str
    address: str


@runtime_checkable
class HostAccess(Protocol):
    """The machine can reach a TCP service devenv runs on this host (the package cache)."""

    def host_endpoint(self, handle: str) -> HostEndpoint | None:
        """How this machine reaches the host, or None when it cannot (no network, a remote engine)."""
        ...


_ROLES: dict[str, type] = {
    "snapshots": Snapshots,
    "suspend": Suspend,
    "apply_settings": ApplySettings,
    "package": Package,
    "copy_sync": CopySync,
    "box_images": BoxImages,
    "box_sources": BoxSources,
    "networks": Networks,
    "host_access": HostAccess,
}
R = TypeVar("R")


def supports(driver: object, role: str) -> bool:
    """Whether ``driver`` declares ``role`` (a Features field naming a role protocol).

    A declaration without the methods is a driver bug, said at once rather than as an
    AttributeError in the middle of a command."""
    features = getattr(driver, "features", None)
    if not isinstance(features, Features) or not getattr(features, role):
        return False
    proto = _ROLES[role]
    if not isinstance(driver, proto):
        raise TypeError(f"driver {type(driver).__name__} declares '{role}' but does not implement {proto.__name__}")
    return True


def role(driver: object, proto: type[R]) -> R | None:
    """``driver`` as the role protocol ``proto`` when it declares that role, else None: the typed
    form of :func:`supports` (``if (snap := role(driver, Snapshots)) is None: ...``)."""
    name = next(k for k, v in _ROLES.items() if v is proto)
    return cast(R, driver) if supports(driver, name) else None


# --------------------------------------------------------------------------------------------
# Transport: commands and files in a running machine
# --------------------------------------------------------------------------------------------
class Connection(NamedTuple):
    """How tools outside devenv (Ansible, ssh) reach a machine: a transport describes itself
    with this, so no provisioner needs to know a transport's class.

    kind "docker": ``container`` on the engine at ``docker_host`` (None: the default engine).
    kind "ssh": OpenSSH to ``host``:``port`` as ``user`` with ``key``, the pinned host key in
    ``known_hosts``; ``ssh_options`` are the exact ``-o`` options devenv itself connects with
    (StrictHostKeyChecking=yes, never off), ``control_path`` devenv's open connection master.
    """

    kind: Literal["docker", "ssh"]
    container: str | None = None
    docker_host: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    key: Path | None = None
    known_hosts: Path | None = None
    ssh_options: tuple[str, ...] = ()
    control_path: str | None = None
    # The machine's environment when it travels with every command (drivers whose machines keep
    # none): Ansible hands it to plays as devenv_env. In memory only, never on a command line.
    env: Mapping[str, str] = MappingProxyType({})


class Transport(Protocol):
    def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        on_output: OutputFn | None = None,
        on_stderr: OutputFn | None = None,
    ) -> int:
        """Run argv; stream output lines to on_output (stderr too, unless on_stderr is given).

        Returns the command's exit code. ``env`` never reaches a process list (stdin or a
        private file carries it)."""
        ...

    def put(self, local: Path, remote: str) -> None:
        """Copy a file to the path ``remote``, or a folder's contents into the folder ``remote``.
        Links are copied as links, never followed."""
        ...

    def put_tree(self, local: Path, remote: str, *, exclude: tuple[str, ...] = ()) -> None:
        """Bring the folder ``remote`` up to date with ``local`` (a copied sync folder), leaving out
        paths matching the fnmatch patterns in ``exclude``; incremental where the transport can."""
        ...

    def get(self, remote: str, local: Path) -> None: ...

    def interactive(
        self,
        argv: list[str] | None,
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
    ) -> int:
        """Attach the user's terminal; argv None means a login shell."""
        ...

    def connection(self) -> Connection:
        """How Ansible or an ssh client reaches this machine."""
        ...

    def ssh_config(self, alias: str) -> str | None:
        """An ssh_config block for ``ssh ALIAS`` (pinned host key), or None when the machine is
        not reached over SSH."""
        ...


class LineSplitter:
    """Turns a byte stream into complete text lines, so output never mixes half-lines."""

    def __init__(self, sink: OutputFn) -> None:
        self.sink = sink
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self.sink(line.rstrip(b"\r").decode("utf-8", "replace"))

    def close(self) -> None:
        if self.buf:
            self.sink(self.buf.decode("utf-8", "replace"))
            self.buf = b""


# --------------------------------------------------------------------------------------------
# Provisioner: what a step does
# --------------------------------------------------------------------------------------------
@dataclass
class RunContext:
    machine: str  # the label output is reported under (a machine name, or "box NAME" in a build)
    root: Path  # where the step's relative paths start (project root or recipe root)
    transport: Transport
    reporter: Reporter = QUIET

    def on_output(self, line: str) -> None:
        self.reporter.output(self.machine, line)


class Provisioner(Protocol):
    type: ClassVar[str]  # the step's `type = "..."`
    options: ClassVar[Table]  # the step's keys (type, name and run included: provisioners.step_fields)

    def files(self, config: dict, root: Path) -> list[Path]:
        """Files and folders the step reads on the host (for fingerprints and validation)."""
        ...

    def check(self, config: dict, root: Path, path: tuple) -> list[Problem]: ...
    def describe(self, config: dict) -> str: ...
    def run(self, config: dict, ctx: RunContext) -> None:
        """Do the step through ``ctx.transport``; raise ProvisionError when it fails."""
        ...
