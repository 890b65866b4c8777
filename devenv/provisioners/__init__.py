"""The provisioner seam: what a provision step is, how it runs, and its fingerprint.

Provisioners see a Transport (run/put in a running machine), never a driver, so the same
step runs in a container, a VM or a box build. A step's fingerprint is sha256 over its type,
its normalised config and the content of every file it reads; paths enter the fingerprint as
written (relative), so a box recipe and a Devfile using the same step agree on it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from devenv import plugins
from devenv.contract import QUIET, Provisioner, Reporter, RunContext  # noqa: F401 - Provisioner/RunContext re-exported

if TYPE_CHECKING:
    from devenv.contract import Transport
    from devenv.model.devfile import Step
    from devenv.model.schema import Problem

# Keys that describe how or when a step runs, not what it does: changing them reruns nothing.
NON_CONTENT_KEYS = frozenset({"name", "run", "allow_outside_project"})


def step_fields(step_type: str) -> dict:
    """The keys every provision step has (type, name, run), for each provisioner's option table."""
    from devenv.model.schema import Field, Str

    return {
        "type": Field(Str(choices=(step_type,))),
        "name": Field(Str(description="A label shown in output and status")),
        "run": Field(Str(choices=("once", "always", "never"))),
    }


def run_step(step: Step, label: str, root: Path, transport: Transport, reporter: Reporter = QUIET) -> None:
    """Run one provision step in a machine (or box build), its output reported under `label`."""
    ctx = RunContext(machine=label, root=root, transport=transport, reporter=reporter)
    plugins.get_provisioner(step.type).run(step.config, ctx)


def host_path_problems(config: dict, key: str, root: Path, path: tuple, *, want_file: bool) -> list[Problem]:
    """A host path a step reads must exist and, unless the step allows it, stay inside the project.

    A Devfile from a cloned repository must not be able to copy ~/.ssh or /etc into a machine
    (or a box that is shipped) without saying so in plain sight: the check is on the real path,
    so a symlink (or a folder on the way that is one) pointing out of the project is refused too.
    """
    from devenv.model.schema import Problem
    from devenv.paths import ConfinementError

    try:
        host_path(config, key, root, want_file=want_file)
    except ConfinementError as exc:
        return [Problem(path + (key,), exc.message)]
    return []


def host_path(config: dict, key: str, root: Path, *, want_file: bool) -> Path:
    """The real path of a step's host file (checked as at validation): what run() reads, at use.

    Checked again when the step runs because a link can change in between (a machine with the
    project synced read-write can make one); raises paths.ConfinementError.
    """
    from devenv.paths import confine

    return confine(
        root,
        config[key],
        allow_outside=bool(config.get("allow_outside_project")),
        kind="file" if want_file else "any",
        what="step",
    )


def _hash_tree(h, path: Path, label: str, root: Path, allow_outside: bool) -> None:
    """Feed a file or a whole folder (names, modes, contents) into the hash, in a stable order.

    Never follows a link out of the project (unless the step allows it) and never opens anything
    but a regular file: a role linked to /etc or a FIFO in a folder is named, not read.
    """
    import stat

    from devenv.paths import real_root, resolve, walk

    base = real_root(root)

    def readable(p: Path) -> os.stat_result | None:
        """The stat of what p leads to, if it may be read; None for a link out or a dangling one."""
        r = resolve(os.path.abspath(p), base)
        if r.error or not r.exists:
            return None
        if not allow_outside and not (r.path == base or r.path.startswith(base.rstrip("/") + "/")):
            return None
        try:
            return os.stat(r.path)
        except OSError:
            return None

    st = readable(path)
    if st is None:
        h.update(f"{'missing' if not os.path.lexists(path) else 'outside'}:{label}\0".encode())
        return
    if not stat.S_ISDIR(st.st_mode):
        _hash_entry(h, path, st, label)
        return
    h.update(f"dir:{label}\0".encode())
    for p, lst in walk(path):
        rel = f"{label}/{p.relative_to(path).as_posix()}"
        if stat.S_ISDIR(lst.st_mode):
            continue  # a folder enters by the files in it, as before
        if stat.S_ISLNK(lst.st_mode):
            # Copies keep a link as a link; ansible follows one to a file: hash both, never outside.
            try:
                h.update(f"link:{rel}:{os.readlink(p)}\0".encode(errors="surrogateescape"))
            except OSError:
                continue
            target = readable(p)
            if target is not None and stat.S_ISREG(target.st_mode):
                _hash_entry(h, p, target, rel)
            continue
        _hash_entry(h, p, lst, rel)


def _hash_entry(h, path: Path, st: os.stat_result, label: str) -> None:
    import stat

    if not stat.S_ISREG(st.st_mode):  # a device, FIFO or socket: reading it could block forever
        h.update(f"special:{label}:{stat.S_IFMT(st.st_mode)}\0".encode())
        return
    _hash_file(h, path, label)


def _hash_file(h, path: Path, label: str) -> None:
    import stat

    from devenv.paths import open_nofollow, resolve

    executable = os.access(path, os.X_OK)
    h.update(f"file:{label}:{int(executable)}\0".encode())
    try:
        # The real path, then opened with no link followed on the way (a link swapped in since
        # the caller's check fails here instead of hashing a host file), and only a regular file.
        fd = open_nofollow(resolve(os.path.abspath(path)).path)
    except OSError:
        h.update(b"unreadable\0")
        return
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        h.update(b"unreadable\0")
        return
    with open(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    h.update(b"\0")


def fingerprint(step: Step, root: Path) -> str:
    """sha256 over type + normalised config + the content of every file the step reads."""
    prov = plugins.get_provisioner(step.type)
    config = {k: v for k, v in step.config.items() if k not in NON_CONTENT_KEYS}
    h = hashlib.sha256()
    h.update(json.dumps({"type": step.type, "config": config}, sort_keys=True).encode())
    for p in prov.files(step.config, root):
        try:
            label = p.relative_to(root).as_posix()
        except ValueError:
            label = p.as_posix()
        _hash_tree(h, p, label, root, bool(step.config.get("allow_outside_project")))
    return "sha256:" + h.hexdigest()
