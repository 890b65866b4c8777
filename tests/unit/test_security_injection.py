"""Injection through the Devfile's options (round 2, slice G items 1-3).

1. A Devfile/box/recipe string reaching ssh: `ssh_user` with a newline injected directives into
   `devenv ssh-config` output (ProxyCommand = host code execution once appended to ~/.ssh/config).
   Checked at every entry (option tables, recipes, box metadata) and again in SshTransport, and the
   generated config is parsed back by the real OpenSSH client (`ssh -G`).
2. A Devfile's libvirt `uri` may not name a program (`qemu+ext`, `command=`), a file or a socket.
3. The "runs code on this host" notice covers the box recipes the Devfile's boxes build from, and
   `devenv box build`.

Every case is a crafted Devfile / recipe written here, run through the real `devenv` CLI
(CliRunner, as `devenv` runs it) or the real SshTransport; nothing is connected to.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devenv.cli import ui
from devenv.errors import UsageError
from devenv.transports.ssh import SshTransport
from tests.support import missing

# Ways a value can carry more than one ssh_config directive or be read as an option.
BAD_USERS = [
    "root\n  ProxyCommand sh -c 'id > /tmp/devenv-pwned'",
    "root\nHost *\n  PermitLocalCommand yes\n  LocalCommand touch /tmp/devenv-pwned",
    "root\r\n  ProxyCommand id",
    "root ProxyCommand=id",
    "root\tProxyCommand=id",
    "-oProxyCommand=id",
    "-lroot",
    '"root" ProxyCommand id',
    "root#comment",
    "%d",
    "${HOME}",
    "root\x00x",
    "ro\u2028ot",
    "",
]
INJECTED = ("proxycommand", "localcommand", "permitlocalcommand yes", "proxyjump", "include")


def _cli(root: Path, *args: str):
    from devenv.cli.app import app_for

    argv = ["-f", str(root / "Devfile"), *args]
    result = CliRunner().invoke(app_for(argv), argv)
    assert "Traceback" not in result.output, result.output
    return result


def _toml_str(value: str) -> str:
    """A TOML basic string holding exactly ``value`` (control characters as \\uXXXX escapes)."""
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or ch in "\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "devenv-home"
    monkeypatch.setenv("DEVENV_HOME", str(h))
    monkeypatch.delenv("DEVENV_LIBVIRT_URI", raising=False)
    ui.configure()
    return h


def _project(tmp_path: Path, body: str) -> Path:
    root = tmp_path / "proj"
    root.mkdir(exist_ok=True)
    (root / "Devfile").write_text('[project]\nname = "p"\n' + textwrap.dedent(body))
    return root


def _libvirt_project(tmp_path: Path, key: str, value: str) -> Path:
    """A project whose one libvirt machine sets [machines.dev.libvirt] KEY = VALUE."""
    return _project(
        tmp_path,
        f"""
        [machines.dev]
        driver = "libvirt"
        box = "debian-12"
        libvirt = {{ {key} = {_toml_str(value)} }}
        """,
    )


def _ssh_g(tmp_path: Path, block: str, alias: str) -> dict[str, list[str]]:
    """What the real OpenSSH client reads from ``block`` for ``alias`` (`ssh -G`, no connection)."""
    if shutil.which("ssh") is None:
        missing("the OpenSSH client is not installed (apt-get install openssh-client)")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(block)
    r = subprocess.run(["ssh", "-G", "-F", str(cfg), alias], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    seen: dict[str, list[str]] = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(" ")
        seen.setdefault(key, []).append(value)
    return seen


# -- 1. ssh_user and every value that reaches ssh ------------------------------------------------


@pytest.mark.parametrize("driver", ["libvirt", "virtualbox"])
@pytest.mark.parametrize("user", BAD_USERS)
def test_a_devfile_ssh_user_that_is_not_a_login_name_is_refused_by_validate(tmp_path, home, driver, user):
    root = _project(
        tmp_path,
        f"""
        [machines.dev]
        driver = "{driver}"
        box = "debian-12"
        {driver} = {{ ssh_user = {_toml_str(user)} }}
        """,
    )
    r = _cli(root, "validate")
    assert r.exit_code == 2, r.output
    assert f"machines.dev.{driver}.ssh_user" in r.output
    # The refusal quotes the value on one line: it cannot forge further problem lines.
    lines = r.output.splitlines()
    assert len(lines) == 2 and lines[1].startswith("error: 1 problem"), r.output
    assert "\n  ProxyCommand" not in r.output and "\nHost *" not in r.output


@pytest.mark.parametrize("user", ["root", "debian", "vagrant", "_svc", "dev-user", "u1"])
def test_a_login_name_is_accepted(tmp_path, home, user):
    root = _libvirt_project(tmp_path, "ssh_user", user)
    r = _cli(root, "validate")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("user", BAD_USERS)
def test_a_recipe_cloud_image_ssh_user_is_checked_with_the_same_pattern(tmp_path, home, user):
    from devenv.errors import DevfileError
    from devenv.model import recipe as boxes

    (tmp_path / "boxes").mkdir()
    recipe = tmp_path / "boxes" / "cloud.toml"
    recipe.write_text(
        'name = "cloud"\nversion = "1"\noutputs = ["libvirt"]\n'
        f'sources = [{{ type = "cloud-image", url = "https://example.invalid/x.qcow2", sha256 = "{"0" * 64}", '
        f"ssh_user = {_toml_str(user)} }}]\n"
    )
    with pytest.raises(DevfileError) as exc:
        boxes.load_recipe(recipe)
    assert any("ssh_user" in p for p in exc.value.problems)


def test_one_user_pattern_for_devfile_options_recipes_and_box_metadata():
    """The box's devenv.json check, the recipe source and the option tables use the same rule."""
    from devenv.boxes import vagrantbox as boxfile
    from devenv.drivers.libvirt import driver as libvirt
    from devenv.drivers.virtualbox import driver as virtualbox
    from devenv.model import recipe as boxes
    from devenv.model.schema import USER_NAME_PATTERN

    assert boxfile._USER_RE.pattern == USER_NAME_PATTERN
    for table in (libvirt._OPTIONS, virtualbox._OPTIONS):
        assert table.fields["ssh_user"].node.pattern == USER_NAME_PATTERN
    assert boxes._SOURCE.fields["ssh_user"].node.pattern == USER_NAME_PATTERN


@pytest.mark.parametrize("user", BAD_USERS)
def test_ssh_transport_refuses_a_user_that_ssh_would_read_as_more(tmp_path, user):
    with pytest.raises(UsageError) as exc:
        SshTransport(machine="dev", host="127.0.0.1", port=2222, user=user, key=tmp_path / "k", known_hosts=tmp_path)
    assert "\n" not in exc.value.message.replace("\\n", "")


@pytest.mark.parametrize(
    "host",
    ["-oProxyCommand=id", "127.0.0.1\n  ProxyCommand id", "h ProxyCommand=id", "%h", "h#x", "", "h;id", "${X}"],
)
def test_ssh_transport_refuses_a_host_that_is_an_option_or_a_directive(tmp_path, host):
    with pytest.raises(UsageError):
        SshTransport(machine="dev", host=host, port=2222, user="root", key=tmp_path / "k", known_hosts=tmp_path)


@pytest.mark.parametrize("port", [0, 70000, -1, True, "22\n  ProxyCommand id", "22"])
def test_ssh_transport_refuses_a_port_that_is_not_a_port_number(tmp_path, port):
    with pytest.raises(UsageError):
        SshTransport(machine="dev", host="127.0.0.1", port=port, user="root", key=tmp_path / "k", known_hosts=tmp_path)


@pytest.mark.parametrize("alias", ["p-dev\n  ProxyCommand id", "p-dev *", "-p", "p dev", "p-dev\nHost *", "a%h"])
def test_ssh_config_refuses_a_host_alias_that_is_more_than_one_word(tmp_path, alias):
    t = SshTransport(
        machine="dev", host="127.0.0.1", port=2222, user="root", key=tmp_path / "k", known_hosts=tmp_path / "kh"
    )
    with pytest.raises(UsageError):
        t.ssh_config(alias)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "vm.example.test"])
def test_ssh_config_parsed_back_by_openssh_has_exactly_devenvs_directives(tmp_path, host):
    # Paths with spaces, quotes, '#' and backslashes too: every value reads back as written, no more.
    folder = tmp_path / 'my pro\'ject #1 \\ "q"' / ".devenv"  # '%' is shown unexpanded by -G
    folder.mkdir(parents=True)
    t = SshTransport(
        machine="dev", host=host, port=40022, user="debian", key=folder / "id_ed25519", known_hosts=folder / "kh"
    )
    seen = _ssh_g(tmp_path, t.ssh_config("p-dev"), "p-dev")
    assert seen["user"] == ["debian"]
    assert seen["hostname"] == [host]
    assert seen["port"] == ["40022"]
    assert seen["identityfile"] == [str(folder / "id_ed25519")]
    assert seen["userknownhostsfile"] == [str(folder / "kh")]
    assert seen["stricthostkeychecking"] == ["true"]
    assert "proxycommand" not in seen and "localcommand" not in seen
    assert seen.get("permitlocalcommand", ["no"]) == ["no"]


def test_the_redteam_devfile_cannot_reach_ssh_config_through_any_path(tmp_path, home):
    """The reproduction: validate refuses it, and the transport refuses the value on its own."""
    user = "root\n  ProxyCommand sh -c 'id > /tmp/x; nc %h %p'\nHost *\n  PermitLocalCommand yes\n  LocalCommand touch /tmp/y"
    root = _libvirt_project(tmp_path, "ssh_user", user)
    assert _cli(root, "validate").exit_code == 2
    with pytest.raises(UsageError):
        SshTransport(machine="dev", host="127.0.0.1", port=40022, user=user, key=tmp_path / "k", known_hosts=tmp_path)


def test_devenv_ssh_config_output_goes_through_ui_cleaning(tmp_path, home, monkeypatch):
    """Even if a value got past every check, the command's output is escaped like every line."""
    from devenv.core import project

    root = _project(tmp_path, "[machines.dev]\ndriver = 'docker'\nbox = 'docker:busybox'\n")
    monkeypatch.setattr(
        project.Project, "ssh_config", lambda self, names=None: "Host p-dev\n  User root\x1b]0;owned\x07\n"
    )
    r = _cli(root, "ssh-config")
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output
    assert "\\x1b]0;owned\\x07" in r.output


@pytest.mark.parametrize("key,value", [("machine", "-h"), ("machine", "--provision"), ("machine", "/.*/"),
                                       ("machine", "web\nx"), ("provider", "docker --debug"), ("provider", "-x")])  # fmt: skip
def test_vagrant_machine_and_provider_options_cannot_be_read_as_options(tmp_path, home, key, value):
    root = _project(
        tmp_path,
        f"""
        [machines.dev]
        driver = "vagrant"
        vagrant = {{ dir = ".", {key} = {_toml_str(value)} }}
        """,
    )
    (root / "Vagrantfile").write_text('Vagrant.configure("2") { |c| c.vm.box = "x" }\n')
    r = _cli(root, "validate")
    assert r.exit_code == 2, r.output
    assert f"machines.dev.vagrant.{key}" in r.output


def test_the_vagrant_host_key_alias_is_checked_too(tmp_path):
    from devenv.drivers.vagrant.driver import PinnedSsh

    with pytest.raises(UsageError):
        PinnedSsh(
            alias="devenv-vagrant-x\n  ProxyCommand id",
            machine="dev",
            host="127.0.0.1",
            port=2222,
            user="vagrant",
            key=tmp_path / "k",
            known_hosts=tmp_path / "kh",
        )


@pytest.mark.parametrize("value", ["pc\nx", "-machine", "pc' x='y", "q35 ,accel=tcg"])
def test_libvirt_machine_type_is_a_name(tmp_path, home, value):
    root = _libvirt_project(tmp_path, "machine_type", value)
    r = _cli(root, "validate")
    assert r.exit_code == 2, r.output
    assert "machines.dev.libvirt.machine_type" in r.output


# -- 2. libvirt URIs -----------------------------------------------------------------------------

REFUSED_URIS = [
    "qemu+ext:///system?command=/proc/self/cwd/tools/helper",
    "qemu+ext:///session?command=./helper",
    "lxc+ext:///?command=/bin/sh",
    "qemu+ssh://host.example/system?command=/bin/evil",
    "qemu+ssh://host.example/system?netcat=/tmp/nc",
    "qemu+ssh://host.example/system?keyfile=/etc/shadow",
    "qemu+ssh://host.example/system?known_hosts=/dev/null",
    "qemu+ssh://host.example/system?sshauth=privkey&keyfile=./k",
    "qemu+libssh2://host.example/system?known_hosts_verify=ignore",
    "qemu+libssh://host.example/system",
    "qemu+unix:///system?socket=/proc/self/cwd/sock",
    "qemu:///system?socket=/tmp/sock",
    "qemu+tls://host.example/system?pkipath=/proc/self/cwd/pki",
    "qemu+tcp://host.example/system?no_verify=1",
    "qemu:///embed?root=/proc/self/cwd/r",
    "qemu:///system#x",
    "test:///proc/self/cwd/evil.xml",
    "test:///etc/passwd",
    "qemu+ssh://-oProxyCommand=id/system",
    "qemu+ssh://-oProxyCommand=id@host.example/system",
    "qemu+ssh://%2DoProxyCommand=id/system",
    "qemu+ssh://user:pass@host.example/system",
    "qemu://host.example/system",
    "qemu:///system\n",
    "qemu:///system?mode=evil",
    "xen:///system",
    "vbox:///session",
    "not a uri",
]


@pytest.mark.parametrize("uri", REFUSED_URIS)
def test_a_devfile_libvirt_uri_that_runs_or_reads_something_is_refused(tmp_path, home, uri):
    root = _libvirt_project(tmp_path, "uri", uri)
    r = _cli(root, "validate")
    assert r.exit_code == 2, r.output
    assert "machines.dev.libvirt.uri" in r.output and "refused" in r.output
    assert len(r.output.splitlines()) == 2, r.output  # the problem and the summary: nothing forged
    assert "DEVENV_LIBVIRT_URI" in r.output  # the way out is the host user's, not the repository's


@pytest.mark.parametrize("uri", REFUSED_URIS)
def test_a_refused_uri_is_never_connected_to_by_other_verbs(tmp_path, home, uri, monkeypatch):
    """status/up/destroy load the Devfile the same way: the URI never reaches libvirt.open."""
    from devenv.drivers.libvirt import driver as libvirt

    opened: list[str] = []
    monkeypatch.setattr(libvirt.LibvirtDriver, "conn", lambda self, u=None: opened.append(u) or 1 / 0)
    root = _libvirt_project(tmp_path, "uri", uri)
    for verb in (["status"], ["destroy", "-f"], ["up"]):
        r = _cli(root, *verb)
        assert r.exit_code == 2, (verb, r.output)
    assert opened == []


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///system",
        "qemu:///session",
        "qemu+unix:///system",
        "qemu+unix:///session?mode=direct",
        "qemu+ssh://dev@host.example:2222/system",
        "qemu+ssh://host.example/system?no_tty=1",
        "qemu+tls://[::1]/system",
        "qemu+tcp://10.0.0.2/system",
        "test:///default",
    ],
)
def test_the_usual_libvirt_uris_are_accepted(tmp_path, home, uri):
    root = _libvirt_project(tmp_path, "uri", uri)
    r = _cli(root, "validate")
    assert r.exit_code == 0, r.output


def test_the_host_users_own_uri_is_not_limited(monkeypatch):
    """DEVENV_LIBVIRT_URI is set by the user on the host (not in the repository): it is the way out."""
    from devenv.drivers.libvirt.driver import LibvirtDriver

    monkeypatch.setenv("DEVENV_LIBVIRT_URI", "qemu+ssh://me@far.example/system?keyfile=/home/me/.ssh/k")
    assert LibvirtDriver().default_uri() == "qemu+ssh://me@far.example/system?keyfile=/home/me/.ssh/k"


def test_the_docker_driver_takes_no_engine_address_from_the_devfile():
    """The docker driver's engine comes from DOCKER_HOST / the context on the host only."""
    from devenv.drivers.docker.driver import _OPTIONS

    assert not {"host", "context", "docker_host", "tls", "tlscacert", "socket"} & set(_OPTIONS.fields)


# -- 3. the host notice covers box recipes and `box build` ---------------------------------------

ANSIBLE_RECIPE = """
name = "tools"
version = "1"
sources = [{ type = "image", image = "debian:12" }]
provision = [{ type = "ansible", playbook = "site.yml" }]
"""


def _recipe_project(tmp_path: Path, recipe: str = ANSIBLE_RECIPE, box: str = "tools") -> Path:
    root = _project(
        tmp_path,
        f"""
        [machines.dev]
        driver = "docker"
        box = "{box}"
        """,
    )
    (root / "boxes").mkdir()
    (root / "boxes" / "tools.toml").write_text(textwrap.dedent(recipe))
    (root / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    return root


def test_validate_shows_the_notice_for_an_ansible_step_of_the_devfiles_box_recipe(tmp_path, home):
    root = _recipe_project(tmp_path)
    r = _cli(root, "validate")
    assert r.exit_code == 0, r.output
    assert "reaches this host" in r.output
    assert "boxes/tools.toml" in r.output and "ansible playbook site.yml" in r.output
    assert "runs on this host" in r.output
    # Once per project (and again when the list changes).
    assert "reaches this host" not in _cli(root, "validate").output


def test_a_pinned_box_version_still_finds_its_recipe(tmp_path, home):
    root = _recipe_project(tmp_path, box="tools@1")
    assert "ansible playbook site.yml" in _cli(root, "validate").output


def test_defaults_box_counts_too(tmp_path, home):
    root = _recipe_project(tmp_path)
    (root / "Devfile").write_text(
        '[project]\nname = "p"\n[defaults]\ndriver = "docker"\nbox = "tools"\n[machines.dev]\n[machines.db]\n'
    )
    out = _cli(root, "validate").output
    assert out.count("ansible playbook site.yml") == 1, out  # one recipe, named once


def test_a_recipe_step_reading_outside_the_project_is_in_the_notice(tmp_path, home):
    outside = tmp_path / "outside.sh"
    outside.write_text("echo hi\n")
    recipe = f"""
    name = "tools"
    version = "1"
    sources = [{{ type = "image", image = "debian:12" }}]
    provision = [{{ type = "shell", script = "{outside}", allow_outside_project = true }}]
    """
    root = _recipe_project(tmp_path, recipe)
    r = _cli(root, "validate")
    assert r.exit_code == 0, r.output
    assert f"reads the host path {outside}" in r.output


def test_a_bundled_recipe_with_an_ansible_step_is_in_the_notice(tmp_path, home, monkeypatch):
    from devenv.model import recipe as boxes

    bundled = tmp_path / "bundled" / "boxes"
    bundled.mkdir(parents=True)
    (bundled / "tools.toml").write_text(textwrap.dedent(ANSIBLE_RECIPE))
    (bundled.parent / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    monkeypatch.setattr(boxes, "BUNDLED", bundled)
    root = _project(tmp_path, '[machines.dev]\ndriver = "docker"\nbox = "tools"\n')
    r = _cli(root, "validate")
    assert r.exit_code == 0, r.output
    assert f"{bundled / 'tools.toml'}" in r.output and "ansible playbook site.yml" in r.output


def test_up_with_box_counts_the_box_it_names(tmp_path, home):
    from devenv.model import devfile

    root = _recipe_project(tmp_path, box="docker:busybox")
    df = devfile.load(root / "Devfile")
    assert not devfile.host_reach(df)
    assert any("ansible playbook site.yml" in i for i in devfile.host_reach(df, extra_boxes=("tools",)))


def test_box_build_shows_the_notice_before_it_builds(tmp_path, home):
    root = _recipe_project(tmp_path)
    # `--output vagrant` is refused (the recipe has only docker) right after the notice: no engine used.
    r = _cli(root, "box", "build", "tools", "--output", "vagrant")
    assert r.exit_code == 2, r.output
    assert "box recipe" in r.output and "ansible playbook site.yml" in r.output
    assert r.output.index("reaches this host") < r.output.index("has no 'vagrant' output")


def test_a_recipe_without_host_reach_shows_no_notice(tmp_path, home):
    recipe = """
    name = "tools"
    version = "1"
    sources = [{ type = "image", image = "debian:12" }]
    provision = [{ type = "shell", inline = "true" }]
    """
    root = _recipe_project(tmp_path, recipe)
    assert "reaches this host" not in _cli(root, "validate").output
    assert "reaches this host" not in _cli(root, "box", "build", "tools", "--output", "vagrant").output
