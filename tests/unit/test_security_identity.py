"""Project identity, host environment reach and lock names (issue #10 review findings), through real code paths.

The project id in names and labels is a short hash of the root: a hostile folder name can be
brute-forced to collide with another project's. Ownership is decided by the real root each
engine object records, so such a collision never makes another project's machines ours.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from devenv.boxes import store as boxes
from devenv.contract import LABEL_MACHINE, LABEL_PROJECT, LABEL_ROOT, Ownership, Target
from devenv.model import devfile
from tests.support import require_engine

ONE = """\
[machines.web]
driver = "fake"
box = "base"
"""


def _plant(fake, labels: dict) -> str:
    """A machine on the fake engine that this project did not make."""
    return fake.plant(labels, name="devenv-collide-web")


# -- A: a colliding project id never makes another root's machine ours --------------------------


def test_machine_with_our_id_but_another_root_is_never_touched(proj, fake) -> None:
    proj.devfile(ONE)
    df = devfile.load(proj.root / "Devfile")
    victim = _plant(
        fake, {LABEL_PROJECT: df.project_id, LABEL_MACHINE: "web", LABEL_ROOT: "/home/victim/their-project"}
    )
    before = fake.machines[victim]

    r = proj.cli("destroy", "-f")
    assert r.exit_code == 0, r.output
    assert fake.machines.get(victim) == before, "destroy -f left the other root's machine alone"

    r = proj.cli("up")
    assert r.exit_code == 0, r.output
    assert fake.machines.get(victim) == before, "up neither adopted nor changed it"
    mine = json.loads(proj.state_file("web").read_text())["handle"]
    assert mine != victim and fake.machines[mine]["labels"][LABEL_ROOT] == str(df.root)

    r = proj.cli("destroy", "-f")
    assert r.exit_code == 0, r.output
    assert mine not in fake.machines, "our own machine went"
    assert fake.machines.get(victim) == before
    # A forged handle in .devenv/ naming it is refused as well.
    proj.state_file("web").write_text(json.dumps({"driver": "fake", "handle": victim, "steps": []}))
    assert proj.cli("destroy", "-f").exit_code == 0
    assert fake.machines.get(victim) == before


def test_machine_without_a_recorded_root_is_still_adopted(proj, fake) -> None:
    """Made by an older devenv (no root label): today's behaviour, found by id and name."""
    proj.devfile(ONE)
    df = devfile.load(proj.root / "Devfile")
    old = _plant(fake, {LABEL_PROJECT: df.project_id, LABEL_MACHINE: "web"})
    r = proj.cli("destroy", "-f")
    assert r.exit_code == 0, r.output
    assert old not in fake.machines


def _target(tmp_path: Path, text: str, name: str) -> Target:
    (tmp_path / "Devfile").write_text(text)
    df = devfile.load(tmp_path / "Devfile")
    return Target(df.project_id, df.root, df.machines[name])


def test_docker_owns_and_find_require_the_recorded_root(tmp_path, monkeypatch) -> None:
    from devenv.drivers.docker.driver import DockerDriver

    target = _target(tmp_path, '[machines.web]\nbox = "docker:busybox"\n', "web")
    same = {LABEL_PROJECT: target.project_id, LABEL_MACHINE: "web"}
    containers = {
        "a" * 64: {**same, LABEL_ROOT: "/home/victim/their-project"},
        "b" * 64: {**same, LABEL_ROOT: str(target.project_root)},
        "c" * 64: dict(same),  # an older devenv recorded no root
    }
    d = DockerDriver()
    monkeypatch.setattr(d, "_inspect", lambda h: {"Config": {"Labels": containers[h]}} if h in containers else None)
    assert d.owns("a" * 64, target) is Ownership.FOREIGN
    assert d.owns("b" * 64, target) is Ownership.OURS
    assert d.owns("c" * 64, target) is Ownership.OURS
    listed = [{"Id": h, "Labels": labels} for h, labels in containers.items()]
    monkeypatch.setattr(d, "_eng", lambda fn, *a, **k: listed)
    assert d.find(target) == "b" * 64
    monkeypatch.setattr(d, "_eng", lambda fn, *a, **k: listed[:1])
    assert d.find(target) is None
    # destroy -f's sweep of leftovers by project id passes the root: the other root's stays.
    destroyed: list[str] = []
    # (The project's networks: none here.)
    monkeypatch.setattr(d, "_eng", lambda fn, *a, **k: [] if fn.__name__ == "networks" else listed)
    monkeypatch.setattr(d, "destroy", destroyed.append)
    d.sweep(target.project_id, target.project_root)
    assert destroyed == ["b" * 64, "c" * 64]


def test_virtualbox_owns_requires_the_recorded_root(tmp_path, monkeypatch) -> None:
    from devenv.drivers.virtualbox import driver as vb

    target = _target(tmp_path, '[machines.web]\ndriver = "virtualbox"\nbox = "tiny"\n', "web")
    base = {vb.KEY_PROJECT: target.project_id, vb.KEY_MACHINE: "web"}
    vms = {
        "other": {**base, vb.KEY_META: json.dumps({"root": "/home/victim/their-project"})},
        "mine": {**base, vb.KEY_META: json.dumps({"root": str(target.project_root)})},
        "older": {**base, vb.KEY_META: json.dumps({"project": target.project_id})},
    }
    d = vb.VirtualBoxDriver()
    monkeypatch.setattr(d, "_extradata", lambda vm: vms.get(vm))
    assert d.owns("other", target) is Ownership.FOREIGN
    assert d.owns("mine", target) is Ownership.OURS
    assert d.owns("older", target) is Ownership.OURS
    destroyed: list[str] = []
    monkeypatch.setattr(d, "_run", lambda *a: type("R", (), {"stdout": ""})())
    monkeypatch.setattr(vb, "parse_list", lambda _: ["devenv-x-other", "devenv-x-mine", "devenv-x-older"])
    monkeypatch.setattr(d, "_extradata", lambda vm: vms.get(vm.removeprefix("devenv-x-")))
    monkeypatch.setattr(d, "destroy", destroyed.append)
    d.sweep(target.project_id, target.project_root)
    assert destroyed == ["devenv-x-mine", "devenv-x-older"]


def test_libvirt_domain_with_another_root_is_foreign(tmp_path, monkeypatch) -> None:
    from devenv.drivers.libvirt import driver as lv

    require_engine(lambda: lv.LibvirtDriver().conn("test:///default"))
    monkeypatch.setenv("DEVENV_LIBVIRT_URI", "test:///default")
    target = _target(tmp_path, '[machines.vm]\ndriver = "libvirt"\nbox = "tiny"\n', "vm")
    driver = lv.LibvirtDriver()
    conn = driver.conn()
    name = target.resource_name
    handle = f"test:///default#{name}"

    def define(root: str | None) -> None:
        attr = f" root='{root}'" if root is not None else ""
        meta = f"<devenv:machine xmlns:devenv='{lv.NS}' project='{target.project_id}' machine='vm'{attr}/>"
        conn.defineXML(
            f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
            f"<metadata>{meta}</metadata><os><type arch='x86_64'>hvm</type></os></domain>"
        )

    try:
        define("/home/victim/their-project")
        assert driver.owns(handle, target) is Ownership.FOREIGN
        assert driver.find(target) is None
        conn.lookupByName(name).undefine()
        define(str(target.project_root))
        assert driver.owns(handle, target) is Ownership.OURS and driver.find(target) == handle
        conn.lookupByName(name).undefine()
        define(None)  # an older devenv recorded no root
        assert driver.owns(handle, target) is Ownership.OURS
        conn.lookupByName(name).undefine()
        # destroy -f's sweep of leftovers by project id leaves the other root's domain alone.
        define("/home/victim/their-project")
        assert driver.sweep(target.project_id, target.project_root) == []
        assert conn.lookupByName(name) is not None
    finally:
        with contextlib.suppress(Exception):
            conn.lookupByName(name).undefine()


# -- B: the first-use notice names every host environment variable a Devfile reads ---------------


def test_notice_names_each_host_environment_variable(proj, monkeypatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "not-shown-anywhere")
    proj.devfile(
        '[machines.web]\ndriver = "fake"\nbox = "base"\n'
        '[machines.web.env]\nTOKEN = { from_env = "GITHUB_TOKEN" }\nKEY = { from_env = "AWS_SECRET_ACCESS_KEY" }\n'
        'PLAIN = "x"\n'
    )
    first = proj.cli("validate")
    assert first.exit_code == 0, first.output
    assert "reads the host environment variable GITHUB_TOKEN into machine web" in first.output
    assert "reads the host environment variable AWS_SECRET_ACCESS_KEY into machine web" in first.output
    assert "machines.web.env.TOKEN" in first.output
    assert "PLAIN" not in first.output and "not-shown-anywhere" not in first.output
    assert "GITHUB_TOKEN" not in proj.cli("validate").output  # once, like the other notices
    # A newly named variable is a new notice.
    proj.devfile(
        '[machines.web]\ndriver = "fake"\nbox = "base"\n'
        '[machines.web.env]\nTOKEN = { from_env = "GITHUB_TOKEN" }\nKEY = { from_env = "AWS_SECRET_ACCESS_KEY" }\n'
        'NEW = { from_env = "NPM_TOKEN" }\n'
    )
    assert "reads the host environment variable NPM_TOKEN" in proj.cli("validate").output


# -- C: box prune keeps what Devfile.toml.lock pins ------------------------------------------------


def test_prune_keeps_the_boxes_a_devfile_toml_lock_pins(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from devenv.cli.app import app_for

    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # prune must not touch real images
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for version in ("1", "2", "3"):
        disk = work / f"disk-{version}.img"
        disk.write_bytes(b"\0" * 512)
        boxes.store_box("tbox", version, "libvirt", {"disk": disk}, {})
    root = tmp_path / "proj"
    root.mkdir()
    (root / "Devfile.toml").write_text('[machines.vm]\ndriver = "libvirt"\nbox = "tbox"\n')
    (root / "Devfile.toml.lock").write_text(
        'version = 1\n\n[machines."vm"]\nbox = "tbox"\nversion = "1"\nprovider = "libvirt"\n'
    )
    argv = ["-f", str(root / "Devfile.toml"), "box", "prune"]
    r = CliRunner().invoke(app_for(argv), argv)
    assert r.exit_code == 0, r.output
    assert {b.version for b in boxes.list_stored()} == {"1", "3"}, r.output
