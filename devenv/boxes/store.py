"""Box recipes (boxes/NAME.toml) and box references.

A recipe names a box, its version and the ordered sources it can be made from; drivers turn
a recipe into their own artifact (the Docker driver: an image tagged devenv-box/NAME:VERSION).
Recipes are looked up in the project's own boxes/ folder first, then in the boxes bundled
with devenv.
"""

from __future__ import annotations

import re
import tomllib as _toml
from dataclasses import dataclass, field
from pathlib import Path

from devenv.errors import BoxError, DevfileError
from devenv.model.schema import (
    MISSING,
    USER_NAME_HELP,
    USER_NAME_PATTERN,
    Field,
    ListOf,
    Problem,
    Str,
    Table,
    did_you_mean,
)
from devenv.model.tomlpos import key_lines, line_of

# The recipes devenv ships are package data (an installed wheel has no checkout): the steps they
# bake start at devenv/data (devenv/data/provisioners/...). A checkout's top-level boxes/ and
# provisioners/ are links to these folders, so the repository's own Devfiles use the same files.
BUNDLED = Path(__file__).resolve().parents[1] / "data" / "boxes"
IMAGE_REPO = "devenv-box"
LABEL_BOX = "devenv.box"
LABEL_VERSION = "devenv.box.version"
LABEL_BAKED = "devenv.box.baked"  # comma-separated fingerprints of the baked provision steps
LABEL_KEEPALIVE = "devenv.keepalive"  # the image holds devenv's keep-alive with this digest
# Which recipe file built a box: sha256 of its real path. Boxes live in one store (and one engine)
# shared by every project on the host, keyed by NAME/VERSION; a repository's boxes/NAME.toml could
# otherwise build an artifact under devenv's own name that every other project would then boot.
LABEL_ORIGIN = "devenv.box.origin"

SOURCE_TYPES = ("image", "debootstrap", "busybox", "cloud-image", "box")


@dataclass(frozen=True)
class BoxRef:
    """What a Devfile's `box` names."""

    kind: str  # "recipe" | "image" | "file"
    name: str
    version: str | None = None

    def __str__(self) -> str:
        if self.kind == "image":
            return f"docker:{self.name}"
        return f"{self.name}@{self.version}" if self.version else self.name


def parse_ref(text: str) -> BoxRef:
    if text.startswith("docker:"):
        return BoxRef("image", text[len("docker:") :])
    if text.endswith(".box") or "://" in text:
        return BoxRef("file", text)
    name, _, version = text.partition("@")
    return BoxRef("recipe", name, version or None)


def _check_source(src: dict, path: tuple, problems: list) -> None:
    t = src.get("type")
    need = {
        "image": ("image",),
        "debootstrap": ("suite",),
        "busybox": (),
        "cloud-image": ("sha256",),
        "box": ("sha256",),
    }.get(t, ())
    for k in need:
        if k not in src:
            why = " (a downloaded image is used only when its checksum is known)" if k == "sha256" else ""
            problems.append(Problem(path + (k,), f"is required for a '{t}' source{why}"))
    if t in ("cloud-image", "box") and ("url" in src) == ("path" in src):
        problems.append(Problem(path, f"a '{t}' source needs exactly one of 'url' or 'path'"))


_SOURCE = Table(
    {
        "type": Field(Str(choices=SOURCE_TYPES), required=True),
        "image": Field(Str(description="Engine image used when present (pulled only with --pull)")),
        "suite": Field(Str(description="Debian suite for debootstrap, e.g. bookworm")),
        "variant": Field(Str(choices=("minbase", "buildd", "fakechroot")), default="minbase"),
        "include": Field(ListOf(Str()), default=list),
        "vm_include": Field(ListOf(Str(description="Extra packages for VM outputs only")), default=list),
        "mirror": Field(Str(description="Debian mirror; default: the one the host's apt sources use")),
        "url": Field(Str(description="cloud-image / box: where to download it (http, https, file)")),
        "path": Field(Str(description="cloud-image / box: a local file, relative to the recipe's project")),
        "sha256": Field(Str(pattern=r"(sha256:)?[0-9a-fA-F]{64}", pattern_help="64 hex digits")),
        "ssh_user": Field(
            Str(
                pattern=USER_NAME_PATTERN,
                pattern_help=USER_NAME_HELP,
                description="cloud-image: the user its cloud-init gives the SSH key",
            )
        ),
    },
    check_fn=_check_source,
)


class _StepsNode(ListOf):
    """A Devfile provision list, checked by the Devfile's own step rules (imported late: no cycle)."""

    def __init__(self) -> None:
        from devenv.model.schema import Custom

        def step(value, path, problems):
            from devenv.model.devfile import _step

            return _step(value, path, problems)

        super().__init__(Custom(step, {"type": "object"}), description="Provision steps baked into the box")
        self.keep_missing = True


_RECIPE = Table(
    {
        "name": Field(Str(pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*", pattern_help="letters, digits, . _ -"), required=True),
        "version": Field(
            Str(pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*", pattern_help="letters, digits, . _ -"), required=True
        ),
        "description": Field(Str(), default=""),
        "sources": Field(ListOf(_SOURCE), required=True),
        "outputs": Field(
            ListOf(
                Str(
                    choices=("docker", "libvirt", "vagrant"),
                    description="docker image, libvirt qcow2 (+kernel/initrd), vagrant .box (libvirt+virtualbox)",
                )
            ),
            default=lambda: ["docker"],
        ),
        # The same step syntax as a Devfile's provision list; paths start at the folder above boxes/.
        "provision": Field(_StepsNode(), default=list),
    },
    check_fn=lambda r, path, problems: _check_recipe_names(r, path, problems),
)


def _check_recipe_names(r: dict, path: tuple, problems: list) -> None:
    # The pattern above is checked by the schema; the length (a folder name of the store) here.
    for key in ("name", "version"):
        value = r.get(key)
        if isinstance(value, str) and len(value) > MAX_NAME_LEN:
            problems.append(Problem(path + (key,), f"is longer than {MAX_NAME_LEN} characters"))


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    description: str
    sources: tuple[dict, ...]
    outputs: tuple[str, ...]
    path: Path
    root: Path = field(default=Path("."))  # where the recipe's relative paths start
    provision: tuple = ()  # devenv.model.devfile.Step, baked in order

    def bake(self, transport, label: str) -> None:
        """Run the baked steps in a build machine; any failure means nothing is stored."""
        from devenv import ui
        from devenv.errors import ProvisionError
        from devenv.provisioners import run_step

        for step in self.provision:
            ui.info(label, f"bake {step.label}")
            try:
                run_step(step, label, self.root, transport)
            except ProvisionError as exc:
                raise BoxError(
                    f"box {self.name}@{self.version}: baked step {step.label} failed; nothing was stored\n"
                    + exc.message,
                    hint=f"fix the step in {self.path} and build again",
                ) from exc

    def baked_fingerprints(self) -> list[str]:
        """The fingerprints of the baked steps: what a machine on this box may skip."""
        from devenv.provisioners import fingerprint

        return [fingerprint(step, self.root) for step in self.provision]

    @property
    def origin(self) -> str:
        """The recipe file's identity in the shared store (see LABEL_ORIGIN)."""
        import hashlib
        import os

        return hashlib.sha256(os.fsencode(os.path.realpath(self.path))).hexdigest()[:32]

    @property
    def docker_tag(self) -> str:
        return f"{IMAGE_REPO}/{self.name}:{self.version}"


def recipe_dirs(project_root: Path | None) -> list[Path]:
    dirs = []
    if project_root is not None:
        dirs.append(project_root / "boxes")
    if not any(d.resolve() == BUNDLED for d in dirs if d.is_dir()):
        dirs.append(BUNDLED)
    return [d for d in dirs if d.is_dir()]


def load_recipe(path: Path) -> Recipe:
    # A project's boxes/ comes with the repository: read it as the Devfile is read (a regular
    # UTF-8 file of bounded size, bounded nesting), never as trusted text.
    from devenv.model.devfile import MAX_DEPTH, MAX_DEVFILE_BYTES, MAX_VALUES, shape_problem
    from devenv.model.tomlpos import nesting_depth_exceeded
    from devenv.paths import read_regular

    try:
        text = read_regular(path, MAX_DEVFILE_BYTES, what="it").decode("utf-8")
    except OSError as exc:
        raise DevfileError(f"cannot read box recipe {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DevfileError(f"box recipe {path} is not UTF-8 text (byte {exc.start})") from None
    deep = nesting_depth_exceeded(text, MAX_DEPTH)
    if deep is not None:
        raise DevfileError(f"{path}:{deep}: arrays or tables nested deeper than {MAX_DEPTH} levels")
    try:
        data = _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        raise DevfileError(f"{path}: TOML syntax error: {exc}") from exc
    except RecursionError:
        raise DevfileError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
    shape = shape_problem(data, MAX_DEPTH, MAX_VALUES)
    if shape is not None:
        raise DevfileError(f"box recipe {path} is invalid", [f"{path}:1: {shape.key}: {shape.message}"])
    problems: list[Problem] = []
    r = _RECIPE.check(data, (), problems)
    if problems or r is MISSING:
        locs = key_lines(text)
        lines = [f"{path}:{line_of(locs, p.path) or 1}: {p.key}: {p.message}" for p in problems]
        raise DevfileError(f"box recipe {path} is invalid", lines)
    if not r["sources"]:
        raise DevfileError(f"box recipe {path} is invalid", [f"{path}:1: sources: needs at least one source"])
    from devenv.model.devfile import Step
    from devenv.provisioners import get_provisioner

    root = path.parent.parent
    steps = []
    for i, cfg in enumerate(r["provision"]):
        for p in get_provisioner(cfg["type"]).check(cfg, root, ("provision", i)):
            problems.append(p)
        steps.append(Step(index=i, type=cfg["type"], config=cfg, run=cfg.get("run", "once"), name=cfg.get("name")))
    if problems:
        locs = key_lines(text)
        lines = [f"{path}:{line_of(locs, p.path) or 1}: {p.key}: {p.message}" for p in problems]
        raise DevfileError(f"box recipe {path} is invalid", lines)
    return Recipe(
        name=r["name"],
        version=r["version"],
        description=r["description"],
        sources=tuple(r["sources"]),
        outputs=tuple(r["outputs"]),
        path=path,
        root=root,
        provision=tuple(steps),
    )


def list_recipes(project_root: Path | None) -> dict[str, Recipe]:
    found: dict[str, Recipe] = {}
    for d in recipe_dirs(project_root):
        for p in sorted(d.glob("*.toml")):
            try:
                r = load_recipe(p)
            except DevfileError as exc:
                from devenv import ui

                ui.warn(f"skipping {exc.message}" + "".join(f"; {p}" for p in exc.problems))
                continue
            found.setdefault(r.name, r)
    return found


def find_recipe(ref: BoxRef, project_root: Path | None) -> Recipe:
    for d in recipe_dirs(project_root):
        p = d / f"{ref.name}.toml"
        if p.is_file():
            r = load_recipe(p)
            if ref.version and ref.version != r.version:
                raise BoxError(
                    f"box {ref.name}@{ref.version} is not available: the recipe {p} makes version {r.version}",
                    hint=f'use box = "{ref.name}" or "{ref.name}@{r.version}"',
                )
            return r
    known = list(list_recipes(project_root))
    raise BoxError(
        f"unknown box '{ref.name}'{did_you_mean(ref.name, known)}",
        hint=(f"known boxes: {', '.join(sorted(known))}; " if known else "")
        + 'add boxes/NAME.toml to the project, or use box = "docker:IMAGE" for an engine image',
    )


def check_origin(recorded: object, recipe: Recipe, what: str) -> None:
    """Refuse a built box that another recipe file made under the name and version this project's
    recipe makes. A box without the record (built by an older devenv, added by hand) is accepted."""
    if not recorded or recorded == recipe.origin:
        return
    raise BoxError(
        f"{what} was built from another recipe than {recipe.path} (the one this project uses for "
        f"{recipe.name}@{recipe.version}): another project's boxes/{recipe.name}.toml made it; it is not used",
        hint=f"rebuild it from this project's recipe: `devenv box build {recipe.name} --force` "
        "(or give your own recipe another name, so that projects do not share it)",
    )


def image_name_ok(name: str) -> bool:
    return re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]*", name) is not None


# ---------------------------------------------------------------------------------------------
# The box store: built or added boxes for file-based providers (libvirt, later virtualbox).
# Layout: <data dir>/boxes/NAME/VERSION/PROVIDER/{box.json, disk.qcow2, vmlinuz, initrd.img}


# Names and versions of boxes become folders of the store: one rule for every way they enter
# (recipe, catalog, command line, .box metadata, store lookups), the recipe's own pattern.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
MAX_NAME_LEN = 128


def valid_name(value: object) -> bool:
    """A box name, version or provider that is safe as one folder name of the store."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME_LEN
        and re.fullmatch(NAME_PATTERN, value) is not None
        and value.strip(".") != ""
    )


def check_name(value: object, what: str = "box name") -> str:
    """`value` if valid_name(), else a BoxError that names the rule."""
    if valid_name(value):
        return value  # type: ignore[return-value]
    from devenv.boxes.archive import shown

    text = value if isinstance(value, str) else repr(value)
    raise BoxError(
        f"invalid {what} {shown(text)}: it must start with a letter or digit and use only letters, digits, "
        f"'.', '_' and '-' (at most {MAX_NAME_LEN} characters)",
        hint="box names and versions become folders of the box store: pick a plain name such as debian-12 or 2026.11.1",
    )


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
    from devenv.core.state import data_dir

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


def qcow2_backing(path: Path) -> str | None:
    """The backing file a qcow2 image names in its header, or None (no backing file, not qcow2)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != b"QFI\xfb":
                return None
            offset, size = struct.unpack(">QI", head[8:20])
            if not offset or not size or size > 4096:
                return None
            f.seek(offset)
            return f.read(size).decode("utf-8", "replace")
    except OSError:
        return None


def disk_users(folder: Path) -> list[str]:
    """The libvirt machines whose disk is an overlay on a file in `folder` (a stored box version).

    Overlays keep pointing at the box's disk for their whole life: replacing or removing that
    file under them corrupts every machine built on it."""
    from devenv.core.state import data_dir

    folder = folder.resolve()
    users = []
    for overlay in sorted((data_dir() / "libvirt").glob("*/disk.qcow2")):
        backing = qcow2_backing(overlay)
        if backing and folder in Path(backing).resolve().parents:
            users.append(overlay.parent.name)
    return users


def ensure_unused(box: StoredBox, doing: str) -> None:
    """Refuse to replace or remove a stored box that machines still boot from."""
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
