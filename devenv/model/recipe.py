"""Box recipes (boxes/NAME.toml) and box references: the model only.

A recipe names a box, its version, the ordered sources it can be made from, the outputs it makes
and the provision steps baked into it. Building one is the work of devenv.boxes.builders; storing the
result is devenv.boxes.store's. Recipes are looked up in the project's own boxes/ folder first,
then in the boxes bundled with devenv.

This module imports no driver, builder, box store or core module: the Devfile model uses it.
"""

from __future__ import annotations

import re
import tomllib as _toml
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devenv.errors import BoxError, DevfileError
from devenv.model.refs import REGISTRY_REPO  # a registry source's ref: an OCI repository, no tag
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
from devenv.model.steps import MAX_DEPTH, MAX_DEVFILE_BYTES, MAX_VALUES, Step, check_step, shape_problem
from devenv.model.tomlpos import key_lines, line_of

# The recipes devenv ships are package data (an installed wheel has no checkout): the steps they
# bake start at devenv/data (devenv/data/provisioners/...). A checkout's top-level boxes/ and
# provisioners/ are links to these folders, so the repository's own Devfiles use the same files.
BUNDLED = Path(__file__).resolve().parents[1] / "data" / "boxes"

# What a built box says about itself (Docker: image labels; the box store: box.json keys).
IMAGE_REPO = "devenv-box"
LABEL_BOX = "devenv.box"
LABEL_VERSION = "devenv.box.version"
LABEL_BAKED = "devenv.box.baked"  # comma-separated fingerprints of the baked provision steps
LABEL_KEEPALIVE = "devenv.keepalive"  # the image holds devenv's keep-alive with this digest
# Which recipe file built a box: sha256 of its real path. Boxes live in one store (and one engine)
# shared by every project on the host, keyed by NAME/VERSION; a repository's boxes/NAME.toml could
# otherwise build an artifact under devenv's own name that every other project would then boot.
LABEL_ORIGIN = "devenv.box.origin"

SOURCE_TYPES = ("registry", "catalog", "image", "debootstrap", "busybox", "cloud-image", "box")

OUTPUTS = ("docker", "libvirt", "vagrant")

# Names and versions of boxes become folders of the box store: one rule for every way they enter
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


def _shown(text: str, limit: int = 120) -> str:
    """Untrusted text as it may appear in a message: as is when printable, else quoted."""
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return cut if cut.isprintable() and cut.strip() == cut and cut else repr(cut)


def check_name(value: object, what: str = "box name") -> str:
    """`value` if valid_name(), else a BoxError that names the rule."""
    if valid_name(value):
        return value  # type: ignore[return-value]
    text = value if isinstance(value, str) else repr(value)
    raise BoxError(
        f"invalid {what} {_shown(text)}: it must start with a letter or digit and use only letters, digits, "
        f"'.', '_' and '-' (at most {MAX_NAME_LEN} characters)",
        hint="box names and versions become folders of the box store: pick a plain name such as debian-12 or 2026.11.1",
    )


@dataclass(frozen=True)
class BoxRef:
    """What a Devfile's `box` names."""

    kind: str  # "recipe" | "image" | "file" | "registry" (oci://HOST/REPO:TAG or @sha256:...)
    name: str
    version: str | None = None

    def __str__(self) -> str:
        if self.kind == "image":
            return f"docker:{self.name}"
        if self.kind == "registry":
            return self.name
        return f"{self.name}@{self.version}" if self.version else self.name


def parse_ref(text: str) -> BoxRef:
    if text.startswith("oci://"):
        return BoxRef("registry", text)
    if text.startswith("docker:"):
        return BoxRef("image", text[len("docker:") :])
    if text.endswith(".box") or "://" in text:
        return BoxRef("file", text)
    name, _, version = text.partition("@")
    return BoxRef("recipe", name, version or None)


def _check_source(src: dict, path: tuple, problems: list) -> None:
    t = src.get("type")
    need = {
        "registry": ("ref",),
        "catalog": ("url",),
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


# Debian policy's package names (lowercase, digits, + - .), optionally :ARCH; never an option.
DEB_PACKAGE = r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?"
DEB_PACKAGE_HELP = "a Debian package name (lowercase letters, digits, + - .)"

_SOURCE = Table(
    {
        "type": Field(Str(choices=SOURCE_TYPES), required=True),
        "image": Field(Str(description="Engine image used when present (pulled only with --pull)")),
        "ref": Field(
            Str(
                pattern=REGISTRY_REPO,
                pattern_help="an OCI repository: oci://HOST[:PORT]/REPO (no tag: the recipe's version is the tag)",
                description="registry: where `devenv box publish` put the recipe's versions; pulled before building",
            )
        ),
        "suite": Field(Str(description="Debian suite for debootstrap, e.g. bookworm")),
        "variant": Field(Str(choices=("minbase", "buildd", "fakechroot")), default="minbase"),
        "include": Field(ListOf(Str(pattern=DEB_PACKAGE, pattern_help=DEB_PACKAGE_HELP)), default=list),
        "vm_include": Field(
            ListOf(
                Str(
                    pattern=DEB_PACKAGE, pattern_help=DEB_PACKAGE_HELP, description="Extra packages for VM outputs only"
                )
            ),
            default=list,
        ),
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
    """A Devfile provision list, checked by the Devfile's own step rules (model/steps.py)."""

    def __init__(self) -> None:
        from devenv.model.schema import Custom

        super().__init__(Custom(check_step, {"type": "object"}), description="Provision steps baked into the box")
        self.keep_missing = True


def _check_recipe_names(r: dict, path: tuple, problems: list) -> None:
    # The pattern is checked by the schema; the length (a folder name of the store) here.
    for key in ("name", "version"):
        value = r.get(key)
        if isinstance(value, str) and len(value) > MAX_NAME_LEN:
            problems.append(Problem(path + (key,), f"is longer than {MAX_NAME_LEN} characters"))


_RECIPE = Table(
    {
        "name": Field(Str(pattern=NAME_PATTERN, pattern_help="letters, digits, . _ -"), required=True),
        "version": Field(Str(pattern=NAME_PATTERN, pattern_help="letters, digits, . _ -"), required=True),
        "description": Field(Str(), default=""),
        "sources": Field(ListOf(_SOURCE), required=True),
        "outputs": Field(
            ListOf(
                Str(
                    choices=OUTPUTS,
                    description="docker image, libvirt qcow2 (+kernel/initrd), vagrant .box (libvirt+virtualbox)",
                )
            ),
            default=lambda: ["docker"],
        ),
        # One package set for every output (Debian package names): a debootstrap source installs
        # them, an engine image source gets them installed before the steps. vm_packages are for VM
        # outputs only (kernel, SSH server, guest agent): what a container has no use for.
        "packages": Field(ListOf(Str(pattern=DEB_PACKAGE, pattern_help=DEB_PACKAGE_HELP)), default=list),
        "vm_packages": Field(ListOf(Str(pattern=DEB_PACKAGE, pattern_help=DEB_PACKAGE_HELP)), default=list),
        # What a container machine made from the box runs as PID 1 unless the machine says
        # otherwise ([machines.NAME.docker] init): "systemd" for a box that behaves like a VM.
        "init": Field(Str(choices=("systemd",), description="PID 1 of container machines made from the box")),
        # The same step syntax as a Devfile's provision list; paths start at the folder above boxes/.
        "provision": Field(_StepsNode(), default=list),
    },
    check_fn=_check_recipe_names,
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
    provision: tuple = ()  # devenv.model.devfile.Step, baked in order
    packages: tuple[str, ...] = ()  # on every output
    vm_packages: tuple[str, ...] = ()  # on VM outputs only
    init: str | None = None  # PID 1 of container machines ("systemd"), None: the engine's default

    def packages_for(self, src: dict, *, vm: bool) -> list[str]:
        """The packages an output built from ``src`` installs: the recipe's, the source's own
        `include` (older recipes), and for VM outputs the VM-only ones."""
        names = [*self.packages, *src.get("include", [])]
        if vm:
            names += [*self.vm_packages, *src.get("vm_include", [])]
        return list(dict.fromkeys(names))

    @property
    def origin(self) -> str:
        """The recipe's identity in the shared store (see LABEL_ORIGIN).

        A project's own recipe is identified by its real path: another folder's file of the same
        name makes another box. A recipe devenv ships is identified by its content (and the
        content of the files its steps read): every install of the same devenv (a checkout, a
        wheel in a venv, another user's) builds the same box, so they share it."""
        import hashlib
        import os

        real = os.path.realpath(self.path)
        registry = next((s["ref"] for s in self.sources if s.get("type") == "registry"), None)
        if registry and os.path.dirname(real) != str(BUNDLED):
            # Published to a registry: the box is the one there, whichever laptop's checkout (at
            # whatever path) pulls or builds it. The same repository is the same box.
            return "registry-" + hashlib.sha256(f"registry\0{registry}".encode()).hexdigest()[:24]
        if os.path.dirname(real) != str(BUNDLED):
            return hashlib.sha256(os.fsencode(real)).hexdigest()[:32]
        from devenv.plugins import get_provisioner

        h = hashlib.sha256(b"bundled\0" + Path(real).read_bytes())
        for step in self.provision:
            for f in sorted(get_provisioner(step.type).files(step.config, self.root)):
                h.update(b"\0" + os.fsencode(os.path.relpath(f, self.root)) + b"\0")
                if f.is_file():
                    h.update(f.read_bytes())
        return "bundled-" + h.hexdigest()[:24]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

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


def _invalid(path: Path, text: str, problems: list[Problem]) -> DevfileError:
    locs = key_lines(text)
    lines = [f"{path}:{line_of(locs, p.path) or 1}: {p.key}: {p.message}" for p in problems]
    return DevfileError(f"box recipe {path} is invalid", lines)


def load_recipe(path: Path) -> Recipe:
    # A project's boxes/ comes with the repository: read it as the Devfile is read (a regular
    # UTF-8 file of bounded size, bounded nesting), never as trusted text. Its steps follow the
    # Devfile's step rules: each step's provisioner checks the host files it reads, as for a Devfile.
    from devenv.model.tomlpos import nesting_depth_exceeded
    from devenv.paths import read_regular
    from devenv.plugins import get_provisioner

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
        raise _invalid(path, text, problems)
    if not r["sources"]:
        raise DevfileError(f"box recipe {path} is invalid", [f"{path}:1: sources: needs at least one source"])
    root = path.parent.parent
    steps = []
    for i, cfg in enumerate(r["provision"]):
        problems += get_provisioner(cfg["type"]).check(cfg, root, ("provision", i))
        steps.append(Step(index=i, type=cfg["type"], config=cfg, run=cfg.get("run", "once"), name=cfg.get("name")))
    if problems:
        raise _invalid(path, text, problems)
    return Recipe(
        name=r["name"],
        version=r["version"],
        description=r["description"],
        sources=tuple(r["sources"]),
        outputs=tuple(r["outputs"]),
        path=path,
        root=root,
        provision=tuple(steps),
        packages=tuple(r["packages"]),
        vm_packages=tuple(r["vm_packages"]),
        init=r.get("init"),
    )


def list_recipes(project_root: Path | None, *, warn: Callable[[str], None] | None = None) -> dict[str, Recipe]:
    """Every recipe by name (the project's first); an invalid one is skipped and told to ``warn``."""
    found: dict[str, Recipe] = {}
    for d in recipe_dirs(project_root):
        for p in sorted(d.glob("*.toml")):
            try:
                r = load_recipe(p)
            except DevfileError as exc:
                if warn is not None:
                    warn(f"skipping {exc.message}" + "".join(f"; {p}" for p in exc.problems))
                continue
            found.setdefault(r.name, r)
    return found


def find_recipe(ref: BoxRef, project_root: Path | None, *, warn: Callable[[str], None] | None = None) -> Recipe:
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
    known = list(list_recipes(project_root, warn=warn))
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
