"""Team boxes: `devenv box publish` puts a built box's outputs in an OCI registry, and `up` pulls
a recipe's published version (its `[[sources]] type = "registry"`) before it would build one.

In the repository ``oci://HOST/REPO``, version V of a box is
- ``REPO:V``: the Docker output, an ordinary image pushed and pulled by the engine (which checks
  its digests); the engine's credentials are Docker's own;
- ``REPO:V-libvirt``: the libvirt output (disk, kernel, initrd) as one OCI artifact
  (devenv.boxes.oci: every blob hashed and checked before the box is stored).

A pulled box is stored like a built one (same name, version, store or engine tag) and records
where it came from; Devfile.lock pins what a machine was made from, and a pulled artifact whose
digest differs from the lock is refused by the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devenv.contract import QUIET, Reporter, supports
from devenv.errors import BackendUnavailable, BoxError, NotPublished, Unreachable, UsageError
from devenv.model.recipe import IMAGE_REPO, Recipe, check_name

PUBLISHABLE = ("docker", "libvirt")


@dataclass(frozen=True)
class Published:
    output: str
    name: str
    version: str
    ref: str  # where it is now: oci://HOST/REPO:TAG@sha256:...
    digest: str

    def data(self) -> dict[str, Any]:
        return asdict(self)


def _repo_ref(text: str) -> Any:
    from devenv.boxes import oci

    ref = oci.parse_ref(text)
    if ref.tag or ref.digest:
        raise UsageError(
            f"publish to a repository, not a tag: {text}",
            hint="the box's version is the tag (VERSION for the Docker image, VERSION-libvirt for the disk)",
        )
    return ref


def _tag(version: str, output: str) -> str:
    return version if output == "docker" else f"{version}-{output}"


def publish(
    name: str,
    version: str | None,
    to: str,
    *,
    outputs: Sequence[str] | None = None,
    recipe: Recipe | None = None,
    reporter: Reporter = QUIET,
) -> list[Published]:
    """Push the outputs of box NAME@VERSION that exist here (or only ``outputs``) to ``to``."""

    if not to.startswith("oci://"):
        return publish_catalog(name, version, Path(to.removeprefix("file://")), recipe=recipe, reporter=reporter)
    repo = _repo_ref(to)
    version = _version_of(name, version, recipe)
    wanted = list(outputs or PUBLISHABLE)
    for out in wanted:
        if out not in PUBLISHABLE:
            raise UsageError(f"'{out}' cannot be published (publishable: {', '.join(PUBLISHABLE)})")
    done: list[Published] = []
    for out in wanted:
        if out == "docker":
            result = _publish_docker(name, version, repo, explicit=outputs is not None, reporter=reporter)
        else:
            result = _publish_libvirt(name, version, repo, explicit=outputs is not None, reporter=reporter)
        if result is not None:
            reporter.phase(None, "publish", f"published {name}@{version} ({out}) as {result.ref}", **result.data())
            done.append(result)
    if not done:
        raise UsageError(
            f"box {name}@{version} has no output here to publish",
            hint=f"build it first: `devenv box build {name}`",
        )
    return done


def _version_of(name: str, version: str | None, recipe: Recipe | None) -> str:
    """The version to publish: the one given, else the recipe's, else the newest stored here."""
    from devenv.boxes import store

    check_name(name)
    version = version or (recipe.version if recipe is not None else None)
    if version is None:
        found = [b for b in store.list_stored() if b.name == name]
        if not found:
            raise UsageError(f"no box named {name} here", hint="`devenv box list` shows the boxes; build one first")
        version = max(found, key=lambda b: store.version_key(b.version)).version
    return check_name(version, "box version")


def _docker_driver(reporter: Reporter) -> Any:
    from devenv.plugins import get_driver

    driver = get_driver("docker")
    driver.reporter = reporter
    driver.check_available()
    if not supports(driver, "box_images"):
        raise BoxError("the docker driver cannot push or pull box images")
    return driver


def _publish_docker(name: str, version: str, repo: Any, *, explicit: bool, reporter: Reporter) -> Published | None:
    local = f"{IMAGE_REPO}/{name}:{version}"
    try:
        driver = _docker_driver(reporter)
    except BackendUnavailable:
        if explicit:
            raise
        return None
    if not driver.has_image(local):
        if explicit:
            raise UsageError(
                f"box {name}@{version} has no Docker image here ({local})", hint=f"`devenv box build {name}`"
            )
        return None
    ref = repo.with_tag(_tag(version, "docker"))
    digest = driver.push_box(local, ref.image)
    return Published("docker", name, version, str(ref._replace(digest=digest)), digest)


def _publish_libvirt(name: str, version: str, repo: Any, *, explicit: bool, reporter: Reporter) -> Published | None:
    from devenv.boxes import oci, store

    stored = store.find_stored(name, version, "libvirt")
    if stored is None:
        if explicit:
            raise UsageError(f"box {name}@{version} has no libvirt output here", hint=f"`devenv box build {name}`")
        return None
    files = {}
    for key in sorted(stored.meta.get("files") or {}):
        f = stored.file(key)
        if f is None or not f.is_file():
            raise BoxError(f"box {name}@{version} (libvirt) is incomplete: its {key} is missing")
        files[key] = f
    config = {k: v for k, v in stored.meta.items() if k not in ("source",)}
    ref = repo.with_tag(_tag(version, "libvirt"))
    with reporter.progress(None, f"pushing {name}@{version} (libvirt) to {ref}") as note:
        digest = oci.push_box(ref, files, config, progress=note.files())
    return Published("libvirt", name, version, str(ref._replace(digest=digest)), digest)


# -- pull -----------------------------------------------------------------------------------------
def registry_sources(recipe: Recipe) -> list[str]:
    return [s["ref"] for s in recipe.sources if s.get("type") == "registry"]


def pull(
    recipe: Recipe,
    output: str,
    driver: Any,
    *,
    machine: str | None,
    reporter: Reporter,
    refs: Sequence[str] | None = None,
) -> bool:
    """Pull the recipe's version from its registry sources, in order; True when one gave it.

    A registry that does not answer or lacks the version is said in one line and the next source
    is tried (then the build); an artifact that fails its checks is an error, never skipped."""
    from devenv.boxes import oci

    for text in registry_sources(recipe) if refs is None else refs:
        ref = oci.parse_ref(text).with_tag(_tag(recipe.version, output))
        try:
            if output == "docker":
                _pull_docker(recipe, ref, driver, machine)
            else:
                _pull_libvirt(recipe, ref, machine, reporter)
        except (BackendUnavailable, NotPublished, Unreachable) as exc:
            # Not there, or not reachable: said once, and the next source (a build) goes on.
            reporter.warn(f"box {recipe.label}: {exc.message.splitlines()[0]}; building it instead", machine)
            continue
        reporter.info(machine, f"box {recipe.label} ({output}) pulled from {ref}")
        return True
    return False


def _pull_docker(recipe: Recipe, ref: Any, driver: Any, machine: str | None) -> None:
    if not supports(driver, "box_images"):
        raise BoxError(f"the {driver.name} driver cannot pull box images")
    driver.pull_box(ref.image, recipe.docker_tag, machine)
    found = [b for b in driver.list_boxes() if b.get("tag") == recipe.docker_tag]
    if not found or found[0].get("name") != recipe.name or found[0].get("version") != recipe.version:
        driver.remove_image(recipe.docker_tag)
        raise BoxError(
            f"{ref} is not box {recipe.label}: its labels name "
            f"{(found[0].get('name'), found[0].get('version')) if found else 'no devenv box'}; it was not kept",
            hint="the registry's tag holds another image: publish the box again",
        )


def _pull_libvirt(recipe: Recipe, ref: Any, machine: str | None, reporter: Reporter) -> None:
    from devenv.boxes import oci

    with reporter.progress(machine, f"pulling box {recipe.label} (libvirt) from {ref}") as note:
        # The box is this recipe's now (its registry source named it): the origin is the recipe's.
        oci.fetch_box(ref, name=recipe.name, version=recipe.version, origin=recipe.origin, progress=note.files())


# -- a static catalog ------------------------------------------------------------------------------
def publish_catalog(
    name: str, version: str | None, folder: Path, *, recipe: Recipe | None = None, reporter: Reporter = QUIET
) -> list[Published]:
    """Write box NAME@VERSION's VM outputs as Vagrant .box files into ``folder`` and list them in
    its Vagrant catalog ``folder/NAME.json`` (updated in place: older versions stay listed), with
    relative URLs, so that any web server or bucket can serve the folder as it is."""
    import json

    from devenv.boxes import store, vagrantbox
    from devenv.paths import write_new_file

    version = _version_of(name, version, recipe)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", hint="publish to a folder (it is made when missing)")
    folder.mkdir(parents=True, exist_ok=True)
    catalog = folder / f"{name}.json"
    doc: dict[str, Any] = {"name": name, "description": "", "versions": []}
    if catalog.exists():
        try:
            doc = json.loads(catalog.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BoxError(
                f"{catalog} is not a catalog devenv can update ({exc})", hint="move it away or publish elsewhere"
            ) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("versions"), list):
            raise BoxError(f"{catalog} is not a Vagrant catalog (no versions list)", hint="move it away")
    providers = []
    done: list[Published] = []
    writers = {"libvirt": vagrantbox.write_libvirt_box, "virtualbox": vagrantbox.write_virtualbox_box}
    for provider, write in writers.items():
        stored = store.find_stored(name, version, provider)
        if stored is None:
            continue
        rel = f"{name}/{version}/{provider}.box"
        out = folder / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with reporter.progress(None, f"writing {rel} into {folder}"):
            write(stored, out)
        sha = store.sha256_file(out)
        providers.append({"name": provider, "url": rel, "checksum_type": "sha256", "checksum": sha})
        done.append(Published(provider, name, version, str(out), f"sha256:{sha}"))
    if not providers:
        raise UsageError(
            f"box {name}@{version} has no VM output here to put in a catalog (Docker images go to a registry: "
            "--to oci://HOST/REPO)",
            hint=f"build it first: `devenv box build {name} --output libvirt`",
        )
    versions = [v for v in doc["versions"] if not (isinstance(v, dict) and str(v.get("version")) == version)]
    versions.append({"version": version, "providers": providers})
    doc["versions"] = sorted(versions, key=lambda v: store.version_key(str(v.get("version", ""))))
    if recipe is not None and not doc.get("description"):
        doc["description"] = recipe.description
    write_new_file(catalog, json.dumps(doc, indent=2) + "\n", force=True)
    for result in done:
        reporter.phase(None, "publish", f"published {name}@{version} ({result.output}) in {catalog}", **result.data())
    return done


def catalog_sources(recipe: Recipe) -> list[str]:
    return [s["url"] for s in recipe.sources if s.get("type") == "catalog"]


def pull_catalog(recipe: Recipe, *, machine: str | None, reporter: Reporter) -> bool:
    """The recipe's version from its catalog sources (libvirt .box files, checksums required)."""
    from devenv.boxes import vagrantbox

    for url in catalog_sources(recipe):
        ref = url if "://" in url else str((recipe.root / url).resolve())
        try:
            with reporter.progress(machine, f"pulling box {recipe.label} (libvirt) from the catalog {url}"):
                vagrantbox.add_from_catalog(ref, version=recipe.version, name=recipe.name, reporter=reporter)
        except (BackendUnavailable, NotPublished, Unreachable) as exc:
            reporter.warn(f"box {recipe.label}: {exc.message.splitlines()[0]}; building it instead", machine)
            continue
        reporter.info(machine, f"box {recipe.label} (libvirt) pulled from the catalog {url}")
        return True
    return False
