"""One recipe, one package set: the Docker image and the VM disk of the shipped debian-12 hold the
same Debian packages, but for the recipe's vm_packages and what they depend on.

The Docker list comes from `dpkg-query -W` in a container of the image; the VM list from
`dpkg-query -W` over the dpkg database read out of the box's disk (debugfs, no boot, no mount).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from devenv.model.recipe import BUNDLED, load_recipe
from devenv.pkgcache import guest
from tests.integration.conftest import DEVENV, run_image

pytestmark = [pytest.mark.docker, pytest.mark.libvirt]

FORMAT = "${Package}\\t${Pre-Depends}\\t${Depends}\\t${Provides}\\n"


def _parse(listing: str) -> dict[str, dict]:
    out = {}
    for line in listing.splitlines():
        if not line.strip():
            continue
        name, pre, dep, prov = (line.split("\t") + ["", "", ""])[:4]
        out[name] = {"depends": f"{pre}, {dep}", "provides": prov}
    return out


def _names(field: str) -> list[list[str]]:
    """`a (>= 1), b | c:any` -> [[a], [b, c]] (alternatives kept together)."""
    groups = []
    for part in field.split(","):
        alts = [re.sub(r"[\s(\[].*$", "", a.strip()).split(":")[0] for a in part.split("|")]
        alts = [a for a in alts if a]
        if alts:
            groups.append(alts)
    return groups


def _closure(roots: list[str], installed: dict[str, dict]) -> set[str]:
    provided: dict[str, set[str]] = {}
    for name, info in installed.items():
        for group in _names(info["provides"]):
            for virtual in group:
                provided.setdefault(virtual, set()).add(name)
    seen: set[str] = set()
    todo = [r for r in roots if r in installed]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for group in _names(installed[name]["depends"]):
            for alt in group:
                for real in ({alt} if alt in installed else set()) | provided.get(alt, set()):
                    todo.append(real)
    return seen


def _vm_listing(disk: Path, tmp: Path, absent: tuple[str, ...] = ()) -> str:
    """The disk's dpkg listing; each of ``absent`` must not be on the disk (debugfs cannot find it)."""
    raw = tmp / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(disk), str(raw)], check=True)
    admin = tmp / "dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "updates").mkdir()
    subprocess.run(
        ["debugfs", "-R", f"dump /var/lib/dpkg/status {admin / 'status'}", str(raw)], check=True, capture_output=True
    )
    for path in absent:
        found = subprocess.run(["debugfs", "-R", f"stat {path}", str(raw)], capture_output=True, text=True)
        assert "not found" in found.stderr + found.stdout, f"{path} is on the VM disk"
    raw.unlink()
    r = subprocess.run(
        ["dpkg-query", f"--admindir={admin}", "-W", f"-f={FORMAT}"], check=True, capture_output=True, text=True
    )
    return r.stdout


def test_debian_12_has_the_same_packages_in_its_docker_image_and_its_vm_disk(debian_vm_store, docker_client, tmp_path):
    recipe = load_recipe(BUNDLED / "debian-12.toml")
    r = subprocess.run(
        [*DEVENV, "box", "build", "debian-12", "--output", "docker"], capture_output=True, text=True, timeout=1800
    )
    assert r.returncode == 0, r.stderr
    docker = _parse(run_image(docker_client, recipe.docker_tag, ["dpkg-query", "-W", f"-f={FORMAT}"]).decode())
    [disk] = (debian_vm_store / "debian-12" / recipe.version / "libvirt").glob("disk.qcow2")
    # Built through the host's package cache, neither output points at it (a production image must not).
    vm = _parse(_vm_listing(disk, tmp_path, absent=(*guest.PATHS, "/var/lib/devenv")))
    script = " && ".join(f"! test -e {p}" for p in guest.PATHS) + " && echo clean"
    assert run_image(docker_client, recipe.docker_tag, ["/bin/sh", "-c", script]).strip() == b"clean"

    assert set(recipe.packages) <= set(docker) and set(recipe.packages) <= set(vm)
    assert set(recipe.vm_packages) <= set(vm) and not set(recipe.vm_packages) & set(docker)
    assert set(docker) - set(vm) == set()  # nothing the container has that the VM lacks
    vm_only = set(vm) - set(docker)
    explained = _closure(list(recipe.vm_packages), vm)
    assert vm_only - explained == set(), "VM-only packages not declared in vm_packages (nor needed by them)"
