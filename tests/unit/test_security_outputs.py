"""Security: files devenv writes at a path the user names (`package -o`, `init`, `import-vagrant
-o`) never write through a link a repository planted there or at a temp name beside it
(red-team 2, finding 3), and the ansible connection variables a Devfile may not set (finding 4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devenv.boxes import store as boxes
from devenv.boxes import vagrantbox as boxfile
from devenv.model import devfile

PRECIOUS = b"export PATH=$HOME/bin:$PATH  # precious\n"


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """A real stored libvirt box (a small qcow2 made by qemu-img)."""
    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is needed (apt-get install qemu-utils)")
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    disk = work / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    return boxes.store_box("victimbox", "1", "libvirt", {"disk": disk}, {}, work=work)


def _plant(repo: Path, name: str, victim: Path, *, dangling: bool) -> None:
    if not dangling:
        victim.write_bytes(PRECIOUS)
    (repo / name).symlink_to(victim)


@pytest.mark.parametrize("dangling", [False, True])
@pytest.mark.parametrize("planted", [".dev.box.tmp", "dev.box"])
def test_package_output_never_writes_through_a_planted_link(tmp_path, stored, monkeypatch, planted, dangling):
    repo = tmp_path / "repo"
    repo.mkdir()
    victim = tmp_path / "victim-bashrc"
    _plant(repo, planted, victim, dangling=dangling)
    monkeypatch.chdir(repo)
    out = boxfile.write_libvirt_box(stored, Path("dev.box"))  # what `devenv package -o dev.box` calls
    if dangling:
        assert not victim.exists() and not victim.is_symlink(), "the link's target was created"
    else:
        assert victim.read_bytes() == PRECIOUS, "the host file behind the link was overwritten"
    assert not (repo / "dev.box").is_symlink() and (repo / "dev.box").is_file()
    assert (repo / "dev.box").stat().st_mode & 0o777 == 0o644
    assert out == Path("dev.box")
    import tarfile

    with tarfile.open(repo / "dev.box") as tar:
        assert {"metadata.json", "Vagrantfile", "box.img"} <= set(tar.getnames())
    assert not [p for p in repo.iterdir() if p.name.endswith(".tmp") and p.name != planted]


def test_package_failure_leaves_no_temp_file(tmp_path, stored, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    monkeypatch.setattr(boxfile, "_virtual_size_gb", lambda disk: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        boxfile.write_libvirt_box(stored, Path("dev.box"))
    assert list(repo.iterdir()) == []


def _cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "devenv", *args],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("dangling", [False, True])
def test_init_never_writes_through_a_planted_devfile_link(tmp_path, dangling):
    repo = tmp_path / "repo"
    repo.mkdir()
    victim = tmp_path / "victim"
    _plant(repo, "Devfile", victim, dangling=dangling)
    r = _cli(repo, "init", env={"DEVENV_HOME": str(tmp_path / "h")})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "already exists" in r.stderr and "Traceback" not in r.stderr
    assert victim.exists() is not dangling
    if not dangling:
        assert victim.read_bytes() == PRECIOUS
    # --force replaces the link by a regular file; the target stays as it was.
    r = _cli(repo, "init", "--force", env={"DEVENV_HOME": str(tmp_path / "h")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (repo / "Devfile").is_symlink()
    assert devfile.load(repo / "Devfile").machines
    assert victim.exists() is not dangling
    if not dangling:
        assert victim.read_bytes() == PRECIOUS


def test_init_writes_a_new_devfile(tmp_path):
    r = _cli(tmp_path, "init", env={"DEVENV_HOME": str(tmp_path / "h")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "Devfile").stat().st_mode & 0o777 == 0o644
    r = _cli(tmp_path, "init", env={"DEVENV_HOME": str(tmp_path / "h")})
    assert r.returncode == 2 and "already exists" in r.stderr


@pytest.mark.parametrize("dangling", [False, True])
def test_import_vagrant_output_never_writes_through_a_planted_link(tmp_path, dangling):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vagrant").write_text(
        "#!/bin/sh\ncase \"$1\" in\n  --version) echo 'Vagrant 2.3.4';;\n"
        "  status) echo '1700000000,web,metadata,provider,docker'; echo '1700000000,web,state,not_created';;\n"
        "esac\nexit 0\n"
    )
    (bin_dir / "vagrant").chmod(0o755)
    repo = tmp_path / "repo"
    (repo / "vm").mkdir(parents=True)
    (repo / "vm" / "Vagrantfile").write_text("Vagrant.configure('2') {}\n")
    victim = tmp_path / "victim"
    _plant(repo, "Devfile", victim, dangling=dangling)
    env = {"DEVENV_HOME": str(tmp_path / "h"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    r = _cli(repo, "import-vagrant", "--bridge", "vm", "-o", "Devfile", env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "already exists" in r.stderr and "Traceback" not in r.stderr
    assert victim.exists() is not dangling
    r = _cli(repo, "import-vagrant", "--bridge", "vm", "-o", "Devfile", "--force", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (repo / "Devfile").is_symlink()
    assert "[machines.web.vagrant]" in (repo / "Devfile").read_text()
    assert victim.exists() is not dangling
    if not dangling:
        assert victim.read_bytes() == PRECIOUS


def test_write_new_file_races_a_link_planted_after_the_exists_check(tmp_path):
    """The exists() check is only friendly: the create itself refuses a link (O_EXCL|O_NOFOLLOW)."""
    from devenv.errors import UsageError
    from devenv.paths import write_new_file

    victim = tmp_path / "victim"
    (tmp_path / "out").symlink_to(victim)
    with pytest.raises(UsageError, match="already exists"):
        write_new_file(tmp_path / "out", "x")
    assert not victim.exists()


# -- ansible: connection variables are devenv's ---------------------------------------------------

RESERVED = [
    "ansible_sftp_extra_args",
    "ansible_scp_extra_args",
    "ansible_sftp_executable",
    "ansible_scp_executable",
    "ansible_scp_if_ssh",
    "ansible_sftp_batch_mode",
    "ansible_ssh_extra_args",
    "ansible_ssh_common_args",
    "ansible_ssh_executable",
    "ansible_ssh_host_key_checking",
    "ansible_sshpass_prompt",
    "ansible_docker_extra_args",
    "ansible_docker_cert_path",
    "ansible_docker_key_path",
    "ansible_docker_docker_host",
    "ansible_docker_extra_env",
    "ansible_control_path",
    "ansible_control_path_dir",
    "ansible_private_key",
    "ansible_private_key_file",
    "ansible_private_key_passphrase",
    "ansible_connection",
    "ansible_connection_timeout",
    "ansible_host",
    "ansible_port",
    "ansible_user",
    "ansible_password",
    "ansible_host_key_checking",
    "ansible_paramiko_proxy_command",
    "ANSIBLE_SCP_EXTRA_ARGS",
]
ALLOWED = ["app_port", "ansible_python_interpreter", "ansible_become_method", "my_ansible_ssh_thing"]


def _ansible_problems(tmp_path: Path, key: str, name: str) -> list[str]:
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    text = (
        '[machines.dev]\ndriver = "libvirt"\nbox = "debian-12"\n'
        f'provision = [{{ type = "ansible", playbook = "site.yml", {key} = {{ {json.dumps(name)} = "-oProxyCommand=id" }} }}]\n'
    )
    (tmp_path / "Devfile").write_text(text)
    _, found = devfile.check_text(text, tmp_path / "Devfile")
    return [f"{p.key}: {p.message}" for p in found]


@pytest.mark.parametrize("key", ["extra_vars", "inventory_vars"])
@pytest.mark.parametrize("name", RESERVED)
def test_connection_variables_are_refused(tmp_path, key, name):
    found = _ansible_problems(tmp_path, key, name)
    assert any(name in p and "set by devenv" in p for p in found), found


@pytest.mark.parametrize("name", ALLOWED)
def test_other_variables_are_accepted(tmp_path, name):
    assert _ansible_problems(tmp_path, "extra_vars", name) == []


def test_validate_cli_refuses_a_proxy_command_in_scp_extra_args(tmp_path):
    _ansible_problems(tmp_path, "inventory_vars", "ansible_scp_extra_args")
    r = _cli(tmp_path, "validate", env={"DEVENV_HOME": str(tmp_path / "h")})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "ansible_scp_extra_args: is set by devenv" in r.stdout + r.stderr


@pytest.mark.parametrize("planted", [".vbox.box.tmp", "vbox.box", ".vbox.box.part"])
def test_box_output_file_helper_never_follows_a_link(tmp_path, planted):
    """write_virtualbox_box writes through the same helper (its disk build needs SYSLINUX, so the
    helper is driven here directly with every fixed name a repository could plant)."""
    victim = tmp_path / "victim"
    victim.write_bytes(PRECIOUS)
    (tmp_path / planted).symlink_to(victim)
    with boxfile._output_file(tmp_path / "vbox.box") as fh:
        fh.write(b"box bytes")
    assert victim.read_bytes() == PRECIOUS
    assert not (tmp_path / "vbox.box").is_symlink() and (tmp_path / "vbox.box").read_bytes() == b"box bytes"
