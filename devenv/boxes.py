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
from devenv.schema import MISSING, Field, ListOf, Problem, Str, Table, did_you_mean
from devenv.tomlpos import key_lines, line_of

BUNDLED = Path(__file__).resolve().parent.parent / "boxes"
IMAGE_REPO = "devenv-box"
LABEL_BOX = "devenv.box"
LABEL_VERSION = "devenv.box.version"
LABEL_BAKED = "devenv.box.baked"  # comma-separated fingerprints of the baked provision steps
LABEL_KEEPALIVE = "devenv.keepalive"  # the image holds devenv's keep-alive with this digest

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
        "ssh_user": Field(Str(description="cloud-image: the user its cloud-init gives the SSH key")),
    },
    check_fn=_check_source,
)


class _StepsNode(ListOf):
    """A Devfile provision list, checked by the Devfile's own step rules (imported late: no cycle)."""

    def __init__(self) -> None:
        from devenv.schema import Custom

        def step(value, path, problems):
            from devenv.devfile import _step

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
)


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    description: str
    sources: tuple[dict, ...]
    outputs: tuple[str, ...]
    path: Path
    root: Path = field(default=Path("."))  # where the recipe's relative paths start
    provision: tuple = ()  # devenv.devfile.Step, baked in order

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
    def docker_tag(self) -> str:
        return f"{IMAGE_REPO}/{self.name}:{self.version}"


def recipe_dirs(project_root: Path | None) -> list[Path]:
    dirs = []
    if project_root is not None:
        dirs.append(project_root / "boxes")
    if BUNDLED not in dirs:
        dirs.append(BUNDLED)
    return [d for d in dirs if d.is_dir()]


def load_recipe(path: Path) -> Recipe:
    text = path.read_text(encoding="utf-8")
    try:
        data = _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        raise DevfileError(f"{path}: TOML syntax error: {exc}") from exc
    problems: list[Problem] = []
    r = _RECIPE.check(data, (), problems)
    if problems or r is MISSING:
        locs = key_lines(text)
        lines = [f"{path}:{line_of(locs, p.path) or 1}: {p.key}: {p.message}" for p in problems]
        raise DevfileError(f"box recipe {path} is invalid", lines)
    if not r["sources"]:
        raise DevfileError(f"box recipe {path} is invalid", [f"{path}:1: sources: needs at least one source"])
    from devenv.devfile import Step
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

                ui.warn(f"skipping {exc.message}: " + "; ".join(map(str, exc.problems)))
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


def image_name_ok(name: str) -> bool:
    return re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]*", name) is not None


# ---------------------------------------------------------------------------------------------
# The box store: built or added boxes for file-based providers (libvirt, later virtualbox).
# Layout: <data dir>/boxes/NAME/VERSION/PROVIDER/{box.json, disk.qcow2, vmlinuz, initrd.img}


@dataclass(frozen=True)
class StoredBox:
    name: str
    version: str
    provider: str
    folder: Path
    meta: dict

    def file(self, key: str) -> Path | None:
        rel = self.meta.get("files", {}).get(key, {}).get("path")
        return self.folder / rel if rel else None

    def digest(self, key: str = "disk") -> str | None:
        return self.meta.get("files", {}).get(key, {}).get("sha256")


def store_root() -> Path:
    from devenv.state import data_dir

    return data_dir() / "boxes"


def version_key(v: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\-]", v))


def find_stored(name: str, version: str | None, provider: str) -> StoredBox | None:
    base = store_root() / name
    if not base.is_dir():
        return None
    versions = [version] if version else sorted((p.name for p in base.iterdir()), key=version_key, reverse=True)
    for v in versions:
        folder = base / v / provider
        meta_path = folder / "box.json"
        if meta_path.is_file():
            import json

            return StoredBox(name, v, provider, folder, json.loads(meta_path.read_text()))
    return None


def list_stored() -> list[StoredBox]:
    out = []
    root = store_root()
    if not root.is_dir():
        return out
    for name_dir in sorted(root.iterdir()):
        for ver_dir in sorted(name_dir.iterdir()) if name_dir.is_dir() else []:
            for prov_dir in sorted(ver_dir.iterdir()) if ver_dir.is_dir() else []:
                b = find_stored(name_dir.name, ver_dir.name, prov_dir.name)
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


def store_box(name: str, version: str, provider: str, files: dict[str, Path], meta: dict) -> StoredBox:
    """Move finished artifacts into the store: written to a temporary folder, renamed in whole.

    A build that dies half-way never leaves a box that looks complete.
    """
    import json
    import shutil
    import tempfile

    dest = store_root() / name / version / provider
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{provider}-", dir=dest.parent))
        entries = {}
        for key, src in files.items():
            target = tmp / src.name
            if src.parent != tmp:
                shutil.move(str(src), target)
            entries[key] = {"path": target.name, "sha256": sha256_file(target)}
        doc = {"name": name, "version": version, "provider": provider, **meta, "files": entries}
        (tmp / "box.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        if dest.exists():
            old = find_stored(name, version, provider)
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
    found = find_stored(name, version, provider)
    assert found is not None
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
    from devenv.state import data_dir

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


def remove_stored(name: str, version: str | None, provider: str | None = None) -> list[str]:
    import shutil

    chosen = [
        b
        for b in list_stored()
        if b.name == name and (version is None or b.version == version) and (provider in (None, b.provider))
    ]
    for b in chosen:  # all checked before anything goes
        ensure_unused(b, "remove")
    for b in chosen:
        shutil.rmtree(b.folder)
    return [f"{b.name}@{b.version} ({b.provider})" for b in chosen]
