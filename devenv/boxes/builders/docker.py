"""The docker output: an engine image devenv-box/NAME:VERSION.

The base comes from the recipe's first source that works: an engine image (pulled only when
allowed), or a root file system (debootstrap or the host's static busybox, devenv.boxes.rootfs)
imported as a temporary image. A build machine made from the base runs the baked steps and is
committed (Package) with devenv's labels; the temporary base and the build machine always go.

The engine is reached only through the contract: the BoxSources role for base images, the
lifecycle for the build machine, Package for the commit.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devenv.boxes.builders import Built, bake, build_target, built
from devenv.contract import QUIET, BoxArtifact, Reporter, supports
from devenv.errors import BoxError
from devenv.model.recipe import IMAGE_REPO, Recipe


def wanted(recipe: Recipe) -> bool:
    """Whether `up` on a docker machine builds this recipe when it is missing: any recipe does."""
    return True


def present(recipe: Recipe, driver: Any) -> bool:
    # An engine this builder cannot build on is left to prepare_box (which says what is missing).
    return not supports(driver, "box_sources") or driver.has_image(recipe.docker_tag)


def output(recipe: Recipe, *, pull: bool = False, force: bool = False, reporter: Reporter = QUIET) -> Built:
    """`box build --output docker`: the image, unless it exists (``force`` rebuilds it)."""
    from devenv.plugins import get_driver

    driver = get_driver("docker")
    driver.reporter = reporter
    driver.check_available()
    existing = []
    if supports(driver, "box_images"):
        existing = [b for b in driver.list_boxes() if b["tag"] == recipe.docker_tag]
    if existing and not force:
        found = Built("docker", recipe.name, recipe.version, recipe.docker_tag, existing[0]["digest"], existed=True)
        return built(reporter, found, f"box {recipe.label} (docker) exists ({found.digest[:19]}); --force rebuilds it")
    record = build(recipe, driver, pull=pull, reporter=reporter)
    made = Built("docker", recipe.name, recipe.version, record["ref"], record["digest"])
    return built(reporter, made, f"built {recipe.docker_tag} ({made.digest[:19]})")


def build(
    recipe: Recipe, driver: Any, *, pull: bool = False, machine: str | None = None, reporter: Reporter = QUIET
) -> dict:
    """Make the recipe's image: base from the first source that works, then the baked steps.

    Returns Package's record (provider, ref, digest). The image is committed only when every
    step succeeded; the build machine and the temporary base are removed whatever happens.
    """
    if not (supports(driver, "box_sources") and supports(driver, "package")):
        raise BoxError(f"the {driver.name} driver cannot build image boxes (it has no box_sources and package roles)")
    failures: list[str] = []
    base: str | None = None
    prepare: list[str] | None = None
    temp_base = f"{IMAGE_REPO}/{recipe.name}:{recipe.version}-base"
    for src in recipe.sources:
        kind = src["type"]
        try:
            if kind == "image":
                if not driver.has_image(src["image"]):
                    if not pull:
                        failures.append(f"image {src['image']}: not on the engine (pull with --pull)")
                        continue
                    driver.pull_image(src["image"], machine)
                base = src["image"]
                # The recipe's packages on the engine's image too: one recipe, one package set.
                prepare = apt_install(recipe.packages) if recipe.packages else None
            elif kind in ("cloud-image", "box"):
                failures.append(f"{kind}: a disk image source makes VM outputs only")
                continue
            elif kind == "registry":
                continue  # a published version: pulled by `up` before it builds, never a base
            else:
                _base_from_rootfs(driver, recipe, src, temp_base, machine=machine, reporter=reporter)
                base = temp_base
            break
        except BoxError as exc:
            failures.append(f"{kind}: {exc.message}")
            if exc.hint:
                failures.append(f"  ({exc.hint})")
    if base is None:
        raise BoxError(
            f"box {recipe.name}@{recipe.version} could not be built from any of its sources:\n  "
            + "\n  ".join(failures),
            hint=f"fix the first source in {recipe.path} or make the image yourself and tag it {recipe.docker_tag}",
        )
    try:
        with tempfile.TemporaryDirectory(prefix="devenv-build-") as tmp:
            return bake(
                driver,
                recipe,
                BoxArtifact(name=base, version=None, ref=base),
                target=build_target(recipe, driver.name, Path(tmp)),
                label=machine or f"box {recipe.name}",
                reporter=reporter,
                prepare=prepare,
                record={"origin": recipe.origin, **({"init": recipe.init} if recipe.init else {})},
            )
    finally:
        if base == temp_base:
            driver.remove_image(temp_base)


def apt_install(packages: Sequence[str]) -> list[str]:
    """The command that installs ``packages`` (checked names: the recipe's schema) in a build
    machine, leaving no package lists behind (they are the mirror's, and stale tomorrow)."""
    names = " ".join(packages)
    script = (
        "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -q; "
        f"apt-get install -y -q --no-install-recommends {names}; apt-get clean; rm -rf /var/lib/apt/lists/*"
    )
    return ["/bin/sh", "-c", script]


def _base_from_rootfs(
    driver: Any, recipe: Recipe, src: dict, tag: str, *, machine: str | None, reporter: Reporter
) -> None:
    """A root file system made on this host (debootstrap, busybox), imported as the image ``tag``."""
    from devenv.boxes import rootfs

    with tempfile.TemporaryDirectory(prefix="devenv-box-") as tmp:
        root = Path(tmp) / "rootfs"
        root.mkdir()
        with reporter.progress(machine, f"building box {recipe.name}@{recipe.version} ({src['type']})", phase="build"):
            if src["type"] == "busybox":
                rootfs.build_busybox_rootfs(root)
            else:
                rootfs.build_debootstrap_rootfs(
                    root,
                    suite=src["suite"],
                    variant=src.get("variant", "minbase"),
                    include=recipe.packages_for(src, vm=False),
                    mirror=src.get("mirror"),
                    on_output=lambda line: reporter.output(machine, line) if reporter.debug_enabled else None,
                )
            tar = Path(tmp) / "rootfs.tar"
            rootfs.make_tar(root, tar)
            driver.import_rootfs(tar, tag)
