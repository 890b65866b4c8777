"""Onboarding from the team's boxes: CI builds debian-12 (Docker and libvirt) and busybox once and
publishes them to the registry (and the VM output to a static catalog); a new laptop (a fresh
DEVENV_HOME, the box images removed) brings Devfile.example and a libvirt machine up from the
pulled boxes without building anything, with `[project] box_registry` in the Devfile.

Traffic: the registry and the web server run on 127.0.0.1; the host fetches only from 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import pytest

from devenv.model.recipe import BUNDLED, load_recipe
from devenv.pkgcache import guest
from tests.integration.conftest import DEVENV, REPO, Proj, free_port, run_image

pytestmark = [pytest.mark.docker, pytest.mark.libvirt, pytest.mark.slow]


def _devenv(*args: str, home, cwd, timeout: float = 1800) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [*DEVENV, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DEVENV_HOME": str(home)},
        stdin=subprocess.DEVNULL,
    )


def test_a_new_laptop_comes_up_from_the_published_boxes_without_building(
    registry, debian_vm_store, docker_client, tmp_path
):
    debian = load_recipe(BUNDLED / "debian-12.toml")
    busybox = load_recipe(BUNDLED / "busybox.toml")
    ci_home = debian_vm_store.parent  # the run's one build of debian-12's VM output lives there
    prefix = registry.repo("boxes")

    # CI: build what is missing, publish every output.
    for recipe in (debian, busybox):
        r = _devenv("box", "build", recipe.name, "--output", "docker", home=ci_home, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    r = _devenv(
        "--progress", "json", "box", "publish", "debian-12", "--to", f"{prefix}/debian-12", home=ci_home, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    published = {e["output"]: e for e in map(json.loads, r.stderr.splitlines()) if e.get("phase") == "publish"}
    assert set(published) == {"docker", "libvirt"}
    r = _devenv("box", "publish", "busybox", "--to", f"{prefix}/busybox", home=ci_home, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    catalog = tmp_path / "catalog"
    r = _devenv("box", "publish", "debian-12", "--to", str(catalog), home=ci_home, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    listed = json.loads((catalog / "debian-12.json").read_text())
    assert [v["version"] for v in listed["versions"]] == [debian.version]

    # A new laptop: nothing built, nothing stored.
    for recipe in (debian, busybox):
        docker_client.images.remove(recipe.docker_tag, force=True)
    laptop = tmp_path / "laptop-home"
    laptop.mkdir()
    root = tmp_path / "example"
    root.mkdir()
    port = free_port()
    text = (REPO / "Devfile.example").read_text().replace("host = 18080", f"host = {port}")
    text = text.replace('[project]\nname = "example"', f'[project]\nname = "example"\nbox_registry = "{prefix}"', 1)
    assert "box_registry" in text
    (root / "Devfile").write_text(text)
    shutil.copytree(REPO / "provisioners", root / "provisioners")
    example = Proj(root, docker_client)
    try:
        r = example.run("up", env={"DEVENV_HOME": str(laptop)}, timeout=600)
        assert r.returncode == 0, r.stderr
        assert "building box" not in r.stderr and "bake [" not in r.stderr, r.stderr
        assert f"box debian-12@{debian.version} (docker) pulled from {prefix}/debian-12:{debian.version}" in r.stderr
        assert f"box busybox@{busybox.version} (docker) pulled from {prefix}/busybox:{busybox.version}" in r.stderr
        assert "hello from devenv" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        st = example.status()
        assert st["app"]["baked_steps"] == [0]  # the published box's baked step, skipped as on CI
        # Published boxes never point at the package cache of the machine that built them.
        clean = " && ".join(f"! test -e {p}" for p in guest.PATHS) + " && echo clean"
        assert run_image(docker_client, debian.docker_tag, ["/bin/sh", "-c", clean]).strip() == b"clean"
        example.run("destroy", "-f", env={"DEVENV_HOME": str(laptop)}, check=True)
    finally:
        example.sweep()

    # ... and a libvirt machine from the published VM box: pulled, checked, booted.
    vmroot = tmp_path / "vmproj"
    vmroot.mkdir()
    (vmroot / "Devfile").write_text(
        f'[project]\nbox_registry = "{prefix}"\n\n[machines.deb]\ndriver = "libvirt"\nbox = "debian-12"\n'
        'memory = "512MiB"\n'
    )
    vmproj = Proj(vmroot, docker_client)
    try:
        r = vmproj.run("up", env={"DEVENV_HOME": str(laptop)}, timeout=900)
        assert r.returncode == 0, r.stderr
        assert (
            f"box debian-12@{debian.version} (libvirt) pulled from {prefix}/debian-12:{debian.version}-libvirt"
            in r.stderr
        )
        assert "building box" not in r.stderr
        assert vmproj.run("ssh", "deb", "-c", "id -un dev", env={"DEVENV_HOME": str(laptop)}).stdout == "dev\n"
        assert vmproj.run("ssh", "deb", "-c", clean, env={"DEVENV_HOME": str(laptop)}).stdout == "clean\n"
        box = json.loads((laptop / "boxes" / "debian-12" / debian.version / "libvirt" / "box.json").read_text())
        assert box["source"]["manifest"] == published["libvirt"]["digest"]
        vmproj.run("destroy", "-f", env={"DEVENV_HOME": str(laptop)}, check=True)
    finally:
        from devenv.drivers.libvirt.driver import LibvirtDriver

        try:
            LibvirtDriver().sweep(vmproj.project_id)
        except Exception:  # noqa: BLE001 - best-effort cleanup after a failed test
            pass
