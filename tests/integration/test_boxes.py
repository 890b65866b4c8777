"""Boxes as production images: baked provision steps, dev/prod parity, failed builds store nothing."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import assert_no_traceback, run_image

pytestmark = pytest.mark.docker

RECIPE = """\
name = "baked"
version = "{version}"
description = "busybox with the base steps baked in"
provision = [
  {{ type = "shell", script = "provisioners/base.sh", args = ["prod"] }},
  {{ type = "file", source = "provisioners/conf", destination = "/etc/app" }},
]

[[sources]]
type = "busybox"
"""

DEVFILE = """\
[machines.web]
box = "baked"
provision = [
  { type = "shell", script = "provisioners/base.sh", args = ["prod"] },
  { type = "file", source = "provisioners/conf", destination = "/etc/app" },
  { type = "shell", inline = "echo dev-only >> /steps.log" },
]
"""


def build_containers(client) -> list[str]:
    """Temporary box-build containers left on the engine (they are named devenv-build-*)."""
    return [c.name for c in client.containers.list(all=True, filters={"name": "devenv-build-"})]


def _project(proj, version="1"):
    proj.write("boxes/baked.toml", RECIPE.format(version=version))
    proj.write("provisioners/base.sh", '#!/bin/sh\necho "base $1" >> /steps.log\n', 0o755)
    proj.write("provisioners/conf/app.env", "MODE=prod\n")
    proj.devfile(DEVFILE)


def test_baked_steps_are_skipped_and_fingerprints_match(proj, docker_client):
    _project(proj)
    r = proj.run("box", "build", "baked", check=True)
    assert "bake [0] shell provisioners/base.sh" in r.stderr and "bake [1] file" in r.stderr
    assert build_containers(docker_client) == []
    built = {b["name"]: b for b in json.loads(proj.run("box", "list", "--json", check=True).stdout)["built"]}
    baked = built["baked"]["baked"]
    assert len(baked) == 2
    # The box's own labels only: nothing of the temporary build container leaks into machines.
    labels = docker_client.images.get("devenv-box/baked:1").labels
    assert not [k for k in labels if k.startswith("devenv.") and not k.startswith(("devenv.box", "devenv.keepalive"))]

    # Parity as a checked fact: the Devfile's first two steps have exactly the box's fingerprints.
    from devenv.model import devfile
    from devenv.provisioners import fingerprint

    df = devfile.load(proj.root / "Devfile")
    assert [fingerprint(s, df.root) for s in df.machines["web"].provision[:2]] == baked

    try:
        r = proj.run("up", check=True)
        assert "provision [0] shell provisioners/base.sh: baked into box baked@1, skipped" in r.stderr
        assert "provision [1] file provisioners/conf -> /etc/app: baked into box baked@1, skipped" in r.stderr
        assert "provision [2]" in r.stderr and "(not applied yet)" in r.stderr
        # The baked effects are in the image, the dev-only step ran once, nothing ran twice.
        assert proj.run("exec", "web", "--", "cat", "/steps.log").stdout == "base prod\ndev-only\n"
        assert proj.run("exec", "web", "--", "cat", "/etc/app/app.env").stdout == "MODE=prod\n"
        st = proj.status()["web"]
        assert st["baked_steps"] == [0, 1] and st["provision"] == "up to date"
        assert st["box"] == "baked@1" and st["box_digest"].startswith("sha256:")

        # A dev change to a baked step breaks the prefix: it and every later step run on the machine.
        proj.write("provisioners/base.sh", '#!/bin/sh\necho "base2 $1" >> /steps.log\n', 0o755)
        st = proj.status()["web"]
        assert st["stale_step"] == 0 and st["baked_steps"] == []
        r = proj.run("provision", check=True)
        assert "provision [0]" in r.stderr and "provision [1]" in r.stderr and "provision [2]" in r.stderr
    finally:
        proj.run("destroy", "-f")
        docker_client.images.remove("devenv-box/baked:1", force=True)


def test_failed_bake_stores_nothing(proj, docker_client):
    _project(proj, version="2")
    proj.write("provisioners/base.sh", "#!/bin/sh\necho about to fail\nexit 3\n", 0o755)
    r = proj.run("box", "build", "baked")
    assert r.returncode == 7, r.stderr
    assert_no_traceback(r)
    assert "baked step [0] shell provisioners/base.sh failed; nothing was stored" in r.stderr
    assert "about to fail" in r.stderr
    tags = [t for i in docker_client.images.list() for t in i.tags]
    assert not [t for t in tags if t.startswith("devenv-box/baked:2")], tags
    assert build_containers(docker_client) == []


def test_lockfile_frozen_update_and_up_with_a_production_box(proj, docker_client):
    import tomllib

    _project(proj)
    try:
        proj.run("up", check=True)
        lock = tomllib.loads((proj.root / "Devfile.lock").read_text())["machines"]["web"]
        assert lock["box"] == "baked" and lock["version"] == "1" and lock["provider"] == "docker"
        assert lock["digest"] == proj.status()["web"]["box_digest"]

        # The recipe moves to version 2; the lock keeps new machines on version 1.
        proj.write("boxes/baked.toml", RECIPE.format(version="2"))
        proj.run("box", "build", "baked", check=True)
        proj.run("destroy", "-f", check=True)
        proj.run("up", "--frozen", check=True)
        assert proj.status()["web"]["box"] == "baked@1"

        # --frozen refuses to add what the lock does not have.
        (proj.root / "Devfile.lock").write_text("version = 1\n")
        proj.run("destroy", "-f", check=True)
        r = proj.run("up", "--frozen")
        assert r.returncode == 2 and "--frozen: Devfile.lock has no docker box for machine 'web'" in r.stderr
        assert_no_traceback(r)
        assert proj.labelled()["containers"] == []

        # box update moves the lock forward on purpose.
        r = proj.run("box", "update", check=True)
        assert "Devfile.lock: (none) -> baked@2" in r.stderr
        assert tomllib.loads((proj.root / "Devfile.lock").read_text())["machines"]["web"]["version"] == "2"
        proj.run("up", "--frozen", check=True)
        assert proj.status()["web"]["box"] == "baked@2"

        # Reproduce a "production" bug on the exact old artifact, without touching the lock.
        proj.run("destroy", "-f", check=True)
        r = proj.run("up", "--box", "baked@1", check=True)
        assert "using box baked@1 (--box" in r.stderr
        st = proj.status()["web"]
        assert st["box"] == "baked@1" and st["action"] == "recreate"
        assert tomllib.loads((proj.root / "Devfile.lock").read_text())["machines"]["web"]["version"] == "2"
        r = proj.run("up", "--box", "baked@2")
        assert r.returncode == 4 and "already exists" in r.stderr
    finally:
        proj.run("destroy", "-f")
        for tag in ("devenv-box/baked:1", "devenv-box/baked:2"):
            try:
                docker_client.images.remove(tag, force=True)
            except Exception:  # noqa: BLE001
                pass


def test_vagrant_accepts_our_box(tmp_path):
    """The .box output is the format Vagrant itself adds (vagrant from Debian's package)."""
    import os
    import subprocess

    from devenv.boxes import store as boxes
    from devenv.boxes import vagrantbox as boxfile
    from tests.support import require_tool

    require_tool("vagrant", "apt-get install --no-install-recommends vagrant")
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src / "disk.qcow2"), "16M"], check=True)
    stored = boxes.store_box("vtest", "1", "libvirt", {"disk": src / "disk.qcow2"}, {"cmdline": ""})
    out = boxfile.write_libvirt_box(stored, tmp_path / "vtest.box")
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vhome"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    r = subprocess.run(
        ["vagrant", "box", "add", "--name", "devenv/vtest", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["vagrant", "box", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert "devenv/vtest (libvirt, 0)" in r.stdout


def test_package_a_container_into_a_box(proj, docker_client):
    proj.devfile('[machines.m]\nbox = "busybox"\nprovision = [{ type = "shell", inline = "echo made > /made" }]\n')
    try:
        proj.run("up", check=True)
        r = proj.run("package", "--box", "pkgd", "--version", "7", check=True)
        assert "packaged as box pkgd@7 (docker" in r.stderr
        # The package runs like any image, outside devenv too: its command, not devenv's keep-alive.
        assert run_image(docker_client, "devenv-box/pkgd:7", ["cat", "/made"]) == b"made\n"
        img = docker_client.images.get("devenv-box/pkgd:7")
        assert img.attrs["Config"]["Cmd"] == ["/bin/sh"] and img.attrs["Config"]["Entrypoint"] in (None, [], [""])
        # A machine on the packaged box skips the step the source machine had applied.
        proj.run("destroy", "-f", check=True)
        proj.devfile('[machines.m]\nbox = "pkgd"\nprovision = [{ type = "shell", inline = "echo made > /made" }]\n')
        r = proj.run("up", check=True)
        assert "baked into box pkgd@7, skipped" in r.stderr
        assert proj.run("exec", "m", "--", "cat", "/made").stdout == "made\n"
    finally:
        proj.run("destroy", "-f")
        try:
            docker_client.images.remove("devenv-box/pkgd:7", force=True)
        except Exception:  # noqa: BLE001
            pass
