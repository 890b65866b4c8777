"""An in-memory driver and transport at the driver seam: fast unit tests without any engine.

FakeDriver implements the Driver protocol over a dict of machines::

    handle -> {name, state, labels, files, env, ports, runs}

With the environment variable DEVENV_FAKE_STATE naming a JSON file, every operation loads and
saves that file, so the fake engine outlives one process (and one FakeDriver instance) like a
real engine does. Without it the machines live in the instance.

FakeTransport "runs" commands by interpreting a tiny shell subset: ``echo WORDS`` prints
(``echo WORDS >&2`` to stderr), ``exit N`` ends with N, ``false`` fails, ``rm -f PATH`` removes a
put file, and a path that was put (directly, via ``exec PATH`` or ``sh PATH``) runs that file's
text; ``sh -c WRAPPER CMD`` whose wrapper ends in ``-c "$0"`` (the one `devenv ssh -c` uses) runs
CMD. ``exec 2>&1`` sends the rest of the command's stderr to its stdout. Anything else succeeds
silently.

stdout and stderr are two pipes, as in a real machine, and the fake hands them on the way the
engines can (dockerd and sshd read each pipe on its own): every stdout line first, then the
stderr lines (to ``on_stderr``, else ``on_output``). Only a command that merged its streams
itself (``exec 2>&1``) comes out in the order it wrote them.
``put`` into /proc/ fails (CommandFailed), like a copy onto a read-only file system.
Every command run is recorded in the machine's ``runs`` and in the global ``log``.

Failures are injected with ``FakeDriver.fail_on(op, kind)``: ``kind`` is "error" (a BoxError)
or "interrupt" (KeyboardInterrupt). A failing ``create`` fails *after* the machine exists on
the fake engine, like an engine call that timed out after doing its work.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from devenv import plugins
from devenv.contract import (
    LABEL_MACHINE,
    LABEL_PROJECT,
    LABEL_ROOT,
    QUIET,
    BoxArtifact,
    Connection,
    Features,
    MachineState,
    Ownership,
    PortBinding,
    Target,
)
from devenv.errors import BoxError, CommandFailed, MachineStateError
from devenv.model.schema import Field, Str, Table

STATE_ENV = "DEVENV_FAKE_STATE"
SHELLS = ("sh", "/bin/sh", "bash", "/bin/bash")


def _empty() -> dict:
    return {"machines": {}, "log": [], "seq": 0, "fail": {}}


class FakeDriver:
    name = "fake"
    features = Features()
    reporter = QUIET
    options = Table({"note": Field(Str(description="Ignored"))}, description="The fake test driver")

    def __init__(self, state_path: str | os.PathLike | None = None) -> None:
        path = state_path or os.environ.get(STATE_ENV)
        self.path = Path(path) if path else None
        self._mem = _empty()
        self._lock = threading.RLock()  # parallel `up` runs machines of one level in threads

    # -- persistence ---------------------------------------------------------------------------
    def _load(self) -> dict:
        if self.path is None:
            return self._mem
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return _empty()

    def plant(self, labels: dict, *, name: str | None = None, state: str = "running") -> str:
        """A machine on the fake engine that no devenv project made (for ownership tests)."""
        with self._tx() as data:
            data["seq"] += 1
            handle = f"fake-{data['seq']:04d}"
            data["machines"][handle] = {
                "name": name or f"planted-{data['seq']}",
                "state": state,
                "labels": labels,
                "box": "x",
                "env": {},
                "ports": [],
                "files": {},
                "runs": [],
            }
        return handle

    @contextlib.contextmanager
    def _tx(self) -> Iterator[dict]:
        with self._lock:
            data = self._load()
            try:
                yield data
            finally:  # also when the operation fails: a half-done create stays on the engine
                if self.path is not None:
                    tmp = self.path.with_name(self.path.name + ".tmp")
                    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                    os.replace(tmp, self.path)

    def snapshot(self) -> dict:
        """A copy of the whole fake engine, for assertions."""
        with self._tx() as data:
            return json.loads(json.dumps(data))

    @property
    def machines(self) -> dict[str, dict]:
        return self.snapshot()["machines"]

    @property
    def log(self) -> list[list[str]]:
        return self.snapshot()["log"]

    def by_name(self, name: str) -> dict | None:
        """The one fake machine whose devenv.machine label is ``name`` (None when absent)."""
        found = [m for m in self.machines.values() if m["labels"].get(LABEL_MACHINE) == name]
        assert len(found) <= 1, f"{len(found)} fake machines named {name}"
        return found[0] if found else None

    def runs(self, name: str) -> list[str]:
        m = self.by_name(name)
        return m["runs"] if m else []

    def fail_on(self, op: str, kind: str = "error") -> None:
        assert kind in ("error", "interrupt")
        with self._tx() as data:
            data["fail"][op] = kind

    def _maybe_fail(self, data: dict, op: str) -> None:
        kind = data["fail"].pop(op, None)  # one-shot: the next call succeeds
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "error":
            raise BoxError(f"fake engine: {op} failed")

    @staticmethod
    def _get(data: dict, handle: str) -> dict:
        m = data["machines"].get(handle)
        if m is None:
            raise MachineStateError(f"fake machine {handle} does not exist")
        return m

    # -- the Driver protocol ---------------------------------------------------------------------
    def describe_engine(self, machine=None) -> str:
        return "the fake engine"

    def check_available(self, machine=None) -> None:
        pass

    def validate(self, machine) -> list:
        return []

    def prepare_box(self, target: Target, box: str) -> BoxArtifact:
        return BoxArtifact(name=box, version=None, ref=f"fake-image:{box}", digest="sha256:fake")

    def create(self, target: Target, box: BoxArtifact, *, env: dict[str, str] | None = None) -> str:
        with self._tx() as data:
            data["seq"] += 1
            handle = f"fake-{data['seq']:04d}"
            ports = [
                {"host_ip": p.host_ip, "host": p.host or 40000 + data["seq"], "guest": p.guest, "protocol": p.protocol}
                for p in target.machine.ports
            ]
            data["machines"][handle] = {
                "name": target.resource_name,
                "state": str(MachineState.STOPPED),
                "labels": dict(target.labels),
                "box": box.ref,
                "env": dict(env or {}),
                "ports": ports,
                "files": {},
                "runs": [],
            }
            data["log"].append(["create", target.name])
            self._maybe_fail(data, "create")  # after the machine exists: a half-done create
            return handle

    def find(self, target: Target) -> str | None:
        with self._tx() as data:
            if not target.labels:  # a box build's machine (BuildTarget): found by its name, as Docker does
                return next((h for h, m in data["machines"].items() if m["name"] == target.resource_name), None)
            for h, m in data["machines"].items():
                labels = m["labels"]
                if labels.get(LABEL_PROJECT) == target.project_id and labels.get(LABEL_MACHINE) == target.name:
                    if labels.get(LABEL_ROOT, str(target.project_root)) == str(target.project_root):
                        return h  # as the real drivers: a recorded root must be this project's
        return None

    def owns(self, handle: str, target: Target) -> Ownership:
        with self._tx() as data:
            m = data["machines"].get(handle) if isinstance(handle, str) else None
            if m is None:
                return Ownership.GONE
            labels = m["labels"]
            same_root = labels.get(LABEL_ROOT, str(target.project_root)) == str(target.project_root)
            same_id = labels.get(LABEL_PROJECT) == target.project_id and labels.get(LABEL_MACHINE) == target.name
            if same_id and same_root:
                return Ownership.OURS
            return Ownership.FOREIGN

    def preflight(self, target: Target) -> None:
        from devenv.drivers.hostports import check_host_addresses

        check_host_addresses(target)  # like the VM drivers: the fake engine's ports are this host's

    def start(self, handle: str) -> None:
        with self._tx() as data:
            m = self._get(data, handle)
            data["log"].append(["start", _machine(m)])
            self._maybe_fail(data, "start")
            m["state"] = str(MachineState.RUNNING)

    def stop(self, handle: str, *, force: bool = False) -> None:
        with self._tx() as data:
            m = self._get(data, handle)
            data["log"].append(["stop", _machine(m)])
            self._maybe_fail(data, "stop")
            m["state"] = str(MachineState.STOPPED)

    def destroy(self, handle: str) -> None:
        with self._tx() as data:
            m = data["machines"].pop(handle, None)
            if m is not None:
                data["log"].append(["destroy", _machine(m)])

    def state(self, handle: str) -> MachineState:
        with self._tx() as data:
            m = data["machines"].get(handle)
            return MachineState(m["state"]) if m else MachineState.NOT_CREATED

    def ports(self, handle: str) -> list[PortBinding]:
        with self._tx() as data:
            m = data["machines"].get(handle)
            if not m or m["state"] != str(MachineState.RUNNING):
                return []
            return [PortBinding(p["host_ip"], p["host"], p["guest"], p["protocol"]) for p in m["ports"]]

    def sync_kind(self, handle: str) -> str | None:
        return None

    def transport(self, handle: str) -> FakeTransport:
        return FakeTransport(self, handle)

    def sweep(self, project_id: str, root: Path | None = None) -> list[str]:
        with self._tx() as data:
            gone = [
                h
                for h, m in data["machines"].items()
                if m["labels"].get(LABEL_PROJECT) == project_id
                and (root is None or m["labels"].get(LABEL_ROOT, str(root)) == str(root))
            ]
            names = []
            for h in gone:
                m = data["machines"].pop(h)
                data["log"].append(["destroy", _machine(m)])
                names.append(m["name"])
            return names


class FakeTransport:
    def __init__(self, driver: FakeDriver, handle: str) -> None:
        self.driver = driver
        self.handle = handle

    def _running(self, data: dict) -> dict:
        m = data["machines"].get(self.handle)
        if m is None:
            raise MachineStateError(f"fake machine {self.handle} is gone")
        if m["state"] != str(MachineState.RUNNING):
            raise MachineStateError(f"fake machine {self.handle} is not running")
        return m

    def run(self, argv, *, env=None, user=None, workdir=None, on_output=None, on_stderr=None) -> int:
        argv = [str(a) for a in argv]
        pipes = _Pipes()
        with self.driver._tx() as data:
            m = self._running(data)
            m["runs"].append(shlex.join(argv))
            data["log"].append(["run", _machine(m), shlex.join(argv)])
            if len(argv) >= 4 and argv[0] in SHELLS and argv[1] == "-c" and argv[2].endswith('-c "$0"'):
                code = _interpret(argv[3], m["files"], pipes)  # a wrapper that runs its $0 (ssh -c)
            elif len(argv) >= 3 and argv[0] in SHELLS and argv[1] == "-c":
                code = _interpret(argv[2], m["files"], pipes)
            elif len(argv) >= 2 and argv[0] in SHELLS:
                code = _run_file(argv[1], m["files"], pipes)
            else:
                code = _interpret(shlex.join(argv), m["files"], pipes)
        pipes.deliver(on_output, on_stderr)
        return code

    def put(self, local: Path, remote: str) -> None:
        if not PurePosixPath(remote).is_absolute():
            raise CommandFailed(f"destination must be an absolute path in the machine: {remote}")
        if remote.startswith("/proc/"):
            raise CommandFailed(f"cannot copy {local} to {remote}: read-only file system")
        with self.driver._tx() as data:
            m = self._running(data)
            if local.is_dir():
                for p in sorted(local.rglob("*")):
                    if p.is_file():
                        m["files"][f"{remote.rstrip('/')}/{p.relative_to(local).as_posix()}"] = p.read_text()
            else:
                m["files"][remote] = local.read_text()

    def get(self, remote: str, local: Path) -> None:
        with self.driver._tx() as data:
            m = self._running(data)
            if remote not in m["files"]:
                raise CommandFailed(f"not found in the fake machine: {remote}")
            local.write_text(m["files"][remote])

    def put_tree(self, local: Path, remote: str, *, exclude: tuple[str, ...] = ()) -> None:
        self.put(local, remote)

    def interactive(self, argv, *, env=None, user=None, workdir=None) -> int:
        return self.run(argv) if argv else 0

    def connection(self) -> Connection:
        return Connection(kind="fake")  # type: ignore[arg-type] - reached by neither docker nor ssh

    def ssh_config(self, alias: str) -> str | None:
        return None


def _machine(m: dict) -> str:
    """The machine name a fake machine is logged under: its label (a build machine has none: its name)."""
    return m["labels"].get(LABEL_MACHINE) or m["name"]


class _Pipes:
    """A command's stdout and stderr: two pipes, unless the command merged them (``exec 2>&1``)."""

    def __init__(self) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.merged = False

    def write(self, line: str, fd: int = 1) -> None:
        (self.stderr if fd == 2 and not self.merged else self.stdout).append(line)

    def deliver(self, on_output, on_stderr) -> None:
        """As an engine reading the two pipes apart may: all of stdout, then stderr."""
        out = on_output or (lambda _line: None)
        for line in self.stdout:
            out(line)
        for line in self.stderr:
            (on_stderr or out)(line)


def _run_file(path: str, files: dict[str, str], pipes: _Pipes) -> int:
    if path not in files:
        pipes.write(f"sh: cannot open {path}: No such file", 2)
        return 2
    return _interpret(files[path], files, pipes)


def _interpret(script: str, files: dict[str, str], pipes: _Pipes) -> int:
    """Run the tiny shell subset described in the module docstring; return the exit code."""
    for raw in re.split(r"\n|;|&&", script):
        cmd = raw.strip()
        if not cmd or cmd.startswith("#"):
            continue
        try:
            words = shlex.split(cmd)
        except ValueError:
            words = cmd.split()
        if words and words[0] == "exec":
            words = words[1:]
            if words == ["2>&1"]:  # `exec 2>&1`: the rest of the command's stderr is its stdout
                pipes.merged = True
                continue
        if not words:
            continue
        head = words[0]
        if head == "exit":
            return int(words[1]) if len(words) > 1 else 0
        if head == "false":
            return 1
        if head == "echo":
            fd = 2 if words[-1] in (">&2", "1>&2") else 1
            pipes.write(" ".join(words[1:-1] if fd == 2 else words[1:]), fd)
        elif head == "rm":
            for w in words[1:]:
                files.pop(w, None)
        elif head in SHELLS and len(words) > 1 and not words[1].startswith("-"):
            return _run_file(words[1], files, pipes)
        elif head in files:
            return _interpret(files[head], files, pipes)
    return 0


def install(monkeypatch, state_file: Path) -> FakeDriver:
    """Register FakeDriver as the driver named "fake" for this test; returns the instance in use."""
    monkeypatch.setenv(STATE_ENV, str(state_file))
    monkeypatch.setitem(plugins.BUILTIN_DRIVERS, "fake", f"{FakeDriver.__module__}:FakeDriver")
    driver = FakeDriver()
    monkeypatch.setitem(plugins._drivers, "fake", driver)
    return driver
