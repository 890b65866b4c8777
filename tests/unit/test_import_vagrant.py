"""`devenv import-vagrant`: Vagrantfiles (tests/vagrantfiles/, written in the style of public
projects) become native Devfiles. Each is evaluated by the real Ruby against devenv's recorder;
what is compared is the Devfile's model as devenv.model.devfile.load reads it, not its text.

Also: the Vagrantfile's own errors (at its file:line), missing scripts (as `validate` shows
problems), the time limit, no Ruby, a stale .vagrant/, nothing written into the project and
Vagrant never run, the paths when the Devfile is written elsewhere, the TOML writer, validate's
hints for Vagrant habits, and the bridge's advice when Vagrant has no usable provider.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devenv.errors import BackendUnavailable, CommandFailed, DevfileError
from devenv.model import devfile
from devenv.model.devfile import Port
from devenv.vagrantfile import boxes, import_vagrantfile
from devenv.vagrantfile import document as toml
from devenv.vagrantfile.steps import bash_wrapped
from tests.support import require_tool

CORPUS = Path(__file__).resolve().parents[1] / "vagrantfiles"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "Vagrantfile").is_file())
BAD = {"raises", "missing-script", "slow"}
GOOD = [c for c in CASES if c not in BAD]
MiB = 1024**2


@pytest.fixture(autouse=True)
def _ruby():
    """Every case runs a Vagrantfile under Ruby: missing it fails in CI (tests.support.missing)."""
    require_tool("ruby", "apt-get install ruby")


def copy_case(tmp_path: Path, case: str) -> Path:
    dest = tmp_path / "proj"
    shutil.copytree(CORPUS / case, dest, symlinks=True)
    return dest


def imported(tmp_path: Path, case: str, driver: str = "docker") -> tuple[devfile.Devfile, str]:
    """The case imported into its own folder's Devfile, and that Devfile loaded by devenv."""
    folder = copy_case(tmp_path, case)
    result = import_vagrantfile(folder / "Vagrantfile", folder / "Devfile", driver=driver)
    (folder / "Devfile").write_text(result.text)
    return devfile.load(folder / "Devfile"), result.text


def cli(cwd: Path, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "devenv", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def tree(folder: Path) -> dict[str, tuple[int, int, float]]:
    """Every entry below folder: (mode, size, mtime) by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st_ = p.lstat()
        out[str(p.relative_to(folder))] = (st_.st_mode, st_.st_size, st_.st_mtime)
    return out


def joined(text: str) -> str:
    """The Devfile's text with wrapped comments joined: notes read as one line each."""
    return re.sub(r"\n *#   ", " ", text)


def steps(m: devfile.Machine) -> list[dict]:
    """A machine's steps without the defaults the schema filled in (user = root)."""
    out = []
    for s in m.provision:
        c = dict(s.config)
        if c.get("type") == "shell" and c.get("user") == "root":
            c.pop("user")
        out.append(c)
    return out


# ---------------------------------------------------------------------------------------------
# The corpus: every file is a valid native Devfile, for both drivers


@pytest.mark.parametrize("driver", ["docker", "libvirt"])
@pytest.mark.parametrize("case", GOOD)
def test_every_corpus_vagrantfile_becomes_a_valid_native_devfile(tmp_path, case, driver):
    df, text = imported(tmp_path, case, driver)
    assert df.machines
    assert {m.driver for m in df.machines.values()} == {driver}
    assert all(m.box for m in df.machines.values())
    tomllib.loads(text)  # and it is TOML that tomllib reads as it is
    assert text.startswith("# Devfile for the Vagrant project in this folder")


def test_python_web_single_machine_with_an_env_port_and_a_heredoc(tmp_path, monkeypatch):
    monkeypatch.setenv("SITE_PORT", "18123")
    df, text = imported(tmp_path, "python-web")
    assert list(df.machines) == ["default"]
    m = df.machines["default"]
    assert (m.driver, m.box, m.hostname, m.memory) == ("docker", "debian-12", "site", 512 * MiB)
    assert m.ports == (Port(guest=8000, host=18123),)
    assert [(s.host, s.guest, s.type) for s in m.sync] == [(df.root, "/vagrant", "auto")]
    [step] = steps(m)
    assert step["type"] == "shell" and "systemctl enable --now site.service" in step["inline"]
    assert step["inline"].startswith("set -e\ncat > /etc/systemd/system/site.service <<'UNIT'\n")
    # The top level (everything, with no config.vm.define) is [defaults]; the ENV it read is said.
    raw = tomllib.loads(text)
    assert raw["defaults"]["box"] == "debian-12" and raw["defaults"]["provision"]
    assert "reads the environment variables SITE_PORT" in text
    assert 'Vagrant box "debian/bookworm64" (Debian 12)' in text
    assert "here a bind mount" in text  # what became of Vagrant's /vagrant share


def test_multi_machine_loop_inherits_top_level_provisioners_first(tmp_path):
    df, text = imported(tmp_path, "multi-loop")
    assert list(df.machines) == ["api", "web"]  # Vagrant's order
    api, web = df.machines["api"], df.machines["web"]
    assert df.networks["private"].subnet == "192.168.56.0/24"
    assert [(a.name, a.ip) for a in api.networks] == [("private", "192.168.56.21")]
    assert [(a.name, a.ip) for a in web.networks] == [("private", "192.168.56.20")]
    assert (api.memory, api.cpus, web.memory, web.cpus) == (512 * MiB, 1, 768 * MiB, 1)
    assert api.ports == () and web.ports == (Port(guest=80, host=8080, auto_correct=True),)
    assert (api.hostname, web.hostname) == ("api", "web")
    common = {"type": "shell", "name": "common", "script": "scripts/common.sh"}
    assert steps(api) == [common, {"type": "shell", "script": "scripts/api.sh", "args": ["192.168.56.21"]}]
    assert steps(web) == [common, {"type": "shell", "script": "scripts/web.sh", "args": ["192.168.56.21"]}]
    assert "primary: true: devenv has no primary machine" in joined(text)
    # Vagrant brings them up one after another: depends_on keeps that order (and says how to drop it).
    assert (api.depends_on, web.depends_on) == ((), ("api",))
    assert "without depends_on devenv brings web up in parallel with api" in joined(text)
    assert 'name = "multi-loop-web"' in joined(text)  # noted as the provider's setting


def test_yaml_driven_machines_from_servers_yml(tmp_path, monkeypatch):
    monkeypatch.setenv("BASE_PORT", "18200")
    df, text = imported(tmp_path, "yaml-servers")
    alpha, beta = df.machines["alpha"], df.machines["beta"]
    assert (alpha.memory, alpha.cpus, beta.memory, beta.cpus) == (512 * MiB, 1, 1024 * MiB, 2)
    assert alpha.ports == (Port(guest=8000, host=18200),) and beta.ports == (Port(guest=8000, host=18201),)
    assert [(s.host, s.guest) for s in alpha.sync] == [(df.root / "shared", "/srv/shared")]  # /vagrant disabled
    assert [a.ip for a in alpha.networks + beta.networks] == ["10.10.10.11", "10.10.10.12"]
    assert [s.run for s in alpha.provision] == ["always"]
    assert 'echo "alpha: $(cat /srv/shared/motd.txt)"' in alpha.provision[0].config["inline"]
    assert 'owner: "www-data", group: "www-data" (files keep their host owner and mode)' in joined(text)
    assert 'Vagrant box "generic/debian12" (Debian 12)' in text


@pytest.mark.parametrize(
    ("driver", "memory", "cpus", "box_note"),
    [
        # No docker block: the first provider declared (VirtualBox's customize, with its box override).
        ("docker", 2048, 2, 'Vagrant box "bento/ubuntu-22.04" is Ubuntu'),
        # The libvirt block, with its own box override (a Debian 12 box).
        ("libvirt", 1536, 3, 'Vagrant box "generic/debian12" (Debian 12)'),
    ],
)
def test_provider_blocks_of_three_providers(tmp_path, driver, memory, cpus, box_note):
    df, text = imported(tmp_path, "providers", driver)
    m = df.machines["default"]
    assert (m.memory, m.cpus, m.box) == (memory * MiB, cpus, "debian-12")
    assert box_note in text
    assert 'vmx["memsize"]' not in text or "vmware_desktop" in text
    assert "the vmware_desktop provider's memory (4096MiB, used when Vagrant runs on vmware_desktop)" in joined(text)
    assert "--natdnshostresolver1" in text  # a customize devenv has no equivalent for: noted
    assert 'config.vm.box_version = ">= 20230101.0.0"' in text
    if driver == "libvirt":
        assert m.driver_options()["domain_type"] == "kvm"
        assert "nested = true" in text


def test_every_provisioner_type(tmp_path):
    df, text = imported(tmp_path, "provisioners")
    got = steps(df.machines["default"])
    assert got[0]["name"] == "vagrant user (import-vagrant)"  # scripts expect Vagrant's login user
    assert "useradd --create-home --shell /bin/bash --user-group vagrant" in got[0]["inline"]
    assert got[1] == {"type": "shell", "inline": "echo provisioning $1", "args": ["first"]}
    assert got[2] == {
        "type": "shell",
        "script": "scripts/setup.sh",
        "args": ["--role", "web", "--verbose"],  # Vagrant's string args, split as its shell would
        "env": {"APP_ENV": "dev", "DEBUG": "true"},
    }
    assert got[3] == {"type": "shell", "name": "user-setup", "script": "scripts/user.sh", "user": "vagrant"}
    assert got[4]["name"] == "restart app" and got[4]["run"] == "always"
    assert got[4]["inline"].startswith("exec bash -c \"$(cat <<'VAGRANT_SHELL'\n    if [[ -f /etc/app.conf ]]")
    # A script without #! that uses bash: copied in and run with bash.
    assert got[5] == {"type": "file", "source": "scripts/legacy.sh", "destination": "/var/tmp/vagrant-shell/legacy.sh"}
    assert got[6] == {"type": "shell", "inline": 'exec bash /var/tmp/vagrant-shell/legacy.sh "$@"'}
    assert got[7] == {"type": "file", "source": "files/app.conf", "destination": "/tmp/app.conf"}
    assert got[8] == {"type": "file", "source": "files/gitconfig", "destination": "/home/vagrant/.gitconfig"}
    assert got[9] == {
        "type": "ansible",
        "playbook": "ansible/site.yml",
        "extra_vars": {"app_port": 8080},  # ansible_user is devenv's to set: left out, with the reason
        "become": True,
        "tags": ["setup", "deploy"],
    }
    assert got[10] == {"type": "ansible", "playbook": "ansible/local.yml"}  # ansible_local: runs from the host
    assert got[11] == {"type": "shell", "run": "never", "inline": "echo never by default"}
    assert len(got) == 12
    for note in [
        'not carried over: upload_path: "/tmp/user.sh"',
        "not carried over: extra_vars.ansible_user: is set by devenv",
        'not carried over: groups: {web: ["default"]}',
        'inventory_path: "ansible/hosts"',
        'limit: "all"',
        'galaxy_role_file: "ansible/requirements.yml"',
        "changed: ansible_local: Vagrant installed Ansible in the machine",
        'vm.provision "shell" path: "https://get.docker.com"',
        'vm.provision "docker" (pull_images ["redis:7"]',
        'vm.provision "puppet" (manifests_path: "manifests"',
        'vm.provision "chef_solo" (add_recipe ["apache2"])',
        'vm.provision "salt" (masterless: true)',
    ]:
        assert note in joined(text), note


def test_forwarded_ports_in_every_spelling(tmp_path):
    df, text = imported(tmp_path, "ports")
    app, worker = df.machines["app"], df.machines["worker"]
    assert app.ports == (
        Port(guest=9090, host=19090, auto_correct=True),  # the top level's, inherited
        Port(guest=80, host=18080),
        Port(guest=443, host=18443),
        Port(guest=53, host=10053, host_ip="0.0.0.0", protocol="udp"),
        Port(guest=5432, host=15432),  # host_ip: "localhost" is devenv's 127.0.0.1
    )
    # The top level's port again in the second machine: Vagrant's auto_correct picks another port;
    # devenv picks a free one.
    assert worker.ports == (
        Port(guest=9090, host=None, auto_correct=True),
        Port(guest=8000, host=18000),
        *(Port(guest=p, host=p + 10000) for p in (3000, 3001, 3002)),
    )
    flat = joined(text)
    assert "(Vagrant's SSH port): devenv reaches the machine itself" in flat
    assert 'guest_ip: "10.0.2.15"' in flat
    assert "host port 19090 is forwarded already (auto_correct would pick another port" in flat


@pytest.mark.parametrize("driver", ["docker", "libvirt"])
def test_synced_folders_with_options_and_disabled(tmp_path, driver):
    df, text = imported(tmp_path, "synced", driver)
    got = [(s.host, s.guest, s.type, s.read_only, s.exclude, s.allow_outside) for s in df.machines["default"].sync]
    root = df.root
    rsync = ("rsync", False, (".git/", "node_modules/")) if driver == "libvirt" else ("auto", False, ())
    read_only = "rsync" if driver == "libvirt" else "auto"  # virtiofs cannot be read-only
    assert got == [
        (root / "src", "/srv/app", "auto", False, (), False),
        (root / "src", "/srv/app-rsync", *rsync, False),
        (root / "data", "/data", "auto", False, (), False),
        (root / "data", "/data-ro", read_only, True, (), False),
        (root.parent, "/corpus", "auto", False, (), True),  # "..": outside, allowed in plain sight
    ]
    flat = joined(text)
    assert 'synced_folder ".", "/vagrant": disabled in the Vagrantfile' in flat
    assert 'synced_folder "old", "/old": disabled in the Vagrantfile' in flat
    assert "the host folder cache does not exist (Vagrant makes it: create: true)" in flat
    assert "type nfs (NFS exported from the host)" in flat
    assert 'mount_options: ["dmode=775", "fmode=664"]' in flat
    assert not (root / "cache").exists()  # never made by import-vagrant


def test_private_networks_with_addresses_and_dhcp(tmp_path):
    df, text = imported(tmp_path, "networks")
    assert {n: net.subnet for n, net in df.networks.items()} == {
        "private": "192.168.33.0/24",
        "backend": "172.16.0.0/16",  # netmask 255.255.0.0; named after the VirtualBox internal network
        "dhcp": None,  # devenv picks it
    }
    nets = {name: [(a.name, a.ip) for a in m.networks] for name, m in df.machines.items()}
    assert nets == {
        "db": [("private", "192.168.33.10"), ("backend", "172.16.5.10")],
        "app": [("private", "192.168.33.11"), ("dhcp", None)],
        # .1 is the host's address on the network (as with Vagrant): devenv gives edge another one.
        "edge": [("private", None), ("dhcp", None)],
    }
    flat = joined(text)
    assert "public_network (the machine bridged onto your LAN): devenv does not bridge" in flat
    assert "private_network ip: fde4:8dba:82e1::c4: devenv's private networks are IPv4" in flat
    assert "auto_config: false" in flat


def test_a_vagrantfile_that_reads_env(tmp_path, monkeypatch):
    for k in ("VAGRANT_BOX", "VM_MEMORY", "VM_CPUS", "APP_PORT", "GREETING", "API_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    df, text = imported(tmp_path, "env")
    m = df.machines["default"]
    assert (m.memory, m.cpus, m.ports) == (1024 * MiB, 2, (Port(guest=3000, host=3000),))
    assert steps(m)[0]["env"] == {"GREETING": "hello", "API_TOKEN": ""}
    assert "VAGRANT_BOX, VM_MEMORY, VM_CPUS, APP_PORT, GREETING, API_TOKEN" in joined(text)

    monkeypatch.setenv("VM_MEMORY", "3072")
    monkeypatch.setenv("VM_CPUS", "4")
    monkeypatch.setenv("APP_PORT", "13000")
    monkeypatch.setenv("VAGRANT_BOX", "ubuntu/noble64")
    monkeypatch.setenv("API_TOKEN", "tok-0123456789")
    df, text = imported(tmp_path / "again", "env")
    m = df.machines["default"]
    assert (m.memory, m.cpus, m.ports) == (3072 * MiB, 4, (Port(guest=3000, host=13000),))
    assert 'Vagrant box "ubuntu/noble64" is Ubuntu' in text
    flat = joined(text)
    assert "env API_TOKEN holds the value the host variable API_TOKEN had at import" in flat


def test_legacy_vagrant_1_config(tmp_path):
    df, _ = imported(tmp_path, "legacy-v1")
    m = df.machines["default"]
    assert (m.hostname, m.memory, m.ports) == ("legacy", 768 * MiB, (Port(guest=80, host=8888),))
    assert [(s.host, s.guest) for s in m.sync] == [(df.root, "/data")]  # no /vagrant: "." is shared
    assert [(a.name, a.ip) for a in m.networks] == [("private", "192.168.33.40")]
    assert steps(m) == [{"type": "shell", "inline": "echo legacy"}]


def test_docker_provider_images_become_docker_boxes(tmp_path):
    df, text = imported(tmp_path, "docker-provider")
    cache, app = df.machines["cache"], df.machines["app"]
    assert cache.box == "docker:redis:7-alpine"
    assert cache.driver_options()["use_image_command"] is True
    assert cache.env == {"REDIS_ARGS": "--save ''"}
    assert cache.ports == (Port(guest=6379, host=16379),)
    assert (app.box, app.memory, app.cpus) == ("debian-12", 256 * MiB, 1.5)
    assert [(s.guest, s.read_only) for s in app.sync] == [("/vagrant", False), ("/app", True)]
    flat = joined(text)
    assert "create_args --privileged" in flat  # never carried over silently: devenv is unprivileged
    assert "devenv boots images, it does not build them" in flat
    df, _ = imported(tmp_path / "vm", "docker-provider", "libvirt")
    assert (df.machines["app"].memory, df.machines["app"].cpus) == (2048 * MiB, None)  # a VM's size: VirtualBox's


def test_plugins_triggers_and_what_the_vagrantfile_writes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "vagrant-ran"
    (bin_dir / "vagrant").write_text(f'#!/bin/sh\necho "$*" >> {marker}\n')
    (bin_dir / "vagrant").chmod(0o755)
    folder = copy_case(tmp_path, "plugins-triggers")
    before = tree(folder)
    r = cli(folder, "import-vagrant", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    assert not marker.exists()  # `vagrant plugin install` and `exec vagrant ...` never ran
    assert tree(folder) == before  # no hosts.generated, no .vagrant/generated
    flat = joined(r.stdout)
    for note in [
        "Vagrant plugins vagrant-vbguest, vagrant-hostmanager, vagrant-disksize",
        "the Vagrantfile writes .vagrant/generated: not written",
        "the Vagrantfile writes hosts.generated: not written",
        "trigger.before destroy",
        'trigger.after up (info: "Machine is up"',
        "config.ssh: forward_agent = true",
        "config.hostmanager: enabled = true, manage_host = true",
        'config.disksize: size = "50GB"',
        '"--ioapic", "on"',
        'post_up_message: "Ready: http://localhost:8080"',
        'Vagrant box "bento/debian-11" (Debian 11) -> debian-12',
    ]:
        assert note in flat, note
    (folder / "Devfile").write_text(r.stdout)
    assert devfile.load(folder / "Devfile").machines["default"].memory == 1024 * MiB  # from vb.customize


def test_a_vagrantfile_never_runs_vagrant_nor_writes(tmp_path):
    """However it asks (system, backticks, exec, spawn, popen, a shell script), `vagrant` does not
    run; Ruby's file API writes nothing; other commands run as Vagrant would run them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "vagrant-ran"
    (bin_dir / "vagrant").write_text(f'#!/bin/sh\necho "$*" >> {marker}\n')
    (bin_dir / "vagrant").chmod(0o755)
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "Vagrantfile").write_text(
        'system("vagrant plugin install vagrant-foo")\n'
        "version = `vagrant --version`\n"
        'IO.popen(["vagrant", "plugin", "list"]) { |io| io.read }\n'
        'Process.wait(spawn("vagrant", "status"))\n'
        'system("sh", "-c", "vagrant box add x")\n'
        "cpus = `nproc`.to_i\n"
        'File.open("notes.txt", "w") { |f| f.puts "x" }\n'
        'Dir.mkdir("made")\n'
        'exec "vagrant up"\n'
        'Vagrant.configure("2") { |c| c.vm.box = "debian/bookworm64"; c.vm.hostname = "cpus-#{cpus > 0}" }\n'
    )
    r = cli(folder, "import-vagrant", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["Vagrantfile"]
    text = joined(r.stdout)
    for line in (1, 2, 3, 4, 9):
        assert f"Vagrantfile:{line}: the Vagrantfile runs `vagrant" in text, line
    assert "Vagrantfile:7: the Vagrantfile writes notes.txt: not written" in text
    assert "Vagrantfile:8: the Vagrantfile writes made: not written" in text
    assert 'hostname = "cpus-true"' in r.stdout  # `nproc` ran


def test_secrets_are_named_in_notes_never_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-example")
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |config|\n'
        '  config.vm.box = "dummy"\n'
        "  config.vm.provider :aws do |aws, override|\n"
        '    aws.access_key_id = ENV["AWS_ACCESS_KEY_ID"]\n'
        '    aws.secret_access_key = ENV["AWS_SECRET_ACCESS_KEY"]\n'
        '    aws.tags = { "Owner" => ENV["AWS_ACCESS_KEY_ID"] }\n'
        '    override.ssh.username = "ubuntu"\n'
        "  end\n"
        '  config.ssh.password = "hunter2-vagrant"\n'
        "end\n"
    )
    text = import_vagrantfile(folder / "Vagrantfile", folder / "Devfile").text
    for secret in ("AKIAEXAMPLEKEY123", "wJalrXUtnFEMI-example", "hunter2-vagrant"):
        assert secret not in text
    flat = joined(text)
    assert 'access_key_id = "(not shown)"; secret_access_key = "(not shown)"' in flat
    assert 'tags = {Owner: "$AWS_ACCESS_KEY_ID"}' in flat and "password = (not shown)" in flat


def test_windows_line_endings_as_vagrant_treats_them(tmp_path):
    """Vagrant converts a shell script's CRLF to LF (binary: false, its default): the inline script
    is converted; a script file cannot be (nothing is written into the project), so it is noted."""
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "Vagrantfile").write_bytes(
        b'Vagrant.configure("2") do |config|\r\n'
        b'  config.vm.box = "debian/bookworm64"\r\n'
        b'  config.vm.provision "shell", inline: <<-SHELL\r\n    echo one\r\n    echo two\r\n  SHELL\r\n'
        b'  config.vm.provision "shell", path: "b.sh"\r\n'
        b"end\r\n"
    )
    (folder / "b.sh").write_bytes(b"#!/bin/sh\r\necho hi\r\n")
    result = import_vagrantfile(folder / "Vagrantfile", folder / "Devfile")
    (folder / "Devfile").write_text(result.text)
    inline, script = steps(devfile.load(folder / "Devfile").machines["default"])
    assert inline["inline"] == "    echo one\n    echo two\n"
    assert script == {"type": "shell", "script": "b.sh"}
    assert "b.sh has Windows line endings, which Vagrant converted before running it" in joined(result.text)


def test_vagrant_merge_rules(tmp_path):
    """Named provisioners override by name (in place only with preserve_order), synced folders by
    guest path, forwarded ports by host port; a `for` loop closes over one variable, as in Vagrant."""
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |config|\n'
        '  config.vm.box = "debian/bookworm64"\n'
        '  config.vm.provision "a", type: "shell", inline: "echo a"\n'
        '  config.vm.provision "b", type: "shell", inline: "echo b"\n'
        '  config.vm.provision "c", type: "shell", inline: "echo c"\n'
        '  config.vm.synced_folder ".", "/src"\n'
        '  config.vm.network "forwarded_port", guest: 80, host: 18081\n'
        "  for i in 1..2\n"
        '    config.vm.define "n#{i}" do |n|\n'
        '      n.vm.hostname = "host-#{i}"\n'
        "    end\n"
        "  end\n"
        '  config.vm.define "n1" do |n|\n'
        '    n.vm.provision "a", type: "shell", inline: "echo A"\n'
        '    n.vm.provision "b", type: "shell", inline: "echo B", preserve_order: true\n'
        '    n.vm.synced_folder ".", "/src", disabled: true\n'
        '    n.vm.network "forwarded_port", guest: 8080, host: 18081\n'
        "  end\n"
        "end\n"
    )
    result = import_vagrantfile(folder / "Vagrantfile", folder / "Devfile")
    (folder / "Devfile").write_text(result.text)
    df = devfile.load(folder / "Devfile")
    n1, n2 = df.machines["n1"], df.machines["n2"]
    assert [s.config["inline"] for s in n1.provision] == ["echo B", "echo c", "echo A"]
    assert [s.config["inline"] for s in n2.provision] == ["echo a", "echo b", "echo c"]
    assert n1.sync == () and [s.guest for s in n2.sync] == ["/src"]  # "." shared: no /vagrant either
    # n1's port replaced the top level's (same host port); n2 still has the top level's, which both
    # would bind: Vagrant refuses that collision, devenv picks n2 a free port.
    assert n1.ports == (Port(guest=8080, host=18081),) and n2.ports == (Port(guest=80, host=None),)
    assert n1.hostname == n2.hostname == "host-2"  # Vagrant's own for-loop gotcha, kept


# ---------------------------------------------------------------------------------------------
# Bad input


def test_a_vagrantfile_that_raises_is_reported_at_its_own_line(tmp_path):
    folder = copy_case(tmp_path, "raises")
    with pytest.raises(DevfileError) as err:
        import_vagrantfile(folder / "Vagrantfile", folder / "Devfile")
    [problem] = err.value.problems
    assert (problem.file.endswith("Vagrantfile"), problem.line) == (True, 6)
    assert problem.message.startswith("NameError: undefined local variable or method `settings'")

    r = cli(folder, "import-vagrant", "-o", "Devfile")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "error: Vagrantfile does not load",
        "  Vagrantfile:6: NameError: undefined local variable or method `settings' for main:Object",
        "hint: fix it (Vagrant stops at the same place); nothing was written",
    ]
    assert not (folder / "Devfile").exists()


def test_a_syntax_error_and_an_abort_at_their_lines(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "Vagrantfile").write_text('Vagrant.configure("2") do |config|\n  config.vm.box = "x"\n  end end\n')
    r = cli(folder, "import-vagrant")
    assert r.returncode == 2
    assert "  Vagrantfile:3: SyntaxError: syntax error, unexpected `end'" in r.stderr
    (folder / "Vagrantfile").write_text("\n\nabort 'install vagrant-foo first'\n")
    r = cli(folder, "import-vagrant")
    assert r.returncode == 2
    assert "  Vagrantfile:3: it stops here (exit 1): install vagrant-foo first" in r.stderr


def test_missing_script_and_file_are_problems_at_their_vagrantfile_lines(tmp_path):
    folder = copy_case(tmp_path, "missing-script")
    r = cli(folder, "import-vagrant", "-o", "Devfile")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "error: Vagrantfile names 2 files that do not exist",
        f'  Vagrantfile:3: vm.provision "shell" path: script not found: provision/bootstrap.sh (in {folder})',
        f'  Vagrantfile:4: vm.provision "file" source: file not found: conf/app.ini (in {folder})',
        "hint: Vagrant would stop on them too: add them or fix the paths, then import again; nothing was written",
    ]
    assert not (folder / "Devfile").exists()


def test_the_evaluation_is_time_limited(tmp_path):
    folder = copy_case(tmp_path, "slow")
    t0 = time.monotonic()
    r = cli(folder, "import-vagrant", "--timeout", "1", "-o", "Devfile")
    took = time.monotonic() - t0
    assert r.returncode == 6, r.stderr
    assert f"error: the Vagrantfile {folder / 'Vagrantfile'} did not finish loading within 1 s" in r.stderr
    assert "--timeout SECONDS" in r.stderr
    assert took < 20 and not (folder / "Devfile").exists()
    with pytest.raises(CommandFailed, match="within 0.5 s"):
        import_vagrantfile(folder / "Vagrantfile", folder / "Devfile", timeout=0.5)


def test_no_ruby_is_one_line_saying_how_to_install_it(tmp_path, monkeypatch):
    folder = copy_case(tmp_path, "python-web")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    r = cli(folder, "import-vagrant", env={"PATH": str(empty)})
    assert r.returncode == 3
    assert r.stderr.splitlines() == [
        "error: import-vagrant needs Ruby to read the Vagrantfile and found no `ruby` on PATH: install it with "
        "`apt-get install ruby` (Debian/Ubuntu)"
    ]
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BackendUnavailable):
        import_vagrantfile(folder / "Vagrantfile", folder / "Devfile")


def test_a_stale_vagrant_folder_is_ignored_and_the_project_untouched(tmp_path):
    folder = copy_case(tmp_path, "multi-loop")
    machines = folder / ".vagrant" / "machines"
    for name in ("web", "api"):
        d = machines / name / "virtualbox"
        d.mkdir(parents=True)
        (d / "id").write_text("5f0c-stale-uuid")
        (d / "action_provision").write_text("1.5:5f0c")
        (d / "private_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (folder / ".vagrant" / "rgloader").mkdir()
    before = tree(folder)
    r = cli(folder, "import-vagrant")
    assert r.returncode == 0, r.stderr
    assert tree(folder) == before  # nothing read and written back, nothing added
    r = cli(folder, "import-vagrant", "-o", "Devfile")
    assert r.returncode == 0, r.stderr
    assert "wrote Devfile (2 docker machine(s): api, web;" in r.stderr
    after = tree(folder)
    assert set(after) - set(before) == {"Devfile"} and {k: after[k] for k in before} == before
    assert (folder / "Devfile").stat().st_mode & 0o777 == 0o644


def test_output_elsewhere_rebases_paths_or_is_refused(tmp_path):
    folder = copy_case(tmp_path, "multi-loop")
    # A Devfile in the folder above: its folder is the project root, the paths say vm/... .
    r = cli(tmp_path, "import-vagrant", "proj", "-o", "Devfile")
    assert r.returncode == 0, r.stderr
    df = devfile.load(tmp_path / "Devfile")
    assert df.root == tmp_path
    assert [s.config["script"] for s in df.machines["web"].provision] == [
        "proj/scripts/common.sh",
        "proj/scripts/web.sh",
    ]
    assert [s.host for s in df.machines["web"].sync] == [folder]
    assert "Paths are relative to this file's folder" in (tmp_path / "Devfile").read_text()
    # Printed from the folder above: the same (`> Devfile` puts it there).
    r = cli(tmp_path, "import-vagrant", "proj")
    assert r.returncode == 0 and 'script = "proj/scripts/web.sh"' in r.stdout
    # Printed from elsewhere: as the Devfile in the project folder says it.
    elsewhere = tmp_path / "else"
    elsewhere.mkdir()
    r = cli(elsewhere, "import-vagrant", str(folder))
    assert r.returncode == 0 and 'script = "scripts/web.sh"' in r.stdout
    # Written beside the project, not above it: every path would be outside the Devfile's project.
    r = cli(tmp_path, "import-vagrant", "proj", "-o", "else/Devfile")
    assert r.returncode == 2 and not (elsewhere / "Devfile").exists()
    assert f"error: cannot write the Devfile in {elsewhere}: the Vagrant project {folder} is not inside" in r.stderr
    assert f"(-o {folder / 'Devfile'})" in r.stderr
    # An existing Devfile is kept without --force.
    r = cli(folder, "import-vagrant", "-o", "Devfile")
    assert r.returncode == 0
    r = cli(folder, "import-vagrant", "-o", "Devfile")
    assert r.returncode == 2 and "Devfile already exists" in r.stderr
    r = cli(folder, "import-vagrant", "-o", "Devfile", "--force", "--driver", "libvirt")
    assert r.returncode == 0 and devfile.load(folder / "Devfile").machines["web"].driver == "libvirt"
    r = cli(folder, "import-vagrant", "--driver", "virtualbox")
    assert r.returncode == 2 and "--driver virtualbox: not one of docker, libvirt" in r.stderr


@pytest.mark.parametrize("dangling", [False, True])
def test_output_never_writes_through_a_planted_link(tmp_path, dangling):
    folder = copy_case(tmp_path, "python-web")
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_text("precious\n")
    (folder / "Devfile").symlink_to(victim)
    r = cli(folder, "import-vagrant", "-o", "Devfile")
    assert r.returncode == 2 and "Devfile already exists" in r.stderr
    r = cli(folder, "import-vagrant", "-o", "Devfile", "--force")
    assert r.returncode == 0, r.stderr
    assert not (folder / "Devfile").is_symlink() and devfile.load(folder / "Devfile").machines
    assert victim.exists() is not dangling and (dangling or victim.read_text() == "precious\n")


def test_the_vagrantfile_itself_may_be_given(tmp_path):
    folder = copy_case(tmp_path, "python-web")
    r = cli(tmp_path, "import-vagrant", str(folder / "Vagrantfile"))
    assert r.returncode == 0, r.stderr
    assert 'host = "proj"' in r.stdout  # printed from the folder above: relative to it


def test_the_import_modules_are_not_loaded_by_other_commands(tmp_path):
    folder = copy_case(tmp_path, "python-web")
    assert cli(folder, "import-vagrant", "-o", "Devfile").returncode == 0
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith('devenv.vagrantfile'))))\n"
        "sys.argv = ['devenv', 'validate']\n"
        "from devenv.cli.app import main\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------
# Pieces


@pytest.mark.parametrize(
    ("vagrant_box", "kind", "says"),
    [
        ("debian/bookworm64", "info", "(Debian 12)"),
        ("debian/bullseye64", "changed", "(Debian 11) -> debian-12"),
        ("debian/contrib-buster64", "changed", "(Debian 10)"),
        ("debian/testing64", "changed", "Debian (testing/unstable)"),
        ("bento/debian-12", "info", "(Debian 12)"),
        ("bento/debian-12.5", "info", "(Debian 12)"),
        ("bento/debian-11.9", "changed", "(Debian 11)"),
        ("generic/debian12", "info", "(Debian 12)"),
        ("generic/debian10", "changed", "(Debian 10)"),
        ("ubuntu/jammy64", "changed", "is Ubuntu"),
        ("hashicorp/precise64", "changed", "is Ubuntu"),
        ("centos/7", "changed", "Red Hat family"),
        ("generic/alpine318", "changed", "Alpine Linux"),
        ("gusztavvargadr/windows-server", "changed", "Windows"),
        ("mycompany/base", "changed", "devenv boots its own boxes, not Vagrant Cloud's"),
        (None, "changed", "names no box"),
    ],
)
def test_box_table(vagrant_box, kind, says):
    box, got_kind, text = boxes.map_box(vagrant_box)
    assert (box, got_kind) == ("debian-12", kind)
    assert says in text and (vagrant_box is None or f'"{vagrant_box}"' in text)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_toml_strings_read_back_as_written(text):
    for rendered in (toml.basic_string(text), toml.string(text)):
        value = tomllib.loads(f"x = {rendered}\n")["x"]
        assert value == text.encode("utf-8", "replace").decode("utf-8")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_toml_comments_stay_comments(text):
    lines = toml.comment_lines(text)
    assert tomllib.loads("\n".join(lines) + "\nx = 1\n") == {"x": 1}


def test_a_bash_inline_script_runs_under_bash_from_sh(tmp_path):
    require_tool("dash", "apt-get install dash")
    require_tool("bash", "apt-get install bash")
    script = 'if [[ "$1" == a ]]; then echo "got ( $1 )"; fi\narr=(x y); echo "${arr[1]}" $\'t\\tab\'\ncat <<EOF\nVAGRANT_SHELL\nEOF\n'
    inline = bash_wrapped(script)
    # As devenv's shell step runs it: /bin/sh -c SCRIPT devenv-shell ARGS...
    r = subprocess.run(["dash", "-c", "exec 2>&1; " + inline, "devenv-shell", "a"], capture_output=True, text=True)
    assert r.stdout == "got ( a )\ny t\tab\nVAGRANT_SHELL\n", r.stdout


def test_validate_knows_vagrant_habits(tmp_path):
    (tmp_path / "Devfile").write_text(
        "[machines.web]\n"
        'box = "ubuntu/jammy64"\n'
        'ip = "192.168.56.10"\n'
        "vb = { memory = 1024 }\n"
        "memory_mb = 1024\n"
        "forwarded_port = []\n"
        'provision = [{ type = "shell", path = "setup.sh" }, { type = "ansible_local", playbook = "p.yml" }]\n'
    )
    _, problems = devfile.check_file(tmp_path / "Devfile")
    got = {p.key: p.message for p in problems}
    assert got["machines.web.box"].startswith("'ubuntu/jammy64' is a Vagrant Cloud box: devenv boots its own boxes")
    assert "`devenv import-vagrant`" in got["machines.web.box"] and "bento/debian-*" in got["machines.web.box"]
    assert got["machines.web.ip"].startswith("unknown key: a fixed address goes in networks = [{ name = ")
    assert got["machines.web.vb"].startswith('unknown key: memory and CPUs are keys of the machine: memory = "2GiB"')
    assert got["machines.web.memory_mb"] == got["machines.web.vb"]
    assert got["machines.web.forwarded_port"].startswith("unknown key: did you mean 'ports'?")
    assert got["machines.web.provision[0].path"].startswith("unknown key: did you mean 'script'?")
    assert 'type = "ansible"' in got["machines.web.provision[1].type"]
    # The generic guess is still there for other keys, and a real box name still validates.
    (tmp_path / "Devfile").write_text('[machines.web]\nbox = "debian-12"\nhostnme = "x"\n')
    _, problems = devfile.check_file(tmp_path / "Devfile")
    assert [p.message for p in problems] == ["unknown key (did you mean 'hostname'?)"]


NOT_USABLE = [
    "The provider 'virtualbox' that was requested to back the machine",
    "'default' is reporting that it isn't usable on this system. The",
    "reason is shown below:",
    "",
    "VirtualBox is complaining that the installation is incomplete. Please",
    "run `VBoxManage --version` to see the error message which should contain",
    "instructions on how to fix this error.",
]


@pytest.mark.parametrize("error", ["NoDefaultProvider", "ProviderNotUsable"])
def test_bridge_shows_vagrants_advice_whole_when_it_has_no_usable_provider(tmp_path, error):
    advice = (
        NOT_USABLE
        if error == "ProviderNotUsable"
        else [
            "No usable default provider could be found for your system.",
            "",
            "Vagrant relies on interactions with 3rd party systems, known as",
            '"providers", to provide Vagrant with resources to run development',
            "environments. Examples are VirtualBox, VMware, Hyper-V.",
            "",
            "The easiest solution to this message is to install VirtualBox, which",
            "is available for free on all major platforms.",
            "",
            "If you believe you already have a provider available, make sure it",
            "is properly installed and configured. You can see more details about",
            "why a particular provider isn't working by forcing usage with",
            "`vagrant up --provider=PROVIDER`, which should give you a more specific",
            "error message for that particular provider.",
        ]
    )
    escaped = "\\n".join(advice).replace(",", "%!(VAGRANT_COMMA)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vagrant"
    fake.write_text(
        "#!/bin/sh\n"
        "case \"$1\" in --version) echo 'Vagrant 2.3.4'; exit 0;; esac\n"
        "cat <<'EOF'\n"
        f"1700000000,,error-exit,Vagrant::Errors::{error},{escaped}\n"
        "EOF\n"
        "exit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    folder = copy_case(tmp_path, "python-web")
    r = cli(tmp_path, "import-vagrant", "--bridge", "proj", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert r.returncode == 6, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == f"error: `vagrant status` failed in {folder}: Vagrant has no usable provider on this host:"
    assert lines[1 : 1 + len(advice)] == [f"  {a}".rstrip() for a in advice]
    assert lines[-1].startswith("hint: install a provider Vagrant can use here")
    assert "`devenv import-vagrant DIR` (without --bridge)" in lines[-1]
