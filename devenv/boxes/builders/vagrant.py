"""The vagrant output: .box files for Vagrant's libvirt and virtualbox providers.

Both are made from the recipe's libvirt box (built first when the store lacks it) and stored as
providers vagrant-libvirt and vagrant-virtualbox of the same NAME/VERSION; each records the disk
it was made from, so a rebuilt libvirt box makes them again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from devenv.boxes import store
from devenv.boxes.builders import Built, built
from devenv.contract import QUIET, Reporter
from devenv.model.recipe import Recipe


def output(recipe: Recipe, *, force: bool = False, reporter: Reporter = QUIET) -> list[Built]:
    from devenv.boxes import vagrantbox
    from devenv.boxes.builders import libvirt

    label = recipe.label
    stored = store.find_stored(recipe.name, recipe.version, "libvirt")
    if stored is None:
        stored = libvirt.build_libvirt_box(recipe, reporter=reporter)
    results = []
    kinds = (
        (
            "libvirt",
            "packing the .box",
            vagrantbox.write_libvirt_box,
            "(.box)",
            "(.box for Vagrant's libvirt provider)",
        ),
        (
            "virtualbox",
            "packing the .box for VirtualBox (BIOS-bootable disk, VMDK, OVF)",
            vagrantbox.write_virtualbox_box,
            "(.box, virtualbox)",
            "(.box for Vagrant's virtualbox provider)",
        ),
    )
    for provider, packing, write, exists_as, built_as in kinds:
        kind = f"vagrant-{provider}"
        existing = store.find_stored(recipe.name, recipe.version, kind)
        if existing and not force and existing.meta.get("from_disk") == stored.digest():
            found = _built(kind, existing, existed=True)
            results.append(built(reporter, found, f"box {label} {exists_as} exists: {existing.file('box')}"))
            continue
        name = f"{recipe.name}-{recipe.version}-{provider}.box"
        with (
            tempfile.TemporaryDirectory(dir=store.store_root()) as tmp,
            reporter.progress(None, packing, phase="build"),
        ):
            out = write(stored, Path(tmp) / name)
            existing = store.store_box(recipe.name, recipe.version, kind, {"box": out}, {"from_disk": stored.digest()})
        results.append(built(reporter, _built(kind, existing), f"built {label} {built_as}: {existing.file('box')}"))
    return results


def _built(kind: str, stored: store.StoredBox, *, existed: bool = False) -> Built:
    return Built(
        kind, stored.name, stored.version, str(stored.file("box")), "sha256:" + (stored.digest("box") or ""), existed
    )
