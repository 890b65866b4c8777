"""Box building, one subsystem: `devenv box build` and `devenv up` (a box that is missing) use it.

    build_box(name, root, outputs=...)   the use case: a recipe's outputs, each unless it exists
    ensure_built(box, driver, target)    `up`: build the machine's box from its recipe when the
                                         engine or the store lacks it (prepare_box only looks up)
    bake(driver, recipe, box, ...)       every output's last mile: a build machine runs the
                                         recipe's steps, Package stores it, the machine goes

One builder per output: docker.py (an engine image from an image, a debootstrap or busybox root
file system), libvirt.py (a qcow2 disk + kernel + initrd), vagrant.py (.box files from the libvirt
box). A builder uses a driver only through devenv.contract: create/start/transport/stop/destroy
for the build machine (a BuildTarget: it carries none of a project's labels), the Package role to
store it, the BoxSources role for an engine's base images. Baking happens here and nowhere else.

Nothing here prints: progress and results are events on the Reporter given (results are "build"
phase events), and build_box returns what it built as data.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devenv.contract import QUIET, BoxArtifact, BuildTarget, Reporter, Target, supports
from devenv.errors import BoxError, DevenvError, ProvisionError, UsageError
from devenv.model.recipe import Recipe, find_recipe, parse_ref

__all__ = [
    "Built",
    "bake",
    "bake_steps",
    "baked_fingerprints",
    "build_box",
    "build_target",
    "ensure_built",
    "host_notice",
]


@dataclass(frozen=True)
class Built:
    """One output of a recipe after `box build`: made now, or found (and kept) as it was."""

    output: str  # "docker", "libvirt", "vagrant-libvirt", "vagrant-virtualbox"
    name: str
    version: str
    ref: str  # image tag, store folder or .box file
    digest: str
    existed: bool = False

    def data(self) -> dict[str, Any]:
        return asdict(self)


def built(reporter: Reporter, result: Built, text: str) -> Built:
    """Report one output's result (a "build" phase event carrying the record) and return it."""
    reporter.phase(None, "build", text, **result.data())
    return result


# -- the use case --------------------------------------------------------------------------------
def host_notice(recipe: Recipe, project_root: Path | None) -> str | None:
    """What baking this recipe runs on, or reads from, this host (an ansible step, a host file),
    as the once-per-project notice; None when there is nothing (new) to say."""
    from devenv.model.devfile import recipe_reach
    from devenv.state import reach_notice

    return reach_notice(project_root or Path.cwd(), recipe_reach(recipe), f"the box recipe {recipe.path}")


def build_box(
    name: str,
    project_root: Path | None,
    *,
    outputs: Sequence[str] | None = None,
    pull: bool = False,
    force: bool = False,
    reporter: Reporter = QUIET,
) -> list[Built]:
    """`devenv box build NAME`: the recipe's outputs (or only ``outputs``), each unless it exists.

    ``pull`` lets a docker build pull its base image; ``force`` rebuilds what exists. The notice
    of what the recipe reaches on this host is reported before anything is checked or built."""
    from devenv.boxes.builders import docker, libvirt, vagrant

    recipe = find_recipe(parse_ref(name), project_root, warn=reporter.warn)
    notice = host_notice(recipe, project_root)
    if notice:
        reporter.warn(notice)
    wanted = list(outputs or recipe.outputs)
    for out in wanted:
        if out not in recipe.outputs:
            raise UsageError(f"box {recipe.name} has no '{out}' output (it has: {', '.join(recipe.outputs)})")
    results: list[Built] = []
    if "docker" in wanted:
        results.append(docker.output(recipe, pull=pull, force=force, reporter=reporter))
    if "libvirt" in wanted:
        results.append(libvirt.output(recipe, force=force, reporter=reporter))
    if "vagrant" in wanted:
        results += vagrant.output(recipe, force=force, reporter=reporter)
    return results


def ensure_built(
    box: str,
    driver: Any,
    target: Target,
    reporter: Reporter = QUIET,
    *,
    frozen: bool = False,
    box_registry: str | None = None,
) -> None:
    """Get the box a machine names when ``driver``'s engine or store lacks it: pulled from the
    recipe's registry sources when it has any, else (or when they cannot give it) built.

    Called by the core before ``driver.prepare_box``, which then only looks the box up. A box
    with no recipe here (added, packaged, an engine image), or a driver no builder makes boxes
    for, is left to ``prepare_box`` (which says what is missing). ``frozen`` (`up --frozen`):
    a recipe with registry sources must come from one of them, never from a local build.
    ``box_registry`` (the Devfile's `[project] box_registry`): the team's registry, where every
    recipe box is REGISTRY/NAME, tried after the recipe's own registry sources."""
    ref = parse_ref(box)
    if ref.kind != "recipe":
        return
    builder = _builder(getattr(driver, "name", ""))
    if builder is None:
        return
    try:
        recipe = find_recipe(ref, target.project_root)  # quietly: prepare_box reports what is wrong
    except BoxError:
        return  # no recipe for it (or for that version): a box from elsewhere, looked up as it is
    if not builder.wanted(recipe) or builder.present(recipe, driver):
        return
    from devenv.boxes.builders import registry

    refs = registry.registry_sources(recipe) + ([f"{box_registry}/{recipe.name}"] if box_registry else [])
    published = refs or (driver.name == "libvirt" and registry.catalog_sources(recipe))
    if published:
        if registry.pull(recipe, driver.name, driver, machine=target.name, reporter=reporter, refs=refs):
            return
        if driver.name == "libvirt" and registry.pull_catalog(recipe, machine=target.name, reporter=reporter):
            return
        if frozen:
            raise BoxError(
                f"--frozen: box {recipe.label} ({driver.name}) could not be pulled from its registry, and a "
                "local build would not be the published artifact",
                hint="make the registry reachable (or publish the version), or run `devenv up` without --frozen",
            )
    builder.build(recipe, driver, machine=target.name, reporter=reporter)


def _builder(driver_name: str) -> Any | None:
    """The builder module that makes boxes for the driver of this name (None: no builder)."""
    if driver_name == "docker":
        from devenv.boxes.builders import docker

        return docker
    if driver_name == "libvirt":
        from devenv.boxes.builders import libvirt

        return libvirt
    return None


# -- baking: the part every output shares --------------------------------------------------------
def baked_fingerprints(recipe: Recipe) -> list[str]:
    """The fingerprints of the recipe's steps: what a machine on the box may skip."""
    from devenv.provisioners import fingerprint

    return [fingerprint(step, recipe.root) for step in recipe.provision]


def _hostname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:63] or "box"


def build_target(
    recipe: Recipe, driver_name: str, root: Path, *, cpus: float | None = None, memory: int | None = None
) -> BuildTarget:
    """The build machine of one build: unique (a random part), labelled with nothing.

    ``root`` is a folder of the build's own: a driver may keep the machine's files (keys) there."""
    from devenv.model.devfile import Machine

    m = Machine(
        name="bake",
        driver=driver_name,
        box=recipe.name,
        cpus=cpus,
        memory=memory,
        hostname=_hostname(recipe.name),
        env={},
    )
    project_id = f"build-{_hostname(recipe.name)[:40]}-{uuid.uuid4().hex[:8]}"
    return BuildTarget(project_id, root, m)


def bake_steps(recipe: Recipe, transport: Any, label: str, reporter: Reporter = QUIET, cache: Any = None) -> None:
    """Run the recipe's steps in order through ``transport``; a failure means nothing is stored.

    ``cache``: the command's CacheUse when apt in the build machine goes through the package
    cache; a step that fails fetching through it runs once more as the cache says (see pkgcache)."""
    from devenv.pkgcache.use import FetchSigns
    from devenv.provisioners import run_step

    for step in recipe.provision:
        reporter.phase(label, "bake", f"bake {step.label}", step=step.index)
        attempt = 0
        while True:
            signs = FetchSigns(reporter)
            try:
                run_step(step, label, recipe.root, transport, reporter=signs.reporter)
            except ProvisionError as exc:
                again = cache.retry_plan(label, step.label, signs, attempt) if cache is not None else None
                if again is not None:
                    attempt += 1
                    if again == "direct":
                        cache.unconfigure(transport)
                        cache = None
                    continue
                raise BoxError(
                    f"box {recipe.name}@{recipe.version}: baked step {step.label} failed; nothing was stored\n"
                    + exc.message,
                    hint=f"fix the step in {recipe.path} and build again",
                ) from exc
            break


def bake(
    driver: Any,
    recipe: Recipe,
    box: BoxArtifact,
    *,
    target: BuildTarget,
    label: str,
    reporter: Reporter = QUIET,
    boot: str | None = None,
    prepare: Sequence[str] | None = None,
    finish: Sequence[str] | None = None,
    record: Mapping[str, Any] | None = None,
) -> dict:
    """Make a build machine from ``box``, run the recipe's steps in it and store it as the
    recipe's box with the driver's Package role; returns what ``package`` returns.

    ``boot``: the progress text of creating and starting the machine (slow ones: VMs).
    ``prepare``: a command run before the steps (installing the recipe's packages on an image base).
    ``finish``: a command run after the steps (e.g. scrubbing the build machine's identity).
    ``record``: what the box records besides its steps (see contract.Package).
    The build machine is destroyed whatever happens, so only a machine whose every step succeeded
    is ever stored."""
    if not supports(driver, "package"):
        raise BoxError(f"the {driver.name} driver cannot store a build machine as a box (it has no package role)")
    from devenv.pkgcache import guest
    from devenv.pkgcache.use import CacheUse

    cache = CacheUse(reporter)
    handle = None
    try:
        if boot:
            with reporter.progress(label, boot, phase="build"):
                handle = driver.create(target, box)
                driver.start(handle)
        else:
            handle = driver.create(target, box)
            driver.start(handle)
        transport = driver.transport(handle)
        # The build goes through the host's package cache too; the box never keeps the setting.
        cached = cache.configure(label, driver, handle, transport)
        if prepare:
            for attempt in (1, 2):
                lines: list[str] = []
                with reporter.progress(
                    label, f"installing the recipe's packages ({len(recipe.packages)})", phase="build"
                ):
                    code = transport.run(list(prepare), on_output=lines.append)
                if code != 0 and cached and attempt == 1 and any(guest.FETCH_FAILED.search(ln) for ln in lines):
                    reporter.warn(
                        f"{label}: fetching the recipe's packages through the package cache failed; again without it"
                    )
                    cache.unconfigure(transport)
                    cached = False
                    continue
                break
            if code != 0:
                raise BoxError(
                    f"box {recipe.label}: installing its packages failed (exit {code}); nothing was stored\n"
                    + "\n".join(lines[-15:]),
                    hint=f"check the package names in {recipe.path} and the Debian mirror",
                )
        bake_steps(recipe, transport, label, reporter, cache if cached else None)
        # Always, cached or not: a production image must not point at a developer's laptop.
        if transport.run(guest.remove_argv(), user="root") != 0:
            raise BoxError(f"box {recipe.label}: removing the package cache setting failed; nothing was stored")
        if finish:
            transport.run(list(finish))
        driver.stop(handle)
        return driver.package(
            handle, target, recipe.name, recipe.version, baked_fingerprints(recipe), record=dict(record or {})
        )
    finally:
        if handle is None:
            try:  # a create that failed half-way: the machine may exist all the same
                handle = driver.find(target)
            except DevenvError:
                handle = None
        if handle is not None:
            driver.destroy(handle)
        cache.close()
