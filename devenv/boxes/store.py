"""The box store: built or added boxes for file-based providers (libvirt, virtualbox, .box files).

Layout: <data dir>/boxes/NAME/VERSION/PROVIDER/{box.json, disk.qcow2, vmlinuz, initrd.img, ...}.
Every name becomes a folder: checked by the recipe model's one rule (devenv.model.recipe), and
nothing is ever followed through a symlink planted in the store. Recipes are the model's
(devenv.model.recipe), building is devenv.boxes.builders' work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from devenv.errors import BoxError

# parse_ref: re-exported for callers that still import it from here (drivers/virtualbox,
# core/project.boxes_differ); the recipe model owns it.
from devenv.model.recipe import MAX_NAME_LEN, NAME_PATTERN, check_name, parse_ref, valid_name  # noqa: F401


@dataclass(frozen=True)
class StoredBox:
    name: str
    version: str
    provider: str
    folder: Path
    meta: dict

    def file(self, key: str) -> Path | None:
        entry = (self.meta.get("files") or {}).get(key)
        rel = entry.get("path") if isinstance(entry, dict) else None
        # box.json is devenv's own, but a file name in it is still only ever a name in the folder.
        return self.folder / rel if isinstance(rel, str) and valid_name(rel) else None

    def digest(self, key: str = "disk") -> str | None:
        entry = (self.meta.get("files") or {}).get(key)
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        return sha if isinstance(sha, str) else None


def store_root() -> Path:
    from devenv.state import data_dir

    return data_dir() / "boxes"


def _make_dir(path: Path, mode: int) -> None:
    """mkdir -p with an explicit mode on every folder it makes: the umask does not decide."""
    import os

    missing = []
    p = path
    while not os.path.lexists(p) and p.parent != p:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue  # made meanwhile by another devenv; the checks of the caller still apply
        os.chmod(d, mode)


def ensure_store_root() -> Path:
    """The box store's folder, made 0755 (with any missing parent) whatever the umask."""
    root = store_root()
    _make_dir(root, 0o755)
    return root


def _no_link(path: Path) -> bool:
    """True when `path` is a real folder (lstat), never a symlink planted in the store."""
    import os
    import stat

    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def store_folder(name: str, version: str, provider: str) -> Path:
    """store/NAME/VERSION/PROVIDER after checking each part, resolved inside the store."""
    check_name(name, "box name")
    check_name(version, "box version")
    check_name(provider, "box provider")
    root = store_root()
    dest = root / name / version / provider
    if not _inside(dest, root):  # a symlink planted in the store: refused, never followed
        raise BoxError(
            f"refusing to use {dest}: it leads outside the box store {root} (a symbolic link?)",
            hint="the box store holds only devenv's own folders: remove that link and try again",
        )
    return dest


def version_key(v: str) -> tuple:
    # Numbers compare as numbers, words as words, never a number with a word (no TypeError).
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-]", str(v)))


def _load(name: str, version: str, provider: str) -> StoredBox | None:
    """The box in store/NAME/VERSION/PROVIDER, or None when absent, a symlink or not readable as devenv's."""
    import json
    import os
    import stat

    folder = store_root() / name / version / provider
    if not all(_no_link(p) for p in (folder.parent.parent, folder.parent, folder)):
        return None
    meta_path = folder / "box.json"
    try:
        st = os.lstat(meta_path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4 * 1024 * 1024:
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(meta, dict):
        return None
    return StoredBox(name, version, provider, folder, meta)


def _children(folder: Path) -> list[str]:
    """The entries of a store folder that can be a box part: valid names, real folders."""
    import os

    if not _no_link(folder):
        return []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if valid_name(n) and _no_link(folder / n))


def find_stored(name: str, version: str | None, provider: str) -> StoredBox | None:
    check_name(name, "box name")
    if version is not None:
        check_name(version, "box version")
    check_name(provider, "box provider")
    base = store_root() / name
    versions = [version] if version else sorted(_children(base), key=version_key, reverse=True)
    for v in versions:
        found = _load(name, v, provider)
        if found is not None:
            return found
    return None


def list_stored() -> list[StoredBox]:
    out = []
    root = store_root()
    for name in _children(root):
        for ver in _children(root / name):
            for prov in _children(root / name / ver):
                b = _load(name, ver, prov)
                if b:
                    out.append(b)
    return out


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stage(src: Path, target: Path, work: Path | None) -> None:
    """Put one artifact into the store's temporary folder: moved from `work`, else copied.

    Only a regular file (lstat: no symlink) is taken, and only one inside `work` -- devenv's own
    temporary folder -- is ever moved: a file named from anywhere else stays where it is.
    """
    import os
    import shutil
    import stat

    try:
        st = os.lstat(src)
    except OSError as exc:
        raise BoxError(f"cannot store {src}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise BoxError(f"refusing to store {src}: not a regular file (a box holds regular files only)")
    if work is not None:
        if not _inside(src, work):
            raise BoxError(f"refusing to store {src}: it is outside devenv's work folder {work}")
        shutil.move(str(src), target)  # a rename when on the same file system
    else:
        shutil.copyfile(src, target, follow_symlinks=False)
    os.chmod(target, 0o644)


def store_box(
    name: str, version: str, provider: str, files: dict[str, Path], meta: dict, *, work: Path | None = None
) -> StoredBox:
    """Put finished artifacts into the store: written to a temporary folder, renamed in whole.

    A build that dies half-way never leaves a box that looks complete. Files inside `work` (the
    caller's own temporary folder) are moved; without `work` they are copied, never moved.
    Folders are made 0755 and files 0644 whatever the umask: libvirt's QEMU reads the disks.
    """
    import json
    import os
    import shutil
    import tempfile

    dest = store_folder(name, version, provider)
    for src in files.values():
        if not valid_name(src.name):
            raise BoxError(f"refusing to store {src}: its file name is not a plain name")
    if len({src.name for src in files.values()}) != len(files):
        raise BoxError(f"box {name}@{version} ({provider}): two of its files have the same name")
    tmp = None
    try:
        root = ensure_store_root()
        _make_dir(dest.parent, 0o755)
        for p in (dest.parent.parent, dest.parent):
            if not _no_link(p) or not _inside(p, root):
                raise BoxError(f"refusing to store box {name}@{version}: {p} is not a folder of the store")
        tmp = Path(tempfile.mkdtemp(prefix=f".{provider}-", dir=dest.parent))
        os.chmod(tmp, 0o755)
        entries = {}
        for key, src in files.items():
            target = tmp / src.name
            if src.parent.resolve() != tmp.resolve():
                _stage(src, target, work)
            entries[key] = {"path": target.name, "sha256": sha256_file(target)}
        doc = {"name": name, "version": version, "provider": provider, **meta, "files": entries}
        fd = os.open(tmp / "box.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp / "box.json", 0o644)
        if os.path.lexists(dest):
            if not _no_link(dest):
                os.unlink(dest)  # a symlink or file planted where the box goes: removed, never followed
            else:
                old = _load(name, version, provider)
                if old is not None:
                    ensure_unused(old, "replace")
                shutil.rmtree(dest)
        tmp.rename(dest)
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise BoxError(
            f"cannot store box {name}@{version} ({provider}) in {store_root()}: {exc.strerror or exc}",
            hint="free some disk space (`devenv box prune` removes unused versions) and build or add it again",
        ) from exc
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = _load(name, version, provider)
    if found is None:
        raise BoxError(f"box {name}@{version} ({provider}) was stored but cannot be read back from {dest}")
    return found


def ensure_unused(box: StoredBox, doing: str) -> None:
    """Refuse to replace or remove a stored box that machines still boot from."""
    from devenv.boxes.disks import disk_users

    users = disk_users(box.folder)
    if users:
        raise BoxError(
            f"cannot {doing} box {box.name}@{box.version} ({box.provider}): the disks of "
            f"{', '.join(users)} are built on it",
            hint="destroy those machines first (`devenv global-status` lists them), or give the box a new "
            "version: a box version is meant to stay as it was built",
        )


def remove_stored(name: str, version: str | None = None, provider: str | None = None) -> list[str]:
    """Remove store/NAME[/VERSION[/PROVIDER]]: only real folders of the store, never through a symlink.

    A folder whose box.json is unreadable is removed too (it is no box any more).
    """
    import shutil

    check_name(name, "box name")
    if version is not None:
        check_name(version, "box version")
    if provider is not None:
        check_name(provider, "box provider")
    root = store_root()
    chosen: list[StoredBox] = []
    for v in _children(root / name):
        if version is not None and v != version:
            continue
        for p in _children(root / name / v):
            if provider is not None and p != provider:
                continue
            folder = root / name / v / p
            chosen.append(_load(name, v, p) or StoredBox(name, v, p, folder, {}))
    for b in chosen:  # all checked before anything goes
        ensure_unused(b, "remove")
    for b in chosen:
        # Checked again right before: every part a real folder inside the store. rmtree itself
        # does not follow symlinks inside (it works on descriptors, rmtree.avoids_symlink_attacks).
        parts = (b.folder.parent.parent, b.folder.parent, b.folder)
        if not all(_no_link(p) for p in parts) or not _inside(b.folder, root):
            raise BoxError(f"refusing to remove {b.folder}: it is not a folder of the box store {root}")
        shutil.rmtree(b.folder)
    return [f"{b.name}@{b.version} ({b.provider})" for b in chosen]
