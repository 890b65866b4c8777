"""Every built box on this host, wherever it lives: `devenv box list`, `box remove`, `box prune`.

Boxes live in the box store (devenv.boxes.store: libvirt disks, .box files, VirtualBox boxes)
and, for engines whose boxes are images, in the engine: those are reached through the driver's
BoxImages role (Docker). An engine that is not reachable is reported and skipped, never fatal.
Nothing here prints: what happens is reported on the Reporter given, results are returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devenv.boxes import store
from devenv.contract import QUIET, Reporter, supports
from devenv.errors import BackendUnavailable, BoxError, DevenvError
from devenv.model.recipe import check_name, parse_ref

IMAGE_DRIVER = "docker"  # the engine whose boxes are images


def _image_driver(reporter: Reporter) -> Any | None:
    """The Docker driver, reachable and declaring BoxImages (raises what check_available raises)."""
    from devenv.plugins import get_driver

    driver = get_driver(IMAGE_DRIVER)
    driver.reporter = reporter
    driver.check_available()
    return driver if supports(driver, "box_images") else None


def built_boxes(reporter: Reporter = QUIET) -> list[dict]:
    """Every built box: the engine's images, then the box store's (name, version, provider, tag,
    digest, size, path)."""
    built: list[dict] = []
    try:
        driver = _image_driver(reporter)
        if driver is not None:
            built += driver.list_boxes()
    except DevenvError as exc:
        reporter.warn(f"docker boxes not listed: {exc.message}")
    for b in store.list_stored():
        disk = b.file("disk")
        built.append(
            {
                "name": b.name,
                "version": b.version,
                "provider": b.provider,
                "tag": None,
                "digest": "sha256:" + (b.digest() or ""),
                "size": disk.stat().st_size if disk else None,
                "path": str(b.folder),
            }
        )
    return built


def remove(name: str, reporter: Reporter = QUIET) -> list[str]:
    """Remove NAME (every version and provider) or NAME@VERSION; returns what went."""
    ref = parse_ref(name)
    check_name(ref.name, "box name")  # before any engine or folder is touched
    if ref.version is not None:
        check_name(ref.version, "box version")
    removed: list[str] = []
    try:
        driver = _image_driver(reporter)
        if driver is not None:
            removed += driver.remove_box(ref.name, ref.version)
    except BackendUnavailable as exc:
        reporter.warn(f"docker boxes not checked: {exc.message}")
    removed += store.remove_stored(ref.name, ref.version)
    if not removed:
        raise BoxError(f"no built box named {name}", hint="`devenv box list` shows the built boxes")
    return removed


def _kept(project_root: Path | None, reporter: Reporter) -> set[tuple[Any, Any]]:
    """(name, version) of every box a known machine boots or a lock file pins."""
    from devenv.boxes.lockfile import Lockfile
    from devenv.errors import StateError
    from devenv.model.devfile import DEVFILE_NAMES
    from devenv.state import GlobalIndex, ProjectState

    keep: set[tuple[Any, Any]] = set()

    def keep_locked(root: Path) -> None:
        # Every name a Devfile may have has its own lock (Devfile.lock, Devfile.toml.lock).
        for name in DEVFILE_NAMES:
            try:
                for m in Lockfile(root / name).entries.values():
                    keep.add((m.box, m.version))
            except StateError as exc:
                reporter.warn(f"{exc.message}; its boxes are kept")

    for e in GlobalIndex(reporter=reporter).entries():
        root = Path(e.get("root", ""))
        try:  # state and lock files are read as every command reads them: no links, bounded, typed
            st = ProjectState(root).load(str(e.get("machine")))
        except StateError:
            st = None
        b = (st or {}).get("box") or {}
        if isinstance(b, dict):
            keep.add((b.get("name"), b.get("version")))
        keep_locked(root)
    if project_root:
        keep_locked(project_root)
    return keep


def prune(project_root: Path | None, *, dry_run: bool = False, reporter: Reporter = QUIET) -> list[str]:
    """Remove old box versions: keeps the newest of each box and every version a lock file or
    machine uses (and any whose disk a machine is built on). Returns what went (would go)."""
    from devenv.boxes.disks import disk_users

    keep = _kept(project_root, reporter)
    found: list[tuple[str, str, str]] = []  # name, version, provider
    driver = None
    try:
        driver = _image_driver(reporter)
        if driver is not None:
            found += [(b["name"], b["version"], "docker") for b in driver.list_boxes() if b["tag"]]
    except BackendUnavailable as exc:
        driver = None
        reporter.warn(f"docker boxes not checked: {exc.message}")
    found += [(b.name, b.version, b.provider) for b in store.list_stored()]
    newest: dict[str, str] = {}
    for name, version, _ in found:
        if name not in newest or store.version_key(version) > store.version_key(newest[name]):
            newest[name] = version
    gone = []
    for name, version, provider in sorted(set(found)):
        if (name, version) in keep or newest.get(name) == version:
            continue
        stored = store.find_stored(name, version, provider) if provider != "docker" else None
        users = disk_users(stored.folder) if stored else []
        if users:
            # A machine outside every known project (its folder moved, say) still boots from it.
            reporter.info(
                None, f"keeping {name}@{version} ({provider}): the disks of {', '.join(users)} are built on it"
            )
            continue
        reporter.info(None, f"{'would remove' if dry_run else 'removing'} {name}@{version} ({provider})")
        gone.append(f"{name}@{version} ({provider})")
        if dry_run:
            continue
        if provider == "docker" and driver is not None:
            driver.remove_box(name, version)
        else:
            store.remove_stored(name, version, provider)
    return gone
