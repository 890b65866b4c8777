"""The Vagrant bridge driver's pure parts: state mapping, ssh-config and error parsing, the
Devfile rules for vagrant machines, import-vagrant's output, and that nothing calls Vagrant
(or loads python-vagrant) unless a machine uses the driver."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devenv.cli.vagrant_import import devenv_name, render
from devenv.contract import MachineState
from devenv.drivers.vagrant.driver import (
    PinnedSsh,
    SshInfo,
    VagrantDriver,
    created_as,
    machine_data_dir,
    machine_readable_error,
    make_handle,
    map_state,
    parse_machine_readable,
    parse_ssh_config,
    split_handle,
    strip_progress_prefix,
    trim_vagrant_error,
)
from devenv.errors import BackendUnavailable, CommandFailed, MachineStateError
from devenv.model import devfile


@pytest.mark.parametrize(
    ("vagrant_state", "expected"),
    [
        ("running", MachineState.RUNNING),
        ("poweroff", MachineState.STOPPED),  # virtualbox halt
        ("stopped", MachineState.STOPPED),  # docker provider halt
        ("not running", MachineState.STOPPED),
        ("not_running", MachineState.STOPPED),
        ("shutoff", MachineState.STOPPED),  # vagrant-libvirt
        ("aborted", MachineState.STOPPED),
        ("saved", MachineState.SUSPENDED),  # virtualbox suspend
        ("paused", MachineState.SUSPENDED),  # vagrant-libvirt suspend
        ("frozen", MachineState.SUSPENDED),
        ("not_created", MachineState.NOT_CREATED),  # --machine-readable
        ("not created", MachineState.NOT_CREATED),  # human-short
        ("Running", MachineState.RUNNING),
        ("preparing", MachineState.STOPPED),
        ("gurumeditation", None),
        ("", None),
        (None, None),
    ],
)
def test_status_mapping(vagrant_state, expected) -> None:
    assert map_state(vagrant_state) is expected


REAL_SSH_CONFIG = """\
Host web
  HostName 127.0.0.1
  User vagrant
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/u/proj/.vagrant/machines/web/virtualbox/private_key
  IdentityFile /home/u/.vagrant.d/insecure_private_key
  IdentitiesOnly yes
  LogLevel FATAL

"""


def test_ssh_config_parsing() -> None:
    info = parse_ssh_config(REAL_SSH_CONFIG, "web")
    assert info == SshInfo(
        host="127.0.0.1",
        port=2222,
        user="vagrant",
        identity_files=(
            "/home/u/proj/.vagrant/machines/web/virtualbox/private_key",
            "/home/u/.vagrant.d/insecure_private_key",
        ),
    )
    assert SshInfo.from_dict(info.as_dict()) == info


def test_ssh_config_quotes_equals_comments_and_blocks() -> None:
    text = textwrap.dedent("""\
        # leading comment
        Host db
          HostName 10.0.0.5
          Port 22
          User root
          IdentityFile "/path with spaces/key"
        Host web
          HostName=127.0.0.1
          Port=2200
          User = vagrant
          IdentityFile "/k/web key"
    """)
    assert parse_ssh_config(text, "web") == SshInfo("127.0.0.1", 2200, "vagrant", ("/k/web key",))
    assert parse_ssh_config(text, "db") == SshInfo("10.0.0.5", 22, "root", ("/path with spaces/key",))
    assert parse_ssh_config(text, "other").host == "10.0.0.5"  # no such block: the first
    assert parse_ssh_config(text).host == "10.0.0.5"


def test_ssh_config_defaults_and_errors() -> None:
    assert parse_ssh_config("Host x\n  HostName h\n") == SshInfo("h", 22, "vagrant", ())
    with pytest.raises(CommandFailed, match="names no HostName"):
        parse_ssh_config("Host x\n  Port 22\n")
    with pytest.raises(CommandFailed, match="no Host block"):
        parse_ssh_config("")
    with pytest.raises(CommandFailed, match="bad Port"):
        parse_ssh_config("Host x\n  HostName h\n  Port twenty\n")


def test_identity_file_first_existing(tmp_path: Path) -> None:
    second = tmp_path / "insecure"
    second.write_text("k")
    info = SshInfo("h", 22, "u", (str(tmp_path / "missing"), str(second)))
    assert info.key() == str(second)
    assert SshInfo("h", 22, "u", ("/nope",)).key() == "/nope"
    assert SshInfo("h", 22, "u", ()).key() is None


STATUS_OUT = """\
1795742119,web,metadata,provider,docker
1795742119,web,provider-name,docker
1795742119,web,state,running
1795742119,web,state-human-short,running
1795742119,web,state-human-long,The container is created and running. You can stop it using\\n`vagrant halt`%!(VAGRANT_COMMA) see logs
"""
NOT_FOUND_OUT = (
    "1424099042,,ui,error,The machine with the name 'api' was not found configured for\\nthis Vagrant environment.\n"
    "1424099042,,error-exit,Vagrant::Errors::MachineNotFound,The machine with the name 'api' was not found "
    "configured for\\nthis Vagrant environment.\n"
)


def test_machine_readable_parsing() -> None:
    rows = parse_machine_readable(STATUS_OUT)
    assert ("web", "state", ["running"]) in rows
    assert rows[-1][2][0].endswith("You can stop it using\n`vagrant halt`, see logs")
    assert machine_readable_error(STATUS_OUT) is None
    cls, msg = machine_readable_error(NOT_FOUND_OUT)
    assert cls == "Vagrant::Errors::MachineNotFound"
    assert msg == "The machine with the name 'api' was not found configured for\nthis Vagrant environment."


# Vagrant 2.3.4's own words, as captured on our machines.
SYNTAX_ERROR = """\
Vagrant failed to initialize at a very early stage:

There is a syntax error in the following Vagrantfile. The syntax error
message is reproduced below for convenience:

/tmp/p/vm/Vagrantfile:3: syntax error, unexpected `end', expecting end-of-input
  end end
      ^~~
"""
LOAD_ERROR = """\
Vagrant failed to initialize at a very early stage:

There was an error loading a Vagrantfile. The file being loaded
and the error message are shown below. This is usually caused by
an invalid or undefined variable.

Path: /tmp/p/vm/Vagrantfile
Line number: 2
Message: undefined local variable or method `undefined_thing'

  config.vm.box = undefined_thing
                  ^^^^^^^^^^^^^^^
"""
CONFIG_ERROR = """\
There are errors in the configuration of this machine. Please fix
the following errors and try again:

docker provider:
* The following settings shouldn't exist: nonsense_option

"""
DOCKER_ERROR = """\
A Docker command executed by Vagrant didn't complete successfully!
The command run along with the output from the command is shown
below.

Command: ["docker", "run", "--name", "vm_web_1", "-d", "devenv-test/none:1", {:notify=>[:stdout, :stderr]}]

Stderr: Unable to find image 'devenv-test/none:1' locally
docker: Error response from daemon: pull access denied

Run 'docker run --help' for more information


Stdout:
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            SYNTAX_ERROR,
            [
                "/tmp/p/vm/Vagrantfile:3: syntax error, unexpected `end', expecting end-of-input",
                "  end end",
                "      ^~~",
            ],
        ),
        (
            LOAD_ERROR,
            [
                "/tmp/p/vm/Vagrantfile:2: undefined local variable or method `undefined_thing'",
                "  config.vm.box = undefined_thing",
                "                  ^^^^^^^^^^^^^^^",
            ],
        ),
        (LOAD_ERROR.replace("Line number: 2", "Line number: 0"), None),
        (CONFIG_ERROR, ["docker provider:", "* The following settings shouldn't exist: nonsense_option"]),
        (
            DOCKER_ERROR,
            [
                "A Docker command executed by Vagrant didn't complete successfully!",
                "Stderr: Unable to find image 'devenv-test/none:1' locally",
                "docker: Error response from daemon: pull access denied",
            ],
        ),
        (NOT_FOUND_OUT, ["The machine with the name 'api' was not found configured for", "this Vagrant environment."]),
    ],
)
def test_vagrant_errors_are_trimmed_to_their_key_lines(text, expected) -> None:
    lines = trim_vagrant_error(text)
    if expected is None:  # Vagrant says "Line number: 0" when it does not know
        assert lines[0] == "/tmp/p/vm/Vagrantfile: undefined local variable or method `undefined_thing'"
    else:
        assert lines == expected


def test_long_errors_are_capped() -> None:
    lines = trim_vagrant_error("\n".join(f"line {i}" for i in range(20)), limit=6)
    assert lines == ["line 0", "line 1", "line 2", "line 3", "line 4", "... (15 more lines)"]


def test_progress_prefix() -> None:
    assert strip_progress_prefix("==> web: Creating the container...\n", "web") == "Creating the container..."
    assert strip_progress_prefix("    web:   Name: vm_web_1", "web") == "  Name: vm_web_1"
    assert strip_progress_prefix("Bringing machine 'web' up", "web") == "Bringing machine 'web' up"


def test_handles() -> None:
    h = make_handle(Path("/p/with#hash/vm"), "web")
    assert h == "/p/with#hash/vm#web"
    assert split_handle(h) == (Path("/p/with#hash/vm"), "web")
    with pytest.raises(MachineStateError):
        split_handle("no-separator")


def test_created_is_read_from_vagrants_id_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("VAGRANT_DOTFILE_PATH", raising=False)
    assert created_as(tmp_path, "web") is None
    d = tmp_path / ".vagrant" / "machines" / "web" / "docker"
    d.mkdir(parents=True)
    (d / "index_uuid").write_text("x")
    assert created_as(tmp_path, "web") is None  # Vagrant keeps files after destroy; only `id` counts
    (d / "id").write_text("abc123\n")
    assert created_as(tmp_path, "web") == ("docker", "abc123")
    monkeypatch.setenv("VAGRANT_DOTFILE_PATH", ".other")
    assert machine_data_dir(tmp_path, "web") == tmp_path / ".other" / "machines" / "web"
    assert created_as(tmp_path, "web") is None


def test_not_created_needs_no_vagrant_call(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "Vagrantfile").write_text("")
    d = VagrantDriver()

    def boom(*_a, **_k):
        raise AssertionError("Vagrant was called")

    monkeypatch.setattr(d, "_vagrant", boom)
    h = make_handle(tmp_path, "web")
    assert d.state(h) is MachineState.NOT_CREATED
    assert d.ports(h) == []
    assert d.sweep("any-project") == []


def test_vagrant_missing_is_one_clear_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable) as exc:
        VagrantDriver().check_available()
    assert exc.value.message == "Vagrant is not installed (no `vagrant` command on PATH)"
    assert "apt-get install --no-install-recommends vagrant" in exc.value.hint


def test_pinned_ssh_checks_the_host_key_by_alias(tmp_path: Path) -> None:
    t = PinnedSsh(
        alias="devenv-vagrant-web",
        machine="web",
        host="127.0.0.1",
        port=2222,
        user="vagrant",
        key=tmp_path / "key",
        known_hosts=tmp_path / "known_hosts",
    )
    opts = t.options()
    assert "HostKeyAlias=devenv-vagrant-web" in opts and "StrictHostKeyChecking=yes" in opts
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in opts and opts[opts.index("-p") + 1] == "2222"
    cfg = t.ssh_config("p-web")
    assert "  StrictHostKeyChecking yes\n  HostKeyAlias devenv-vagrant-web\n" in cfg
    # Connection sharing never outlives a pinned key: another pin, another control folder.
    before = t._control_dir()
    (tmp_path / "known_hosts").write_text("devenv-vagrant-web ssh-ed25519 AAAA\n")
    assert t._control_dir() != before


# -- the Devfile ---------------------------------------------------------------------------------


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "Devfile"
    path.write_text(textwrap.dedent(text))
    _, found = devfile.check_text(path.read_text(), path)
    return [f"{p.key}: {p.message}" for p in found]


def test_vagrant_machine_needs_no_box(tmp_path: Path) -> None:
    assert problems(tmp_path, '[machines.v]\ndriver = "vagrant"\n[machines.v.vagrant]\ndir = "vm"\n') == []
    # Other drivers still need one.
    assert problems(tmp_path, '[machines.d]\ndriver = "docker"\n') == [
        'machines.d.box: is required, e.g. box = "debian-12" or box = "docker:IMAGE"'
    ]


def test_vagrant_table_rules(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    found = problems(
        tmp_path,
        """\
        [machines.v]
        driver = "vagrant"
        cpus = 2
        ports = [8080]
        sync = ["src:/src"]
        [machines.v.vagrant]
        machine = "web"
        transport = "telnet"
        dir = 3
        [machines.w]
        driver = "vagrant"
        """,
    )
    assert found == [
        "machines.v.cpus: the vagrant driver does not set cpus: Vagrant takes it from the Vagrantfile; set it there",
        "machines.v.ports: the vagrant driver does not forward ports: Vagrant takes it from the Vagrantfile; set it there",
        "machines.v.sync: the vagrant driver does not sync folders: Vagrant takes it from the Vagrantfile; set it there (synced_folder)",
        "machines.v.vagrant.transport: 'telnet' is not one of: auto, ssh, docker",
        "machines.v.vagrant.dir: expected a string, got an integer",
        "machines.v.vagrant.dir: is required",
        "machines.w.vagrant.dir: is required",
    ]


def test_import_renders_a_valid_devfile(tmp_path: Path) -> None:
    taken: set[str] = set()
    assert [devenv_name(n, taken) for n in ("web", "DB_1", "db-1", "_", "x" * 60)] == [
        "web",
        "db-1",
        "db-1-2",
        "machine",
        "x" * 41,
    ]
    (tmp_path / "my vms").mkdir()
    text = render([("web", "running", "docker"), ("DB_1", "not_created", None)], tmp_path / "my vms", "my vms")
    assert '[machines.db-1.vagrant]\ndir = "my vms"\nmachine = "DB_1"\n' in text
    assert "# Vagrant state when imported: not created" in text
    assert problems(tmp_path, text) == []
    df, _ = devfile.check_text(text, tmp_path / "Devfile")
    assert df is not None
    assert df.machines["web"].driver == "vagrant"
    assert df.machines["web"].driver_options() == {
        "dir": "my vms",
        "machine": "web",
        "provider": "docker",
        "transport": "auto",
    }


def test_cli_and_devfile_never_load_python_vagrant(tmp_path: Path) -> None:
    """Loading the CLI and a Devfile with a vagrant machine must not import python-vagrant."""
    (tmp_path / "Devfile").write_text('[machines.v]\ndriver = "vagrant"\n[machines.v.vagrant]\ndir = "."\n')
    code = (
        "import sys, devenv.cli.app\n"
        "from devenv.model import devfile\n"
        f"devfile.load(__import__('pathlib').Path({str(tmp_path / 'Devfile')!r}))\n"
        "assert 'vagrant' not in sys.modules, 'python-vagrant was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_non_vagrant_machines_never_run_vagrant(proj, tmp_path: Path, monkeypatch) -> None:
    """A Devfile without vagrant machines never spawns Vagrant (a stand-in on PATH would tell)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "vagrant-was-run"
    stand_in = bin_dir / "vagrant"
    stand_in.write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 99\n')
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    proj.devfile('[machines.m]\ndriver = "fake"\nbox = "busybox"\n')
    for args in (("up",), ("status", "--json"), ("ssh", "m", "-c", "echo hi"), ("halt",), ("destroy", "-f")):
        r = proj.cli(*args)
        assert r.exit_code == 0, r.output
    assert not marker.exists(), marker.read_text()
