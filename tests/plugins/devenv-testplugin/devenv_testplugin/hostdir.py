"""hostdir: a devenv driver whose machines are private folders on this host (no isolation at all).

Machine HANDLE is the folder BASE/HANDLE, its labels and state in BASE/HANDLE.json. BASE is
$DEVENV_HOSTDIR_BASE, not a Devfile option: start, stop, state and transport get only the handle.
Commands are host processes run in the folder; paths in the machine are relative to it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import devenv.contract as dc


def _drop(line: str) -> None:
    pass


def _base() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(os.environ.get("DEVENV_HOSTDIR_BASE") or os.path.join(data, "devenv-hostdir"))


class HostDirDriver:
    name = "hostdir"
    needs_box = False  # nothing boots
    options = dc.Table({"shell": dc.Field(dc.Str(description="Login shell of `devenv ssh`"))}, description="hostdir")
    features = dc.Features(env_at_create=False)  # a folder keeps no env: devenv passes it with each command
    reporter = dc.QUIET

    def _meta(self, handle: str) -> dict | None:
        try:
            return json.loads((_base() / f"{handle}.json").read_text()) if dc.safe_handle(handle) else None
        except FileNotFoundError:
            return None

    def _save(self, handle: str, meta: dict) -> None:
        (_base() / f"{handle}.tmp").write_text(json.dumps(meta))
        os.replace(_base() / f"{handle}.tmp", _base() / f"{handle}.json")

    def _set(self, handle: str, state: dc.MachineState, said: str) -> None:
        if (meta := self._meta(handle)) is None:
            raise dc.MachineStateError(f"hostdir machine {handle} does not exist")
        self._save(handle, {**meta, "state": str(state)})
        self.reporter.info(meta["labels"].get(dc.LABEL_MACHINE, handle), said)

    def check_available(self, machine=None) -> None:
        try:
            _base().mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot make {_base()}: {exc.strerror}"
            raise dc.BackendUnavailable(msg, hint="set DEVENV_HOSTDIR_BASE") from None

    def describe_engine(self, machine=None) -> str:
        return f"machines are folders in {_base()}"

    def validate(self, machine) -> list[dc.Problem]:
        return [dc.Problem((k,), "a host folder has none") for k in ("ports", "sync") if getattr(machine, k)]

    def preflight(self, target) -> None:
        pass

    def prepare_box(self, target, box: str | None) -> dc.BoxArtifact:
        return dc.BoxArtifact(name=box or "host", version=None, ref="host")

    def create(self, target, box, *, env=None) -> str:
        handle = target.resource_name
        self.check_available()
        (_base() / handle).mkdir(mode=0o700)
        shell = target.machine.driver_options().get("shell", "/bin/sh")
        self._save(handle, {"labels": target.labels, "state": "stopped", "shell": shell})
        self.reporter.info(target.name, f"created {_base() / handle}")
        return handle

    def find(self, target) -> str | None:
        mine = (p.stem for p in sorted(_base().glob("*.json")) if self.owns(p.stem, target) is dc.Ownership.OURS)
        return next(mine, None)

    def owns(self, handle: str, target) -> dc.Ownership:
        meta = self._meta(handle)
        if meta is None:
            return dc.Ownership.GONE if dc.safe_handle(handle) else dc.Ownership.FOREIGN
        if not target.labels:  # a box build's machine carries no labels: it is found by its name
            return dc.Ownership.OURS if handle == target.resource_name else dc.Ownership.FOREIGN
        labels = meta["labels"]
        ours = labels.get(dc.LABEL_PROJECT) == target.project_id and labels.get(dc.LABEL_MACHINE) == target.name
        return dc.Ownership.OURS if ours else dc.Ownership.FOREIGN

    def start(self, handle: str) -> None:
        self._set(handle, dc.MachineState.RUNNING, "started")

    def stop(self, handle: str, *, force: bool = False) -> None:
        self._set(handle, dc.MachineState.STOPPED, "stopped")

    def destroy(self, handle: str) -> None:
        if dc.safe_handle(handle):
            shutil.rmtree(_base() / handle, ignore_errors=True)  # removes links, never follows one out
            (_base() / f"{handle}.json").unlink(missing_ok=True)

    def state(self, handle: str) -> dc.MachineState:
        meta = self._meta(handle)
        return dc.MachineState(meta["state"]) if meta else dc.MachineState.NOT_CREATED

    def ports(self, handle: str) -> list[dc.PortBinding]:
        return []

    def sync_kind(self, handle: str) -> str | None:
        return None

    def transport(self, handle: str) -> HostDirTransport:
        if (meta := self._meta(handle)) is None:
            raise dc.MachineStateError(f"hostdir machine {handle} does not exist")
        return HostDirTransport(_base() / handle, meta["shell"])

    def sweep(self, project_id: str, root: Path | None = None) -> list[str]:
        gone = []
        for p in sorted(_base().glob("*.json")):
            labels = (self._meta(p.stem) or {}).get("labels", {})
            here = root is None or labels.get(dc.LABEL_ROOT) == str(root)  # a colliding short id stays
            if labels.get(dc.LABEL_PROJECT) == project_id and here:
                self.destroy(p.stem)
                gone.append(p.stem)
        return gone


class HostDirTransport:
    def __init__(self, folder: Path, shell: str) -> None:
        self.folder, self.shell = folder, shell

    def _path(self, remote: str) -> Path:
        """A path in the machine: inside its folder, never out of it by '..' or a link on the way."""
        root = os.path.realpath(self.folder)
        rel = os.path.normpath(remote.lstrip("/") or ".")
        parent = os.path.realpath(os.path.join(root, os.path.dirname(rel)))
        if rel.split(os.sep)[0] == ".." or not (parent == root or parent.startswith(root + os.sep)):
            raise dc.CommandFailed(f"{remote}: not a path in the machine's folder")
        return Path(root) if rel == "." else Path(parent, os.path.basename(rel))

    def _spawn(self, user, workdir, env) -> dict:
        if user is not None:
            raise dc.UnsupportedOperation("a hostdir machine runs commands as you: it has no other users")
        # The env travels in the process environment, never on a command line.
        return {"cwd": self._path(workdir) if workdir else self.folder, "env": {**os.environ, **(env or {})}}

    def run(self, argv, *, env=None, user=None, workdir=None, on_output=None, on_stderr=None) -> int:
        out, err = dc.LineSplitter(on_output or _drop), dc.LineSplitter(on_stderr or _drop)
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE if on_stderr else subprocess.STDOUT}
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **pipes, **self._spawn(user, workdir, env))
        except FileNotFoundError:
            return 127
        if on_stderr:  # two streams: each read to its end (their interleaving is lost)
            o, e = p.communicate()
            out.feed(o)
            err.feed(e)
        else:  # one stream, shown as it comes
            for chunk in iter(lambda: p.stdout.read1(65536), b""):
                out.feed(chunk)
        out.close()
        err.close()
        return p.wait()

    def put(self, local: Path, remote: str) -> None:
        if local.is_dir() and not local.is_symlink():
            self.put_tree(local, remote)
        else:
            self._copy(local, self._path(remote))

    def put_tree(self, local: Path, remote: str, *, exclude: tuple[str, ...] = ()) -> None:
        if (dst := self._path(remote)).is_symlink():
            raise dc.CommandFailed(f"{remote}: a link in the machine, not a folder to copy into")
        shutil.copytree(local, dst, symlinks=True, ignore=shutil.ignore_patterns(*exclude), dirs_exist_ok=True)

    def get(self, remote: str, local: Path) -> None:
        self._copy(self._path(remote), local)

    @staticmethod
    def _copy(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink():
            dst.unlink()  # a link there is replaced, never written through
        shutil.copy2(src, dst, follow_symlinks=False)

    def interactive(self, argv, *, env=None, user=None, workdir=None) -> int:
        return subprocess.call(argv or [self.shell, "-l"], **self._spawn(user, workdir, env))

    def connection(self) -> dc.Connection:
        # Neither a container nor an ssh server: nothing (Ansible) can connect, so say it plainly.
        raise dc.UnsupportedOperation("a hostdir machine is a host folder: nothing connects to it over docker or ssh")

    def ssh_config(self, alias: str) -> str | None:
        return None
