"""Vagrant bridge driver: machines only Vagrant can run, driven through python-vagrant.

The machine's ``[machines.NAME.vagrant]`` table names ``dir`` (a folder with a Vagrantfile,
relative to the project), optionally ``machine`` (the Vagrant machine in a multi-machine
Vagrantfile) and ``provider``. Vagrant owns the machine (box, network, synced folders); devenv
runs its own provisioners in it, keeps its fingerprints and reports drift as for any machine.

Handle: ``"<absolute dir>#<vagrant machine name>"``.

Vagrant is slow (every call loads Ruby and the Vagrantfile: about a second), so it is asked as
little as possible:
- a machine Vagrant never created has no ``.vagrant/machines/NAME/PROVIDER/id`` file: that is
  "not created" without asking (Vagrant itself decides so from the same file);
- a docker-provider machine's state and its transport come from the Docker engine, by the
  container id Vagrant recorded in that ``id`` file;
- ``vagrant ssh-config`` is read once after every up/reload/resume devenv does and cached in
  ``.devenv/machines/NAME/vagrant.json``;
- the answers of ``vagrant status`` are shared for a few seconds within one devenv command.
Only machines with ``driver = "vagrant"`` ever reach this module's Vagrant calls.

Host keys: Vagrant's own ssh-config turns host key checking off. devenv does not: on the first
contact after ``vagrant up`` (right after Vagrant itself has reached the machine) the key the
machine presents is pinned in ``.devenv/machines/NAME/known_hosts`` (under a HostKeyAlias, so a
changed forwarded port does not matter) and every later connection runs with
StrictHostKeyChecking=yes against it. That first contact is trust-on-first-use: nothing but
Vagrant's unauthenticated SSH exists to cross-check it. Docker-provider machines are reached
through the engine (``docker exec``), which needs no host key at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from devenv.contract import QUIET, BoxArtifact, Features, MachineState, Ownership, PortBinding, Reporter, Target
from devenv.errors import (
    BackendUnavailable,
    CommandFailed,
    DevenvError,
    DevfileError,
    MachineStateError,
    UnsupportedOperation,
    UsageError,
)
from devenv.masking import head
from devenv.model.schema import Bool, Field, Problem, Str, Table, did_you_mean
from devenv.transports.ssh import SshTransport, ssh_word

INSTALL_HINT = (
    "install it: `apt-get install --no-install-recommends vagrant` (Debian/Ubuntu), "
    "or see https://developer.hashicorp.com/vagrant/install"
)
STATUS_TTL = 5.0  # seconds one `vagrant status` answer is reused within a devenv command
VAGRANTFILE_NAMES = ("Vagrantfile", "vagrantfile")

_OPTIONS = Table(
    {
        "dir": Field(Str(description="Folder with the Vagrantfile, relative to the project"), required=True),
        # Both reach vagrant's command line (`vagrant up NAME`): a name that starts with '-' would be
        # read as an option, and one in slashes as a pattern matching every machine.
        "machine": Field(
            Str(
                pattern=r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}",
                pattern_help="a Vagrant machine name (letters, digits, _ . -, not starting with . or -)",
                description="Vagrant machine name (multi-machine Vagrantfile); default: its only machine",
            )
        ),
        "provider": Field(
            Str(
                pattern=r"[a-z0-9_][a-z0-9_-]{0,63}",
                pattern_help="a Vagrant provider name, e.g. docker, libvirt, virtualbox",
                description="Vagrant provider for `vagrant up --provider`, e.g. docker, libvirt",
            )
        ),
        # `dir` is a host folder whose Vagrantfile (Ruby) runs on this host and whose machine devenv
        # halts and destroys: confined to the project by its real path like every host path.
        "allow_outside_project": Field(
            Bool(description="Allow a dir outside the project (its Vagrantfile runs on this host)")
        ),
        "transport": Field(
            Str(
                choices=("auto", "ssh", "docker"),
                description="How devenv reaches the machine: auto = the container itself for the docker "
                "provider, SSH (from `vagrant ssh-config`, host key pinned) for every other provider",
            ),
            default="auto",
        ),
    },
    description="Options for the Vagrant bridge driver",
)


class VagrantfileError(DevfileError):
    """The Vagrantfile does not load or its configuration is invalid (Vagrant's words)."""


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested)

_STATES: dict[str, MachineState] = {
    "running": MachineState.RUNNING,
    "poweroff": MachineState.STOPPED,
    "stopped": MachineState.STOPPED,
    "not_running": MachineState.STOPPED,
    "shutoff": MachineState.STOPPED,
    "shutdown": MachineState.STOPPED,
    "aborted": MachineState.STOPPED,
    "saved": MachineState.SUSPENDED,
    "paused": MachineState.SUSPENDED,
    "suspended": MachineState.SUSPENDED,
    "frozen": MachineState.SUSPENDED,
    "pmsuspended": MachineState.SUSPENDED,
    "not_created": MachineState.NOT_CREATED,
    # Vagrant's docker provider while it makes the container (left behind when that fails):
    # it exists enough to be destroyed or brought up.
    "preparing": MachineState.STOPPED,
}


def map_state(vagrant_state: str | None) -> MachineState | None:
    """devenv's state for a Vagrant state ("poweroff", "not created", ...); None when unknown."""
    if not vagrant_state:
        return None
    key = re.sub(r"[\s-]+", "_", vagrant_state.strip().lower())
    return _STATES.get(key)


def split_handle(handle: str) -> tuple[Path, str]:
    folder, sep, name = handle.rpartition("#")
    if not sep or not folder or not name:
        raise MachineStateError(f"'{handle}' is not a Vagrant bridge handle (DIR#MACHINE)")
    return Path(folder), name


def make_handle(folder: Path, name: str) -> str:
    return f"{folder}#{name}"


@dataclass(frozen=True)
class SshInfo:
    host: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"host": self.host, "port": self.port, "user": self.user, "identity_files": list(self.identity_files)}

    @classmethod
    def from_dict(cls, d: dict) -> SshInfo:
        return cls(d["host"], int(d["port"]), d["user"], tuple(d.get("identity_files", ())))

    def key(self) -> str | None:
        """The first identity file that exists (Vagrant lists its inserted key, then the insecure one)."""
        for f in self.identity_files:
            if Path(f).is_file():
                return f
        return self.identity_files[0] if self.identity_files else None


def parse_ssh_config(text: str, machine: str | None = None) -> SshInfo:
    """HostName, Port, User and IdentityFile(s) of one Host block of `vagrant ssh-config` output.

    Takes ``Key value`` and ``Key=value`` lines, double-quoted values and comments; with several
    Host blocks, the one named ``machine`` (else the first).
    """
    blocks: list[tuple[str, dict[str, list[str]]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"(\S+?)(?:\s*=\s*|\s+)(.*)$", line)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key == "host":
            blocks.append((value, {}))
            continue
        if not blocks:
            blocks.append(("", {}))
        blocks[-1][1].setdefault(key, []).append(value)
    if not blocks:
        raise CommandFailed("`vagrant ssh-config` printed no Host block")
    chosen = next((b for n, b in blocks if machine is not None and n == machine), blocks[0][1])
    host = (chosen.get("hostname") or [""])[0]
    if not host:
        raise CommandFailed("`vagrant ssh-config` names no HostName: the machine is not reachable over SSH")
    try:
        port = int((chosen.get("port") or ["22"])[0])
    except ValueError as exc:
        raise CommandFailed(f"`vagrant ssh-config` printed a bad Port: {chosen['port'][0]!r}") from exc
    user = (chosen.get("user") or ["vagrant"])[0]
    return SshInfo(host=host, port=port, user=user, identity_files=tuple(chosen.get("identityfile", ())))


def _unescape_machine_readable(text: str) -> str:
    return text.replace("%!(VAGRANT_COMMA)", ",").replace("\\n", "\n").replace("\\r", "")


def parse_machine_readable(text: str) -> list[tuple[str, str, list[str]]]:
    """(target, kind, data fields) of `--machine-readable` lines (timestamp,target,kind,data...)."""
    out = []
    for line in text.splitlines():
        parts = line.split(",", 3)
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        data = parts[3].split(",") if len(parts) > 3 else []
        out.append((parts[1], parts[2], [_unescape_machine_readable(d) for d in data]))
    return out


def machine_readable_error(text: str) -> tuple[str, str] | None:
    """(Vagrant error class, message) of an `error-exit` line, if any."""
    for _target, kind, data in parse_machine_readable(text):
        if kind == "error-exit" and data:
            return data[0], ",".join(data[1:])
    return None


_BOILERPLATE = (
    "Vagrant failed to initialize at a very early stage",
    "There is a syntax error in the following Vagrantfile",
    "message is reproduced below for convenience",
    "There was an error loading a Vagrantfile",
    "and the error message are shown below",
    "an invalid or undefined variable",
    "There are errors in the configuration of this machine",
    "the following errors and try again",
    "Bringing machine ",
    "The command run along with the output from the command is shown",
    "Run 'docker run --help'",
)
_NOISE = re.compile(r"\s*(==>|\d+,|below\.$|Command: \[|Stdout:\s*$)")


def trim_vagrant_error(text: str, limit: int = 6) -> list[str]:
    """Vagrant's error output cut to its key lines (boilerplate, blank and progress lines dropped)."""
    err = machine_readable_error(text)
    if err:
        text = err[1]
    lines = [ln.rstrip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln.strip() and not any(b in ln for b in _BOILERPLATE)]
    # head masks before it cuts: a secret the cut falls inside would otherwise show its head.
    lines = [head(ln, 160) for ln in lines if not _NOISE.match(ln)]
    fields = {}
    for ln in lines:
        m = re.match(r"(Path|Line number|Message): (.*)$", ln.strip())
        if m:
            fields[m.group(1)] = m.group(2)
    if "Message" in fields:
        where = fields.get("Path", "Vagrantfile")
        if fields.get("Line number", "0") != "0":  # Vagrant says 0 when it does not know
            where += f":{fields['Line number']}"
        rest = [ln for ln in lines if not re.match(r"\s*(Path|Line number|Message): ", ln)]
        lines = [f"{where}: {fields['Message']}", *rest]
    if len(lines) > limit:
        lines = lines[: limit - 1] + [f"... ({len(lines) - limit + 1} more lines)"]
    return lines


def strip_progress_prefix(line: str, name: str) -> str:
    """Vagrant's "==> web: " / "    web: " prefix off a progress line (devenv adds its own)."""
    return re.sub(rf"^(?:==> |\s+){re.escape(name)}: ?", "", line.rstrip())


def find_vagrantfile(folder: Path) -> Path | None:
    name = os.environ.get("VAGRANT_VAGRANTFILE")
    for n in (name,) if name else VAGRANTFILE_NAMES:
        if (folder / n).is_file():
            return folder / n
    return None


def vagrant_env(folder: Path, provider: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(VAGRANT_CWD=str(folder), VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    if provider:
        env["VAGRANT_DEFAULT_PROVIDER"] = provider
    return env


def machine_data_dir(folder: Path, name: str) -> Path:
    """Vagrant's per-machine folder (.vagrant/machines/NAME), honouring VAGRANT_DOTFILE_PATH."""
    dot = Path(os.path.expanduser(os.environ.get("VAGRANT_DOTFILE_PATH") or ".vagrant"))
    return (folder / dot if not dot.is_absolute() else dot) / "machines" / name


def created_as(folder: Path, name: str) -> tuple[str, str] | None:
    """(provider, machine id) when Vagrant recorded the machine as created, else None."""
    d = machine_data_dir(folder, name)
    if not d.is_dir():
        return None
    for sub in sorted(d.iterdir()):
        try:
            mid = (sub / "id").read_text().strip()
        except OSError:
            continue
        if mid:
            return sub.name, mid
    return None


def vagrant_dir(root: Path, opts: dict, machine: str, *, kind: str = "dir") -> Path:
    """The real path of the table's ``dir``, required inside the project (unless
    allow_outside_project): a Devfile naming ``../other-vm``, ``~/vm``, ``/abs`` or a link to one
    would have devenv run that Vagrantfile's Ruby here and halt or destroy a VM it never made.
    Checked at validate (kind "none") and again at every use (the link may change in between)."""
    from devenv.paths import ConfinementError, confine

    try:
        return confine(
            root,
            opts["dir"],
            allow_outside=bool(opts.get("allow_outside_project")),
            kind=kind,
            fix=f"set allow_outside_project = true in [machines.{machine}.vagrant] if you mean it",
        )
    except ConfinementError as exc:
        raise UsageError(f"machine '{machine}': vagrant dir {exc.message}") from exc


def _marker_path(handle: str) -> Path:
    from devenv.state import data_dir

    return data_dir() / "vagrant" / (hashlib.sha256(handle.encode()).hexdigest()[:32] + ".json")


def read_marker(handle: str) -> dict | None:
    """What devenv recorded when it brought this Vagrant machine up: {"handle", "id"} or None.

    Kept in devenv's own data folder, never in the project: a repository commits its .devenv/
    and its .vagrant/ (the machine id Vagrant acts on) but cannot write there."""
    from devenv.paths import read_regular

    try:
        data = json.loads(read_regular(_marker_path(handle), 1 << 16, what="it").decode())
    except (OSError, ValueError, DevenvError):
        return None
    if not isinstance(data, dict) or data.get("handle") != handle or not isinstance(data.get("id"), (str, type(None))):
        return None
    return data


def write_marker(handle: str, machine_id: str | None) -> None:
    """Record that devenv made (id None: is making) the Vagrant machine ``handle``."""
    from devenv.state import atomic_write

    path = _marker_path(handle)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"handle": handle, "id": machine_id}, sort_keys=True) + "\n")


def forget_marker(handle: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _marker_path(handle).unlink()


class _Capture:
    """A python-vagrant output context manager that keeps what the command wrote."""

    def __init__(self) -> None:
        self.text = ""

    @contextlib.contextmanager
    def cm(self) -> Iterator[Any]:
        with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as fh:
            try:
                yield fh
            finally:
                fh.flush()
                fh.seek(0)
                self.text += fh.read()


class PinnedSsh(SshTransport):
    """SshTransport whose known_hosts entry is found by a per-machine alias, not host:port.

    Vagrant forwards SSH from ports it picks (and may change on reload); the pinned key stays
    the machine's. Connection sharing is keyed by the pinned key too, so a master connection
    to an earlier machine on the same forwarded port is never reused.
    """

    def __init__(self, *, alias: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alias = ssh_word(alias, what="host key alias")  # an -o value and an ssh_config line

    def _control_dir(self) -> Path:
        from devenv.drivers.vm.identity import MachineKeys

        base = super()._control_dir()
        pinned = MachineKeys(self.known_hosts.parent).read_known_hosts()  # never through a link
        tag = hashlib.sha256(self.alias.encode() + b"\0" + pinned).hexdigest()[:12]
        d = base / f"v{tag}"
        d.mkdir(mode=0o700, exist_ok=True)
        return d

    def options(self) -> list[str]:
        opts = super().options()
        return [*opts[:2], "-o", f"HostKeyAlias={self.alias}", *opts[2:]]

    def ssh_config(self, alias: str) -> str:
        text = super().ssh_config(alias)
        return text.replace(
            "  StrictHostKeyChecking yes\n", f"  StrictHostKeyChecking yes\n  HostKeyAlias {self.alias}\n"
        )

    def pin(self, *, timeout: float = 30.0) -> str:
        """First contact: record the key the machine presents, authenticated by our login key.

        Returns the key's fingerprint. Trust on first use: see the module docstring.
        """
        from devenv.drivers.vm.identity import MachineKeys
        from devenv.state import read_bounded
        from devenv.transports.ssh import ssh_path

        keys = MachineKeys(self.known_hosts.parent)
        keys.forget_known_hosts()
        # ssh writes the new entry itself, following any link at the name it is given: it gets one in
        # a fresh private folder of ours, and the result moves into the key folder by descriptor.
        tmp = Path(tempfile.mkdtemp(prefix="devenv-pin-"))
        try:
            scratch = tmp / "known_hosts"
            base = self.options()
            opts: list[str] = []
            for flag, value in zip(base[::2], base[1::2], strict=True):  # every option is a (flag, value) pair
                if value.startswith(("ControlMaster=", "ControlPath=", "ControlPersist=")):
                    continue
                if value.startswith("UserKnownHostsFile="):
                    value = f"UserKnownHostsFile={ssh_path(scratch, what='known_hosts file')}"
                opts += [flag, "StrictHostKeyChecking=accept-new" if value == "StrictHostKeyChecking=yes" else value]
            argv = ["ssh", *opts, "-o", "ControlMaster=no", "-o", "ControlPath=none", "-T", self.host, "--", "true"]
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(FileNotFoundError):
                    scratch.unlink()
                r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
                if r.returncode == 0:
                    break
                if time.monotonic() > deadline or "Permission denied" in r.stderr:
                    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"ssh exited {r.returncode}"
                    raise CommandFailed(
                        f"cannot make first contact with machine '{self.machine}' over SSH at {self.host}:{self.port} "
                        f"to pin its host key: {last}",
                        hint="check `vagrant ssh-config` in its folder; devenv logs in as that user with that key",
                    )
                time.sleep(1)
            pinned = read_bounded(scratch, limit=64 << 10) or b""
            fp = subprocess.run(["ssh-keygen", "-l", "-f", str(scratch)], capture_output=True, text=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        keys.write_known_hosts(pinned)
        return fp.stdout.split()[1] if fp.returncode == 0 and len(fp.stdout.split()) > 1 else "(unknown)"


# ---------------------------------------------------------------------------------------------
# The driver


class VagrantDriver:
    name: ClassVar[str] = "vagrant"
    features: ClassVar[Features] = Features(suspend=True, apply_settings=True, env_at_create=False)
    reporter: Reporter = QUIET  # set by the core before use
    needs_box: ClassVar[bool] = False  # the Vagrantfile names the box
    options: ClassVar[Table] = _OPTIONS

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._dir_locks: dict[str, threading.Lock] = {}
        self._status_memo: dict[tuple[str, str | None], tuple[float, dict[str, tuple[str | None, str | None]]]] = {}
        self._targets: dict[str, Target] = {}  # handle -> the devenv machine it was resolved for
        self._names: dict[tuple[str, str | None], str] = {}
        self._located: dict[str, tuple[Path, str]] = {}  # handle -> (project root, machine) found on disk
        self.calls: list[tuple[str, float]] = []  # (vagrant command, seconds): for --debug and tests

    # -- Vagrant access ------------------------------------------------------------------------
    def describe_engine(self, machine=None) -> str:
        return "available"  # doctor checks the vagrant command itself

    def check_available(self, machine=None) -> None:
        if shutil.which("vagrant") is None:
            raise BackendUnavailable("Vagrant is not installed (no `vagrant` command on PATH)", hint=INSTALL_HINT)
        self._module()

    def _module(self) -> Any:
        try:
            import vagrant
        except ImportError as exc:
            raise BackendUnavailable(
                "the vagrant driver needs python-vagrant, which is not installed",
                hint="pip install 'devenv[vagrant]' (or: pip install python-vagrant)",
            ) from exc
        return vagrant

    def _dir_lock(self, folder: Path) -> threading.Lock:
        with self._guard:
            return self._dir_locks.setdefault(str(folder), threading.Lock())

    def _forget_status(self, folder: Path) -> None:
        with self._guard:
            for key in [k for k in self._status_memo if k[0] == str(folder)]:
                del self._status_memo[key]

    def _vagrant(
        self,
        folder: Path,
        verb: str,
        machine: str | None,
        fn: Callable[[Any], Any],
        *,
        provider: str | None = None,
    ) -> Any:
        """Run one python-vagrant call in ``folder``; turn its failure into one clear DevenvError."""
        self.check_available()
        if find_vagrantfile(folder) is None:
            # Vagrant would search the parent folders for a Vagrantfile: never let it.
            raise UsageError(
                f"no Vagrantfile in {folder}", hint="point [machines.NAME.vagrant] dir at the folder that has it"
            )
        lib = self._module()
        err = _Capture()
        v = lib.Vagrant(root=str(folder), env=vagrant_env(folder, provider), quiet_stdout=True, err_cm=err.cm)
        t0 = time.monotonic()
        try:
            return fn(v)
        except subprocess.CalledProcessError as exc:
            out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else (exc.output or "")
            raise self._failure(folder, verb, machine, err.text, out) from exc
        except FileNotFoundError as exc:
            raise BackendUnavailable(f"cannot run Vagrant: {exc}", hint=INSTALL_HINT) from exc
        finally:
            took = time.monotonic() - t0
            self.calls.append((f"vagrant {verb}{' ' + machine if machine else ''}", took))
            self.reporter.debug(f"vagrant {verb} {machine or ''} in {folder}: {took:.2f}s")

    def _failure(self, folder: Path, verb: str, machine: str | None, stderr: str, stdout: str) -> Exception:
        err = machine_readable_error(stdout)
        text = "\n".join(x for x in (stderr.strip(), err[1] if err else "") if x)
        lines = trim_vagrant_error(text) or [f"`vagrant {verb}` exited with an error and printed nothing"]
        if (err and err[0].endswith("MachineNotFound")) or "was not found configured for" in text:
            return self._unknown_machine(folder, machine)
        if (
            "Vagrant failed to initialize" in text
            or "errors in the configuration of this machine" in text
            or "There was an error loading a Vagrantfile" in text
            or (err and "Vagrantfile" in err[0])
        ):
            return VagrantfileError(
                f"the Vagrantfile in {folder} does not load:\n  " + "\n  ".join(lines),
                hint=f"fix it; `vagrant validate` in {folder} shows the same error",
            )
        if "No usable default provider" in text or (
            err and err[0].endswith(("NoDefaultProvider", "ProviderNotUsable"))
        ):
            # Vagrant's advice is what the user needs here (which providers, how to force one): whole.
            advice = [ln.rstrip() for ln in (err[1] if err else stderr).strip().splitlines()]
            return CommandFailed(
                f"`vagrant {verb}` failed in {folder}: Vagrant has no usable provider on this host:\n"
                + "\n".join(f"  {ln}" if ln else "" for ln in advice),
                hint="install a provider Vagrant can use here (VAGRANT_DEFAULT_PROVIDER=docker uses the Docker "
                "engine), or let devenv run the machines itself: `devenv import-vagrant DIR` (without --bridge) "
                "writes native docker or libvirt machines from the Vagrantfile",
            )
        if "not supported" in text or "doesn't support this action" in text:
            first = re.split(r"(?<=\.)\s", " ".join(lines), maxsplit=1)[0]
            return UnsupportedOperation(
                f"Vagrant cannot {verb} machine '{machine}': {first}",
                hint="its provider does not offer this; `devenv halt` / `devenv up` work everywhere",
            )
        return CommandFailed(
            f"`vagrant {verb}{' ' + machine if machine else ''}` failed in {folder}:\n  " + "\n  ".join(lines)
        )

    def _unknown_machine(self, folder: Path, machine: str | None) -> UsageError:
        try:
            names = list(self._statuses(folder, None, fresh=True))
        except DevenvError:
            names = []
        defined = f"it defines: {', '.join(names)}" if names else "see `vagrant status` in that folder"
        return UsageError(
            f"the Vagrantfile in {folder} has no machine named '{machine}'{did_you_mean(machine or '', names)}",
            hint=f'{defined}; set machine = "..." in [machines.NAME.vagrant]',
        )

    def _statuses(
        self, folder: Path, provider: str | None, *, fresh: bool = False
    ) -> dict[str, tuple[str | None, str | None]]:
        """{vagrant machine: (state, provider)} from one `vagrant status --machine-readable`."""
        key = (str(folder), provider)
        with self._guard:
            memo = self._status_memo.get(key)
        if memo and not fresh and time.monotonic() - memo[0] < STATUS_TTL:
            return memo[1]
        rows = self._vagrant(folder, "status", None, lambda v: v.status(), provider=provider)
        result = {s.name: (s.state, s.provider) for s in rows if s.name}
        with self._guard:
            self._status_memo[key] = (time.monotonic(), result)
        return result

    # -- validation ----------------------------------------------------------------------------
    def validate(self, machine) -> list[Problem]:
        problems: list[Problem] = []
        opts = machine.driver_options()
        if not opts.get("dir"):
            problems.append(Problem(("vagrant", "dir"), "is required"))
        why = "Vagrant takes it from the Vagrantfile; set it there"
        if machine.ports:
            problems.append(Problem(("ports",), f"the vagrant driver does not forward ports: {why}"))
        if machine.sync:
            problems.append(Problem(("sync",), f"the vagrant driver does not sync folders: {why} (synced_folder)"))
        for key in ("cpus", "memory"):
            if getattr(machine, key) is not None:
                problems.append(Problem((key,), f"the vagrant driver does not set {key}: {why}"))
        return problems

    def validate_paths(self, machine, root: Path) -> list[Problem]:
        """``dir`` inside the project by its real path (it need not exist yet at validate)."""
        opts = machine.driver_options()
        if not isinstance(opts.get("dir"), str) or not opts["dir"]:
            return []
        try:
            vagrant_dir(root, opts, machine.name, kind="none")
        except UsageError as exc:
            return [Problem(("vagrant", "dir"), exc.message.split(": vagrant dir ", 1)[-1])]
        return []

    # -- resolving a devenv machine to a Vagrant machine ---------------------------------------
    def _resolve(self, target: Target) -> tuple[Path, str]:
        opts = target.machine.driver_options()
        raw = opts.get("dir")
        if not raw:
            raise UsageError(f"machine '{target.name}' has no [machines.{target.name}.vagrant] dir")
        folder = Path(os.path.normpath(target.project_root / os.path.expanduser(raw)))
        if not folder.is_dir():
            raise UsageError(f"machine '{target.name}': the Vagrant folder {raw} does not exist ({folder})")
        folder = vagrant_dir(target.project_root, opts, target.name)  # real path, confined again at use
        if find_vagrantfile(folder) is None:
            raise UsageError(
                f"machine '{target.name}': no Vagrantfile in {folder}",
                hint="dir must name the folder that holds the Vagrantfile",
            )
        name = opts.get("machine")
        if not name:
            key = (str(folder), opts.get("provider"))
            name = self._names.get(key)
            if name is None:
                names = list(self._statuses(folder, opts.get("provider")))
                if len(names) != 1:
                    raise UsageError(
                        f"machine '{target.name}': the Vagrantfile in {folder} defines {len(names)} machines "
                        f"({', '.join(names)}): say which",
                        hint=f'set machine = "NAME" in [machines.{target.name}.vagrant]',
                    )
                name = self._names[key] = names[0]
        handle = make_handle(folder, name)
        with self._guard:
            self._targets[handle] = target
        return folder, name

    def _label(self, handle: str) -> str:
        """The devenv machine name for messages (the Vagrant name when no project knows it)."""
        t = self._targets.get(handle)
        if t is not None:
            return t.name
        found = self._locate(handle)
        return found[1] if found else split_handle(handle)[1]

    # -- the per-machine cache in .devenv/machines/NAME/ ---------------------------------------
    def _cache_dir(self, handle: str) -> Path:
        from devenv.state import ProjectState

        # In a project: .devenv/machines/NAME checked for planted links before any file in it is used.
        t = self._targets.get(handle)
        if t is not None:
            return ProjectState(t.project_root).ensure_machine_dir(t.name, create=False)
        found = self._locate(handle)
        if found is not None:
            root, name = found
            return ProjectState(root).ensure_machine_dir(name, create=False)
        # No project knows this handle (e.g. `global-status` elsewhere): Vagrant's own folder.
        folder, name = split_handle(handle)
        return machine_data_dir(folder, name) / "devenv"

    def _locate(self, handle: str) -> tuple[Path, str] | None:
        """The project (root, machine) whose state records this handle: searched upwards from
        the Vagrant folder and from the working directory."""
        from devenv.errors import StateError
        from devenv.state import STATE_DIR, ProjectState

        if handle in self._located:
            return self._located[handle]
        folder, _ = split_handle(handle)
        seen: set[Path] = set()
        for start in (folder, Path.cwd()):
            for root in (start, *start.parents):
                if root in seen:
                    continue
                seen.add(root)
                if not (root / STATE_DIR).is_dir():
                    continue
                # Read as every state is (regular files only, bounded, never through a link).
                state = ProjectState(root)
                for stem in state.names():
                    try:
                        data = state.load(stem)
                    except StateError:
                        continue
                    if data and data.get("driver") == self.name and data.get("handle") == handle:
                        self._located[handle] = (root, stem)
                        return root, stem
        return None

    def _load_cache(self, handle: str) -> dict:
        from devenv.state import MAX_STATE_BYTES, read_bounded

        try:
            # A link or a FIFO planted there is never followed or waited on: the cache is then empty.
            raw = read_bounded(self._cache_dir(handle) / "vagrant.json", limit=MAX_STATE_BYTES)
            data = json.loads(raw) if raw is not None else {}
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("handle") == handle else {}

    def _save_cache(self, handle: str, data: dict) -> None:
        from devenv.state import ProjectState, atomic_write

        d = self._cache_dir(handle)
        t = self._targets.get(handle)
        if t is not None:
            ProjectState(t.project_root).ensure_machine_dir(t.name)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(d / "vagrant.json", json.dumps({**data, "handle": handle}, indent=2, sort_keys=True) + "\n")

    def _transport_mode(self, handle: str, cache: dict | None = None) -> str:
        t = self._targets.get(handle)
        if t is not None:
            return t.machine.driver_options().get("transport", "auto")
        return (cache if cache is not None else self._load_cache(handle)).get("transport", "auto")

    def _uses_docker(self, handle: str, provider: str, cache: dict | None = None) -> bool:
        mode = self._transport_mode(handle, cache)
        return mode == "docker" or (mode == "auto" and provider == "docker")

    def _refresh(self, handle: str) -> None:
        """After up/reload/resume: cache how to reach the machine (and pin its SSH host key)."""
        folder, name = split_handle(handle)
        created = created_as(folder, name)
        if created is None:
            return
        provider, mid = created
        old = self._load_cache(handle)
        data = {
            "dir": str(folder),
            "machine": name,
            "provider": provider,
            "id": mid,
            "transport": self._transport_mode(handle, old),
            "refreshed": int(time.time()),
        }
        from devenv.drivers.vm.identity import MachineKeys

        if old.get("id") not in (None, mid) and MachineKeys(self._cache_dir(handle)).forget_known_hosts():
            self.reporter.warn(
                f"{self._label(handle)}: Vagrant recreated the machine outside devenv: pinning its new host key"
            )
        if self._uses_docker(handle, provider, data):
            data["container_id"] = mid
            self._save_cache(handle, data)
            return
        text = self._vagrant(folder, "ssh-config", name, lambda v: v.ssh_config(vm_name=name))
        data["ssh"] = parse_ssh_config(text, name).as_dict()
        self._save_cache(handle, data)
        self._ssh(handle, data)  # pins on first contact

    # -- boxes ---------------------------------------------------------------------------------
    def preflight(self, target: Target) -> None:
        pass  # Vagrant forwards the Vagrantfile's ports itself (validate refuses Devfile ports)

    def prepare_box(self, target: Target, box: str | None, *, pull: bool = False) -> BoxArtifact:
        """The Vagrantfile stands in for the box: checked to load and to define the machine."""
        folder, name = self._resolve(target)
        provider = target.machine.driver_options().get("provider")
        statuses = self._statuses(folder, provider)
        if name not in statuses:
            raise self._unknown_machine(folder, name)
        vf = find_vagrantfile(folder)
        assert vf is not None
        try:
            rel = folder.relative_to(target.project_root).as_posix()
        except ValueError:
            rel = str(folder)
        return BoxArtifact(
            name=f"{'' if rel == '.' else rel + '/'}{vf.name}#{name}",
            version=None,
            ref=str(vf),
            digest="sha256:" + hashlib.sha256(vf.read_bytes()).hexdigest(),
            extra={"dir": str(folder), "machine": name, "provider": provider or statuses[name][1]},
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def _up(self, handle: str, *, provider: str | None = None) -> None:
        folder, name = split_handle(handle)
        label = self._label(handle)

        def run(v: Any) -> None:
            for line in v.up(vm_name=name, no_provision=True, provider=provider, stream_output=True):
                if line.strip():
                    self.reporter.output(label, strip_progress_prefix(line, name))

        with self._dir_lock(folder):
            try:
                self._vagrant(folder, "up", name, run, provider=provider)
            finally:
                self._forget_status(folder)

    def create(self, target: Target, box: BoxArtifact, *, env: dict[str, str] | None = None) -> str:
        folder, name = self._resolve(target)
        handle = make_handle(folder, name)
        if self.state(handle) is not MachineState.NOT_CREATED:
            if self._made_by_us(handle, target):
                return handle
            raise MachineStateError(
                f"machine '{target.name}': Vagrant machine '{name}' in {folder} already exists and devenv did not "
                "create it: devenv never provisions, halts or destroys a machine it did not make",
                hint=f"`vagrant destroy {name}` in {folder} yourself if it may go, or point dir elsewhere",
            )
        from devenv.drivers.vm.identity import MachineKeys

        # A new machine has a new host key: forget any pin of an earlier one.
        MachineKeys(self._cache_dir(handle)).forget_known_hosts()
        with contextlib.suppress(FileNotFoundError):
            (self._cache_dir(handle) / "vagrant.json").unlink()
        # Marked before `vagrant up` (id unknown yet): a half-made machine is still ours to clean up.
        write_marker(handle, None)
        self._up(handle, provider=target.machine.driver_options().get("provider"))
        self._mark(handle)
        self._refresh(handle)
        return handle

    def _mark(self, handle: str) -> None:
        """After devenv's own up/reload/resume: record the machine id Vagrant now holds."""
        created = created_as(*split_handle(handle))
        if created is not None:
            write_marker(handle, created[1])

    def find(self, target: Target) -> str | None:
        folder, name = self._resolve(target)
        handle = make_handle(folder, name)
        if self.state(handle) is MachineState.NOT_CREATED:
            return None
        if not self._made_by_us(handle, target):
            self.reporter.warn(
                f"{target.name}: Vagrant machine '{name}' in {folder} exists, but devenv did not create it: "
                "leaving it alone"
            )
            return None
        return handle

    def owns(self, handle: str, target: Target) -> Ownership:
        """OURS only for the Vagrant machine the Devfile names (its dir and machine): a handle
        naming any other Vagrant folder is never handed to Vagrant."""
        if not isinstance(handle, str):
            return Ownership.FOREIGN
        try:
            folder, name = split_handle(handle)
        except MachineStateError:
            return Ownership.FOREIGN
        opts = target.machine.driver_options()
        raw = opts.get("dir")
        # Compared without asking Vagrant (`vagrant status` costs ~1.5 s): the handle's folder must be
        # the Devfile's `dir`, and its machine the one `machine` names when it names one (a
        # single-machine Vagrantfile's name is what devenv recorded when it made it).
        if not raw or not isinstance(raw, str):
            return Ownership.FOREIGN
        try:
            confined = vagrant_dir(target.project_root, opts, target.name, kind="none")
        except UsageError:
            return Ownership.FOREIGN
        if folder != confined:
            return Ownership.FOREIGN
        if opts.get("machine") and name != opts["machine"]:
            return Ownership.FOREIGN
        with self._guard:
            self._targets.setdefault(handle, target)
        if self.state(handle) is MachineState.NOT_CREATED:
            return Ownership.GONE
        # A machine Vagrant knows in that folder is devenv's only when devenv recorded making it.
        return Ownership.OURS if self._made_by_us(handle, target) else Ownership.FOREIGN

    def _made_by_us(self, handle: str, target: Target) -> bool:
        """Whether devenv brought up the Vagrant machine now in ``handle``'s folder.

        True when devenv's marker names the machine id Vagrant now records (or devenv is still
        bringing it up: id None). A machine made by an older devenv has no marker: it is adopted
        when devenv's global index (outside the project) records this very handle for this
        project's machine, and gets its marker then. Anything else (the user's own VM, an id a
        repository committed in .vagrant/) is not devenv's: never provisioned, halted or destroyed."""
        folder, name = split_handle(handle)
        created = created_as(folder, name)
        marker = read_marker(handle)
        if marker is not None:
            return marker["id"] is None or (created is not None and marker["id"] == created[1])
        from devenv.state import GlobalIndex

        try:
            entries = GlobalIndex().entries()
        except DevenvError:
            return False
        root = os.path.abspath(target.project_root)
        for e in entries:
            if e["driver"] == self.name and e["handle"] == handle and e["machine"] == target.name:
                if os.path.abspath(e["root"] or "/nonexistent") == root:
                    write_marker(handle, created[1] if created else None)
                    return True
        return False

    def start(self, handle: str) -> None:
        if self.state(handle) is not MachineState.RUNNING:
            self._up(handle)
            self._mark(handle)
            self._refresh(handle)
            return
        folder, name = split_handle(handle)
        created = created_as(folder, name)
        if created is None or self._load_cache(handle).get("id") != created[1]:
            self._refresh(handle)  # running, but not (or differently) known to devenv yet

    def stop(self, handle: str, *, force: bool = False) -> None:
        folder, name = split_handle(handle)
        with self._dir_lock(folder):
            try:
                self._vagrant(folder, "halt", name, lambda v: v.halt(vm_name=name, force=force))
            finally:
                self._forget_status(folder)

    def destroy(self, handle: str) -> None:
        folder, name = split_handle(handle)
        if created_as(folder, name) is None and find_vagrantfile(folder) is None:
            return  # nothing Vagrant knows of, and no Vagrantfile to ask
        with self._dir_lock(folder):
            try:
                self._vagrant(folder, "destroy", name, lambda v: v.destroy(vm_name=name))
            finally:
                self._forget_status(folder)
        if created_as(folder, name) is None:
            forget_marker(handle)

    def reload(self, handle: str) -> None:
        folder, name = split_handle(handle)

        def run(v: Any) -> None:
            for line in v.reload(vm_name=name, provision=False, stream_output=True):
                if line.strip():
                    self.reporter.output(self._label(handle), strip_progress_prefix(line, name))

        with self._dir_lock(folder):
            try:
                self._vagrant(folder, "reload", name, run)
            finally:
                self._forget_status(folder)
        self._mark(handle)
        self._refresh(handle)

    def apply_settings(self, handle: str, target: Target, box: BoxArtifact) -> bool:
        """Changed Devfile settings: `vagrant reload` (the Vagrantfile holds everything else)."""
        folder, name = self._resolve(target)
        if make_handle(folder, name) != handle:
            raise MachineStateError(
                f"machine '{target.name}' now names another Vagrant machine ({name} in {folder})",
                hint=f"`devenv reload {target.name} --recreate` destroys the old one and brings up the new one",
            )
        self.reload(handle)
        return True

    def sync_kind(self, handle: str) -> str | None:
        return None  # Vagrant's own synced folders: the Vagrantfile says how

    def state(self, handle: str) -> MachineState:
        folder, name = split_handle(handle)
        created = created_as(folder, name)
        if created is None:
            return MachineState.NOT_CREATED  # what Vagrant concludes from the same missing id file
        provider, mid = created
        if provider == "docker":
            st = self._docker_state(mid)
            if st is not None:
                return st
        if find_vagrantfile(folder) is None:
            return MachineState.NOT_CREATED
        raw = self._statuses(folder, None).get(name, (None, None))[0]
        st = map_state(raw)
        if st is None:
            self.reporter.warn(f"{self._label(handle)}: Vagrant reports the state '{raw}'; treating it as stopped")
            return MachineState.STOPPED
        return st

    def _docker_driver(self):
        """devenv's own Docker driver (its fast engine reads), or None when the engine is unreachable."""
        from devenv.plugins import get_driver

        driver = get_driver("docker")
        try:
            driver.check_available()
        except BackendUnavailable:
            return None
        return driver

    def _docker_state(self, container_id: str) -> MachineState | None:
        """The state of a docker-provider machine straight from the engine (None: ask Vagrant)."""
        driver = self._docker_driver()
        st = driver.state(container_id) if driver is not None else None
        return None if st is MachineState.NOT_CREATED else st

    def ports(self, handle: str) -> list[PortBinding]:
        folder, name = split_handle(handle)
        created = created_as(folder, name)
        if created is None:
            return []
        provider, mid = created
        out = []
        if provider == "docker":
            driver = self._docker_driver()
            return driver.ports(mid) if driver is not None else []
        ssh = self._load_cache(handle).get("ssh")
        if ssh:
            out.append(PortBinding(ssh["host"], int(ssh["port"]), 22))
        return out

    def transport(self, handle: str):
        folder, name = split_handle(handle)
        created = created_as(folder, name)
        if created is None:
            raise MachineStateError(f"Vagrant machine '{name}' is not created", hint="run `devenv up`")
        provider, mid = created
        cache = self._load_cache(handle)
        if self._uses_docker(handle, provider, cache):
            return self._docker_transport(handle, mid)
        if cache.get("id") != mid or not cache.get("ssh"):
            self._refresh(handle)  # no cache yet, or Vagrant recreated the machine: ask it once
            cache = self._load_cache(handle)
        return self._ssh(handle, cache)

    def _docker_transport(self, handle: str, container_id: str):
        from devenv.transports.docker import DockerTransport

        driver = self._docker_driver()
        if driver is None or driver.state(container_id) is MachineState.NOT_CREATED:
            raise MachineStateError(
                f"the container of Vagrant machine '{split_handle(handle)[1]}' ({container_id[:12]}) is not on "
                "the local Docker engine (Vagrant may run it in a host VM)",
                hint='set transport = "ssh" in [machines.NAME.vagrant] to go through `vagrant ssh-config`',
            )
        return DockerTransport(
            driver.engine, container_id, self._label(handle), docker_host=os.environ.get("DOCKER_HOST")
        )

    def _ssh(self, handle: str, cache: dict) -> PinnedSsh:
        info = SshInfo.from_dict(cache["ssh"])
        key = info.key()
        if key is None:
            raise CommandFailed(f"`vagrant ssh-config` names no IdentityFile for '{split_handle(handle)[1]}'")
        known_hosts = self._cache_dir(handle) / "known_hosts"
        label = self._label(handle)
        t = PinnedSsh(
            alias=f"devenv-vagrant-{split_handle(handle)[1]}",
            machine=label,
            host=info.host,
            port=info.port,
            user=info.user,
            key=Path(key),
            known_hosts=known_hosts,
        )
        from devenv.drivers.vm.identity import MachineKeys

        # Read by descriptor: a link planted as known_hosts is a StateError, never read through.
        if not MachineKeys(known_hosts.parent).read_known_hosts().strip():
            fp = t.pin()
            self.reporter.info(label, f"pinned its SSH host key {fp} (first contact; Vagrant itself checks none)")
        return t

    def sweep(self, project_id: str, root: Path | None = None) -> list[str]:
        # Vagrant machines belong to their Vagrant project: devenv never removes one it was not asked to.
        return []

    # -- optional roles ------------------------------------------------------------------------
    def suspend(self, handle: str) -> None:
        folder, name = split_handle(handle)
        with self._dir_lock(folder):
            try:
                self._vagrant(folder, "suspend", name, lambda v: v.suspend(vm_name=name))
            finally:
                self._forget_status(folder)

    def resume(self, handle: str) -> None:
        folder, name = split_handle(handle)
        with self._dir_lock(folder):
            try:
                self._vagrant(folder, "resume", name, lambda v: v.resume(vm_name=name))
            finally:
                self._forget_status(folder)
        self._mark(handle)
        self._refresh(handle)

    # -- import-vagrant ------------------------------------------------------------------------
    def list_machines(self, folder: Path) -> list[tuple[str, str | None, str | None]]:
        """(name, state, provider) of every machine of the Vagrantfile in ``folder``."""
        return [(n, st, prov) for n, (st, prov) in self._statuses(folder, None, fresh=True).items()]
