"""Security: a Devfile's [machines.X.vagrant] dir is a host path, and the Vagrant machine in it is
devenv's only when devenv made it (red-team 2, finding 2).

Real `devenv` CLI in a subprocess, with a logging stand-in for `vagrant` on PATH (written here;
real Vagrant is never run): what matters is which `vagrant` calls devenv makes, and where.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devenv.contract import Ownership, Target
from devenv.model import devfile

SHIM = """#!/bin/sh
# Stand-in for Vagrant: logs every call and where it ran, answers status with one running machine.
echo "vagrant $* (cwd=$PWD)" >> "{log}"
case "$1" in
  --version) echo "Vagrant 2.3.4";;
  status) echo "1700000000,default,metadata,provider,libvirt"; echo "1700000000,default,state,running";
          echo "1700000000,default,state-human-short,running";;
  destroy) echo "1700000000,default,ui,info,==> default: Removing domain...";;
esac
exit 0
"""


def _vagrant_project(folder: Path, machine_id: str = "victim-domain-uuid") -> Path:
    """A Vagrant project with a created machine (Vagrant's own id file), as the user's own VM has."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Vagrantfile").write_text("Vagrant.configure('2') { |c| c.vm.box = 'debian/bookworm64' }\n")
    idf = folder / ".vagrant" / "machines" / "default" / "libvirt" / "id"
    idf.parent.mkdir(parents=True)
    idf.write_text(machine_id)
    return folder


@pytest.fixture
def env(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "vagrant-calls.log"
    shim = bin_dir / "vagrant"
    shim.write_text(SHIM.format(log=log))
    shim.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    e = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DEVENV_HOME": str(tmp_path / "devenv-home"),
        "HOME": str(home),
        "NO_COLOR": "1",
    }
    e.pop("VAGRANT_DOTFILE_PATH", None)
    e.pop("VAGRANT_VAGRANTFILE", None)
    return {"env": e, "log": log, "home": home}


def devenv(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "devenv", *args],
        cwd=cwd,
        env=env["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def calls(env: dict) -> list[str]:
    return env["log"].read_text().splitlines() if env["log"].exists() else []


def write_devfile(repo: Path, dir_value: str, extra: str = "") -> None:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "Devfile").write_text(
        '[project]\nname = "innocent"\n[machines.dev]\ndriver = "vagrant"\n'
        f'[machines.dev.vagrant]\ndir = {json.dumps(dir_value)}\nmachine = "default"\n{extra}'
    )


# Every way a dir can name a folder outside the project.
ESCAPES = {
    "dotdot": lambda tmp, victim, home: "../victim-vm",
    "absolute": lambda tmp, victim, home: str(victim),
    "home": lambda tmp, victim, home: "~/victim-vm",
    "symlink": lambda tmp, victim, home: "link",
    "through a linked parent": lambda tmp, victim, home: "parentlink/victim-vm",
    "link chain": lambda tmp, victim, home: "chain",
}


def _plant(kind: str, tmp: Path, repo: Path, victim: Path, home: Path) -> str:
    if kind == "home":
        (home / "victim-vm").symlink_to(victim)  # ~ is the user's: outside every project
    if kind == "symlink":
        (repo / "link").symlink_to(victim)
    if kind == "through a linked parent":
        (repo / "parentlink").symlink_to(victim.parent)
    if kind == "link chain":
        (repo / "hop").symlink_to("../victim-vm")
        (repo / "chain").symlink_to("hop")
    return ESCAPES[kind](tmp, victim, home)


@pytest.mark.parametrize("kind", list(ESCAPES))
def test_dir_outside_the_project_is_refused_and_vagrant_never_runs_there(tmp_path, env, kind):
    victim = _vagrant_project(tmp_path / "victim-vm")
    repo = tmp_path / "repo"
    repo.mkdir()
    write_devfile(repo, _plant(kind, tmp_path, repo, victim, env["home"]))
    r = devenv(repo, env, "validate")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "outside the project" in r.stdout + r.stderr
    assert "allow_outside_project = true in [machines.dev.vagrant]" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    for verb in (("status",), ("destroy", "-f")):
        r = devenv(repo, env, *verb)
        assert r.returncode == 2, r.stdout + r.stderr
    assert calls(env) == [], "Vagrant was run for a folder outside the project"
    assert (victim / ".vagrant/machines/default/libvirt/id").read_text() == "victim-domain-uuid"


def test_allow_outside_project_is_the_one_way_out(tmp_path, env):
    victim = _vagrant_project(tmp_path / "victim-vm")
    repo = tmp_path / "repo"
    write_devfile(repo, "../victim-vm", "allow_outside_project = true\n")
    r = devenv(repo, env, "validate")
    assert r.returncode == 0, r.stdout + r.stderr
    # ...and even then the Vagrant machine there is not devenv's: destroy leaves it alone.
    r = devenv(repo, env, "destroy", "-f")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not [c for c in calls(env) if c.startswith("vagrant destroy")]
    assert victim.is_dir()


def test_dir_is_confined_again_at_use(tmp_path, env):
    """validate passed while dir was a folder of the project; the link swapped in later is refused."""
    from devenv.drivers.vagrant.driver import VagrantDriver
    from devenv.errors import UsageError

    victim = _vagrant_project(tmp_path / "victim-vm")
    repo = tmp_path / "repo"
    _vagrant_project(repo / "vm", "ours")
    write_devfile(repo, "vm")
    df = devfile.load(repo / "Devfile")
    target = Target(df.project_id, df.root, df.machines["dev"])
    import shutil

    shutil.rmtree(repo / "vm")
    (repo / "vm").symlink_to(victim)

    with pytest.raises(UsageError, match="outside the project"):
        VagrantDriver()._resolve(target)
    assert VagrantDriver().owns(f"{victim}#default", target) is Ownership.FOREIGN


@pytest.mark.parametrize("forged_state", [False, True])
def test_a_machine_devenv_did_not_make_is_never_destroyed(tmp_path, env, forged_state):
    """The repository's own Vagrant folder with a committed .vagrant/ id (someone else's VM), with
    or without a committed .devenv/ state naming it: not devenv's, never destroyed."""
    repo = tmp_path / "repo"
    vm = _vagrant_project(repo / "vm", "someone-elses-domain")
    write_devfile(repo, "vm")
    if forged_state:
        d = repo / ".devenv" / "machines"
        d.mkdir(parents=True)
        (d / "dev.json").write_text(json.dumps({"driver": "vagrant", "handle": f"{vm.resolve()}#default"}))
    r = devenv(repo, env, "destroy", "-f")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "devenv did not create it" in r.stderr or "not this project's machine" in r.stderr
    assert not [c for c in calls(env) if c.startswith("vagrant destroy")], calls(env)


def test_a_machine_devenv_recorded_making_is_destroyed(tmp_path, env):
    """Positive control: the marker in devenv's data folder (with Vagrant's current id) makes it ours."""
    repo = tmp_path / "repo"
    vm = _vagrant_project(repo / "vm", "our-domain")
    write_devfile(repo, "vm")
    handle = f"{vm.resolve()}#default"
    code = "import sys; from devenv.drivers.vagrant.driver import write_marker; write_marker(sys.argv[1], 'our-domain')"
    subprocess.run([sys.executable, "-c", code, handle], env=env["env"], check=True)
    r = devenv(repo, env, "destroy", "-f")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c for c in calls(env) if c.startswith("vagrant destroy default")], calls(env)
    # A different id under the same marker (Vagrant's id file replaced, e.g. by a commit) is not ours.
    env["log"].unlink()
    (vm / ".vagrant/machines/default/libvirt/id").write_text("planted-id")
    r = devenv(repo, env, "destroy", "-f")
    assert not [c for c in calls(env) if c.startswith("vagrant destroy")], calls(env)


def test_machine_of_an_older_devenv_is_adopted_only_via_the_global_index(tmp_path, monkeypatch):
    """No marker (made before markers existed): ours when devenv's global index recorded this
    handle for this project's machine; a repository cannot write that index."""
    from devenv.drivers.vagrant.driver import VagrantDriver, read_marker
    from devenv.state import GlobalIndex

    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "h"))
    repo = tmp_path / "repo"
    vm = _vagrant_project(repo / "vm", "old-domain")
    write_devfile(repo, "vm")
    df = devfile.load(repo / "Devfile")
    target = Target(df.project_id, df.root, df.machines["dev"])
    handle = f"{vm.resolve()}#default"
    d = VagrantDriver()
    d.state = lambda h: __import__("devenv.contract", fromlist=["MachineState"]).MachineState.RUNNING  # type: ignore[method-assign]
    assert d.owns(handle, target) is Ownership.FOREIGN
    entry = {"project_id": df.project_id, "machine": "elsewhere", "driver": "vagrant", "handle": handle}
    GlobalIndex().record({**entry, "root": str(repo)})
    assert d.owns(handle, target) is Ownership.FOREIGN, "another machine name in the index"
    GlobalIndex().record({**entry, "machine": "dev", "root": str(tmp_path / "other")})
    assert d.owns(handle, target) is Ownership.FOREIGN, "another project root in the index"
    GlobalIndex().record({**entry, "machine": "dev", "root": str(repo)})
    assert d.owns(handle, target) is Ownership.OURS
    assert read_marker(handle) == {"handle": handle, "id": "old-domain"}


def test_the_notice_says_the_vagrantfile_runs_ruby_on_this_host(tmp_path, env):
    repo = tmp_path / "repo"
    _vagrant_project(repo / "vm", "x")
    write_devfile(repo, "vm")
    df = devfile.load(repo / "Devfile")
    reach = devfile.host_reach(df)
    assert any("machines.dev.vagrant.dir" in i and "Ruby" in i and "this host" in i for i in reach), reach
    r = devenv(repo, env, "validate")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Ruby" in r.stdout + r.stderr


BOX_SOURCES = {
    "relative path": ("../x.box", True),
    "absolute path": ("/srv/boxes/x.box", True),
    "file URL": ("file:///srv/boxes/x.box", True),
    "file URL with host": ("file://localhost/srv/x.box", True),
    "inside the project": ("boxes/x.box", False),
    "https": ("https://example.invalid/x.box", False),
}


@pytest.mark.parametrize("kind", list(BOX_SOURCES))
def test_the_notice_names_a_box_file_outside_the_project(tmp_path, kind):
    box, outside = BOX_SOURCES[kind]
    (tmp_path / "Devfile").write_text(f'[machines.m]\ndriver = "libvirt"\nbox = {json.dumps(box)}\n')
    df, _ = devfile.check_text((tmp_path / "Devfile").read_text(), tmp_path / "Devfile")
    assert df is not None
    named = [i for i in devfile.host_reach(df) if "machines.m.box" in i]
    assert bool(named) is outside, named


@pytest.mark.parametrize(
    ("source", "outside"),
    [
        ('{ type = "debootstrap", suite = "bookworm", mirror = "file:/srv/mirror" }', True),
        ('{ type = "debootstrap", suite = "bookworm", mirror = "file:///srv/mirror" }', True),
        ('{ type = "debootstrap", suite = "bookworm", mirror = "http://deb.debian.org/debian" }', False),
        (f'{{ type = "cloud-image", url = "file:///etc/x.qcow2", sha256 = "{"a" * 64}" }}', True),
    ],
)
def test_the_notice_names_a_recipe_reading_host_files_by_url(tmp_path, source, outside):
    from devenv.model import recipe as boxes

    (tmp_path / "boxes").mkdir()
    recipe = tmp_path / "boxes" / "r.toml"
    recipe.write_text(f'name = "r"\nversion = "1"\noutputs = ["libvirt"]\nsources = [{source}]\n')
    try:
        loaded = boxes.load_recipe(recipe)
    except Exception as exc:  # noqa: BLE001 - the recipe format is another module's; say why it failed
        pytest.fail(f"recipe did not load: {exc}")
    named = [i for i in devfile.recipe_reach(loaded) if "reads the host path" in i]
    assert bool(named) is outside, named
