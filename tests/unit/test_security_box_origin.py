"""One store and one engine serve every project on the host: a repository's boxes/NAME.toml must
not put an artifact under a name another project's recipe uses and have that project boot it.

A hostile checkout ships boxes/debian-12.toml (devenv's own box name) and builds it: at a higher
version (the store's "newest") or at the very version devenv's bundled recipe makes. A victim
project that means devenv's debian-12 must never get that artifact.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devenv.boxes import store as boxes
from devenv.boxes.builders import ensure_built
from devenv.contract import Target
from devenv.errors import BoxError
from devenv.model import devfile
from devenv.model import recipe as recipes
from tests.support import require_module

BUNDLED_VERSION = recipes.load_recipe(recipes.BUNDLED / "debian-12.toml").version


def _project(root: Path, text: str) -> Target:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Devfile").write_text(text)
    df = devfile.load(root / "Devfile")
    name = next(iter(df.machines))
    return Target(df.project_id, df.root, df.machines[name])


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "home"))
    return tmp_path


def _evil_recipe(root: Path, version: str) -> recipes.Recipe:
    (root / "boxes").mkdir(parents=True, exist_ok=True)
    p = root / "boxes" / "debian-12.toml"
    p.write_text(
        f'name = "debian-12"\nversion = "{version}"\noutputs = ["docker", "libvirt"]\n[[sources]]\ntype = "busybox"\n'
    )
    return recipes.load_recipe(p)


def _store_libvirt(tmp: Path, recipe: recipes.Recipe) -> boxes.StoredBox:
    work = Path(boxes.ensure_store_root()) / f".w-{recipe.version}"
    work.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "disk.qcow2"), "16M"], check=True)
    (work / "vmlinuz").write_bytes(b"kernel")
    files = {"disk": work / "disk.qcow2", "kernel": work / "vmlinuz"}
    meta = {"built_from": str(recipe.path), "origin": recipe.origin, "cmdline": ""}
    return boxes.store_box(recipe.name, recipe.version, "libvirt", files, meta, work=work)


VICTIM = '[machines.app]\ndriver = "libvirt"\nbox = "debian-12"\n'


def test_a_higher_version_from_another_projects_recipe_is_not_the_newest_for_the_victim(store, monkeypatch):
    require_module("libvirt", "pip install 'devenv[libvirt]'")
    from devenv.drivers.libvirt.driver import LibvirtDriver

    evil = _evil_recipe(store / "evil", "9999")
    _store_libvirt(store, evil)
    victim = _project(store / "victim", VICTIM)
    built = []
    monkeypatch.setattr(
        "devenv.boxes.builders.libvirt.build_libvirt_box", lambda recipe, **kw: built.append(recipe) or 1 / 0
    )
    with pytest.raises(ZeroDivisionError):  # it builds devenv's own recipe instead of taking 9999
        ensure_built("debian-12", LibvirtDriver(), victim)
    assert [r.version for r in built] == [BUNDLED_VERSION]
    assert built[0].path.resolve() == (recipes.BUNDLED / "debian-12.toml").resolve()
    # Nor does the driver alone take it: prepare_box only looks up, and the recipe's version is not built.
    with pytest.raises(BoxError, match="not built"):
        LibvirtDriver().prepare_box(victim, "debian-12")


def test_the_same_version_built_by_another_projects_recipe_is_refused(store):
    require_module("libvirt", "pip install 'devenv[libvirt]'")
    from devenv.drivers.libvirt.driver import LibvirtDriver

    evil = _evil_recipe(store / "evil", BUNDLED_VERSION)
    _store_libvirt(store, evil)
    victim = _project(store / "victim", VICTIM)
    with pytest.raises(BoxError, match="built from another recipe") as exc:
        LibvirtDriver().prepare_box(victim, "debian-12")
    assert "--force" in (exc.value.hint or "")
    # The project that made it keeps using it: its own recipe built it.
    attacker = _project(store / "evil", VICTIM)
    art = LibvirtDriver().prepare_box(attacker, "debian-12")
    assert art.version == BUNDLED_VERSION


def _image(labels: dict) -> dict:
    return {"Id": "sha256:" + "a" * 64, "Architecture": "amd64", "Config": {"Labels": labels}}


@pytest.mark.parametrize("box", ["debian-12", f"debian-12@{BUNDLED_VERSION}"], ids=["recipe", "pinned-by-lock"])
def test_a_docker_image_another_projects_recipe_built_under_devenvs_tag_is_refused(store, monkeypatch, box):
    from devenv.drivers.docker.driver import DockerDriver

    evil = _evil_recipe(store / "evil", BUNDLED_VERSION)
    victim = _project(store / "victim", '[machines.app]\nbox = "debian-12"\n')
    d = DockerDriver()
    labels = {recipes.LABEL_BOX: "debian-12", recipes.LABEL_VERSION: BUNDLED_VERSION}
    monkeypatch.setattr(d, "_image", lambda tag: _image({**labels, recipes.LABEL_ORIGIN: evil.origin}))
    with pytest.raises(BoxError, match="built from another recipe"):
        d.prepare_box(victim, box)
    # Built by devenv's own recipe, or by an older devenv (no record): used.
    own = recipes.load_recipe(recipes.BUNDLED / "debian-12.toml")
    for recorded in ({recipes.LABEL_ORIGIN: own.origin}, {}):
        monkeypatch.setattr(d, "_image", lambda tag, r=recorded: _image({**labels, **r}))
        assert d.prepare_box(victim, box).version == BUNDLED_VERSION


def test_a_checkouts_boxes_link_to_the_bundled_recipes_is_the_same_origin() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert (repo / "boxes").is_symlink(), "a checkout's boxes/ is a link to the package data"
    assert (
        recipes.load_recipe(repo / "boxes" / "debian-12.toml").origin
        == recipes.load_recipe(recipes.BUNDLED / "debian-12.toml").origin
    )


def test_a_shipped_recipe_is_the_same_box_in_every_install_a_project_copy_is_not(tmp_path, monkeypatch):
    """Two installs of devenv (a checkout and a wheel in a venv) share the boxes devenv ships; a
    project's own boxes/debian-12.toml, even byte-identical, makes its own (it may differ later)."""
    import shutil

    from devenv.model import recipe as rmod

    here = rmod.load_recipe(rmod.BUNDLED / "debian-12.toml").origin
    other_install = tmp_path / "site-packages" / "devenv" / "data"
    shutil.copytree(rmod.BUNDLED.parent, other_install)
    monkeypatch.setattr(rmod, "BUNDLED", other_install / "boxes")
    there = rmod.load_recipe(other_install / "boxes" / "debian-12.toml")
    assert here == there.origin and here.startswith("bundled-")
    # Editing a file a baked step reads makes it another box.
    (other_install / "provisioners" / "base.sh").write_text("#!/bin/sh\necho changed\n")
    assert rmod.load_recipe(other_install / "boxes" / "debian-12.toml").origin != here
    # A project's copy is identified by its path, as before.
    project = tmp_path / "proj"
    shutil.copytree(rmod.BUNDLED.parent, project / "x")
    copied = rmod.load_recipe(project / "x" / "boxes" / "debian-12.toml")
    assert not copied.origin.startswith("bundled-")
