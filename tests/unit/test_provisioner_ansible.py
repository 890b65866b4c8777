"""The ansible provisioner without an engine: validation, fingerprint, inventory, environment and run().

run() is driven against a stand-in ansible-playbook (a shell script on PATH) that records what it got.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from devenv.contract import Connection, Reporter
from devenv.errors import ProvisionError
from devenv.model.devfile import Step, check_file
from devenv.plugins import get_provisioner
from devenv.provisioners import RunContext, fingerprint
from devenv.provisioners import ansible as ans
from devenv.transports.docker import DockerTransport
from devenv.transports.env import EnvTransport
from devenv.transports.ssh import SshTransport
from tests.support import missing


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proj"
    (root / "ansible" / "roles" / "web" / "templates").mkdir(parents=True)
    (root / "ansible" / "site.yml").write_text("- hosts: all\n  roles: [web]\n")
    (root / "ansible" / "roles" / "web" / "templates" / "index.j2").write_text("v1 {{ greeting }}\n")
    monkeypatch.chdir(root)
    return root


def problems_of(root: Path, steps: str) -> list[str]:
    (root / "Devfile").write_text(f'[machines.a]\nbox = "busybox"\nprovision = [\n{textwrap.dedent(steps)}]\n')
    df, problems = check_file(root / "Devfile")
    assert (df is None) == bool(problems)
    return [str(p) for p in problems]


def step(**config) -> Step:
    config = {"type": "ansible", **config}
    return Step(index=0, type="ansible", config=config, run=config.get("run", "once"), name=config.get("name"))


# -- validation ------------------------------------------------------------------------------------


def test_a_valid_step_loads(project):
    assert (
        problems_of(
            project,
            """\
        { type = "ansible", playbook = "ansible/site.yml", become = true, tags = ["web"], skip_tags = ["slow"],
          extra_vars = { greeting = "hi", n = 3, on = true, list = [1, "a"], nested = { a = { b = 1.5 } } },
          inventory_vars = { ansible_python_interpreter = "/usr/bin/python3" }, name = "site", run = "always" },
    """.replace("\n          ", " "),
        )
        == []
    )


def test_validation_messages(project, tmp_path):
    (tmp_path / "elsewhere.yml").write_text("- hosts: all\n")
    assert problems_of(
        project,
        """\
        { type = "ansible" },
        { type = "ansible", playbook = "ansible/gone.yml" },
        { type = "ansible", playbook = "../elsewhere.yml" },
        { type = "ansible", playbook = "ansible/site.yml", extra_vars = { "2bad" = 1, when = 1979-05-27 } },
        { type = "ansible", playbook = "ansible/site.yml", inventory_vars = { ansible_host = "evil", ansible_ssh_common_args = "-o StrictHostKeyChecking=no" } },
        { type = "ansible", playbook = "ansible/site.yml", extra_vars = { ansible_host_key_checking = false, ansible_docker_host = "other" } },
        { type = "ansible", playbook = "ansible/site.yml", become = "yes", tags = ["a,b", "a,b"], skip_tags = "x", limit = "all" },
        { type = "ansible", playbook = "ansible/site.yml", extra_vars = "greeting=hi" },
    """,
    ) == [
        "Devfile:4: machines.a.provision[0].playbook: is required",
        "Devfile:5: machines.a.provision[1].playbook: file not found: ansible/gone.yml",
        f"Devfile:6: machines.a.provision[2].playbook: '../elsewhere.yml' is outside the project ({project}); "
        "set allow_outside_project = true on this step if you mean it",
        "Devfile:7: machines.a.provision[3].extra_vars.2bad: '2bad' is not a valid name: "
        "letters, digits, _ (not starting with a digit)",
        "Devfile:7: machines.a.provision[3].extra_vars.when: dates and times are not supported here: quote it as a string",
        "Devfile:8: machines.a.provision[4].inventory_vars.ansible_host: "
        "is set by devenv from the machine (how Ansible connects to it)",
        "Devfile:8: machines.a.provision[4].inventory_vars.ansible_ssh_common_args: "
        "is set by devenv from the machine (how Ansible connects to it)",
        "Devfile:9: machines.a.provision[5].extra_vars.ansible_docker_host: "
        "is set by devenv from the machine (how Ansible connects to it)",
        "Devfile:9: machines.a.provision[5].extra_vars.ansible_host_key_checking: "
        "is set by devenv from the machine (how Ansible connects to it)",
        "Devfile:10: machines.a.provision[6].become: expected true or false, got a string",
        "Devfile:10: machines.a.provision[6].limit: unknown key",
        "Devfile:10: machines.a.provision[6].skip_tags: expected an array, got a string",
        "Devfile:10: machines.a.provision[6].tags[0]: 'a,b' is not valid: no commas or spaces",
        "Devfile:10: machines.a.provision[6].tags[1]: 'a,b' is not valid: no commas or spaces",
        "Devfile:11: machines.a.provision[7].extra_vars: expected a table, got a string",
    ]


def test_outside_playbook_allowed_when_asked(project, tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "site.yml").write_text("- hosts: all\n")
    assert (
        problems_of(
            project,
            """\
        { type = "ansible", playbook = "../shared/site.yml", allow_outside_project = true },
    """,
        )
        == []
    )


def test_registered_and_described():
    prov = get_provisioner("ansible")
    assert prov.describe({"playbook": "ansible/site.yml"}) == "ansible ansible/site.yml"
    schema = prov.options.json_schema()
    assert schema["required"] == ["playbook"] and "extra_vars" in schema["properties"]


# -- fingerprint -----------------------------------------------------------------------------------


def test_fingerprint_covers_the_playbook_folder(project):
    base = fingerprint(step(playbook="ansible/site.yml"), project)
    assert base == fingerprint(step(playbook="ansible/site.yml", name="x", run="always"), project)
    template = project / "ansible" / "roles" / "web" / "templates" / "index.j2"
    template.write_text("v2 {{ greeting }}\n")
    changed = fingerprint(step(playbook="ansible/site.yml"), project)
    assert changed != base
    (project / "ansible" / "group_vars").mkdir()
    (project / "ansible" / "group_vars" / "all.yml").write_text("x: 1\n")
    assert fingerprint(step(playbook="ansible/site.yml"), project) != changed
    assert fingerprint(step(playbook="ansible/site.yml", extra_vars={"a": 1}), project) != base


def test_fingerprint_is_path_independent(project, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(project, other)
    assert fingerprint(step(playbook="ansible/site.yml"), project) == fingerprint(
        step(playbook="ansible/site.yml"), other
    )


def test_playbook_at_the_project_root_reads_only_ansible_neighbours(project):
    (project / "site.yml").write_text("- hosts: all\n")
    (project / "roles" / "r" / "tasks").mkdir(parents=True)
    (project / "roles" / "r" / "tasks" / "main.yml").write_text("- debug: msg=1\n")
    prov = get_provisioner("ansible")
    assert prov.files({"playbook": "site.yml"}, project) == [project / "site.yml", project / "roles"]
    base = fingerprint(step(playbook="site.yml"), project)
    # devenv's own state and unrelated sources do not make the step stale...
    (project / ".devenv").mkdir()
    (project / ".devenv" / "state.json").write_text("{}")
    (project / "src.py").write_text("print(1)\n")
    assert fingerprint(step(playbook="site.yml"), project) == base
    # ...a role does.
    (project / "roles" / "r" / "tasks" / "main.yml").write_text("- debug: msg=2\n")
    assert fingerprint(step(playbook="site.yml"), project) != base


@pytest.mark.parametrize(
    "rel",
    ["defaults/main.yml", "meta/main.yml", "vars/main.yml", "files/motd", "library/my_module.py",
     "handlers/main.yml", "lookup_plugins/mine.py", "requirements.yaml"],
)  # fmt: skip
def test_a_role_repository_playbook_at_the_root_covers_every_role_folder(project, rel):
    """A role repository: the role's folders sit beside a playbook at the root (roles: ["../."] style)."""
    (project / "site.yml").write_text("- hosts: all\n  roles: ['.']\n")
    (project / "tasks").mkdir()
    (project / "tasks" / "main.yml").write_text("- debug: msg=1\n")
    target = project / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("first\n")
    base = fingerprint(step(playbook="site.yml"), project)
    target.write_text("edited\n")
    assert fingerprint(step(playbook="site.yml"), project) != base, f"editing {rel} must make the step stale"


# -- inventory -------------------------------------------------------------------------------------


def ssh_transport(tmp_path: Path) -> SshTransport:
    return SshTransport(
        machine="vm1",
        host="127.0.0.1",
        port=2201,
        user="root",
        key=tmp_path / "my keys" / "id_ed25519",
        known_hosts=tmp_path / "my keys" / "known_hosts",
    )


def test_ssh_inventory_pins_the_host_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)  # a runtime folder is private (else devenv does not use it)
    t = ssh_transport(tmp_path)
    text = ans.inventory_text(ans.inventory("vm1", t.connection(), {"colour": "blue"}))
    keys = tmp_path / "my keys"
    assert text == textwrap.dedent(f"""\
        {{
          "all": {{
            "hosts": {{
              "vm1": {{
                "ansible_connection": "ssh",
                "ansible_host": "127.0.0.1",
                "ansible_port": 2201,
                "ansible_user": "root",
                "ansible_ssh_common_args": "-F /dev/null -o 'UserKnownHostsFile=\\"{keys}/known_hosts\\"' -o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o 'IdentityFile=\\"{keys}/id_ed25519\\"' -o PasswordAuthentication=no -o BatchMode=yes",
                "ansible_ssh_args": "-o ControlMaster=auto -o ControlPath={t.control_path()} -o ControlPersist=120",
                "ansible_python_interpreter": "auto_silent",
                "devenv_env": {{}},
                "colour": "blue"
              }}
            }}
          }}
        }}
    """)
    assert "StrictHostKeyChecking=no" not in text


def test_docker_inventory(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr("devenv.transports.dockerapi.context_host", lambda: None)
    t = DockerTransport(object(), "c0ffee" * 4, "web")
    text = ans.inventory_text(ans.inventory("web", t.connection(), {"n": 1, "list": [1, "a"]}))
    assert text == textwrap.dedent("""\
        {
          "all": {
            "hosts": {
              "web": {
                "ansible_connection": "community.docker.docker_api",
                "ansible_host": "c0ffeec0ffeec0ffeec0ffee",
                "ansible_user": "root",
                "ansible_python_interpreter": "auto_silent",
                "devenv_env": {},
                "n": 1,
                "list": [
                  1,
                  "a"
                ]
              }
            }
          }
        }
    """)


@pytest.mark.parametrize(
    ("endpoint", "tls", "connection"),
    [
        (None, False, "community.docker.docker_api"),
        ("unix:///run/user/1000/docker.sock", False, "community.docker.docker_api"),
        ("tcp://10.0.0.5:2375", False, "community.docker.docker_api"),
        ("tcp://10.0.0.5:2376", True, "community.docker.docker"),
        ("ssh://me@builder", False, "community.docker.docker"),
    ],
)
def test_docker_connection_follows_the_engine(monkeypatch, tmp_path, endpoint, tls, connection):
    monkeypatch.delenv("DOCKER_TLS", raising=False)
    if tls:
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    else:
        monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.setattr("devenv.transports.dockerapi.context_host", lambda: None)
    t = DockerTransport(object(), "abc", "web", docker_host=endpoint)
    assert ans.inventory("web", t.connection(), {})["all"]["hosts"]["web"]["ansible_connection"] == connection
    if endpoint:
        assert ans.ansible_environ(tmp_path, t.connection(), {})["DOCKER_HOST"] == endpoint


def test_env_transport_passes_its_env_and_it_stays_off_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    t = EnvTransport(ssh_transport(tmp_path), {"API_TOKEN": "s3cret", "MODE": "dev"})
    host = ans.inventory("vm1", t.connection(), {}, env_keys=["API_TOKEN", "MODE"])["all"]["hosts"]["vm1"]
    assert host["ansible_connection"] == "ssh" and host["ansible_port"] == 2201
    assert host["devenv_env"] == {
        "API_TOKEN": "{{ lookup('ansible.builtin.env', 'DEVENV_ENV_API_TOKEN') }}",
        "MODE": "{{ lookup('ansible.builtin.env', 'DEVENV_ENV_MODE') }}",
    }
    assert "s3cret" not in ans.inventory_text({"h": host})
    env = ans.ansible_environ(tmp_path, t.connection(), {"API_TOKEN": "s3cret", "MODE": "dev"})
    assert env["DEVENV_ENV_API_TOKEN"] == "s3cret" and env["DEVENV_ENV_MODE"] == "dev"


def test_box_build_label_is_a_valid_host_name(monkeypatch):
    monkeypatch.setattr("devenv.transports.dockerapi.context_host", lambda: None)
    inv = ans.inventory("box debian-12", DockerTransport(object(), "abc", "box debian-12").connection(), {})
    assert list(inv["all"]["hosts"]) == ["box-debian-12"]


def test_other_transports_are_refused():
    other = Connection(kind="serial")  # type: ignore[arg-type] - a plugin transport of another kind
    with pytest.raises(ProvisionError, match="Ansible can reach only Docker containers and SSH machines"):
        ans.inventory("m", other, {})


def test_ansible_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_ROLES_PATH", "ANSIBLE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    env = ans.ansible_environ(tmp_path, ssh_transport(tmp_path).connection(), {})
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    assert env["ANSIBLE_RETRY_FILES_ENABLED"] == "False"
    assert env["ANSIBLE_NOCOLOR"] == "1"
    assert env["ANSIBLE_HOME"] == str(tmp_path / "home")
    assert env["ANSIBLE_LOCAL_TEMP"] == str(tmp_path / "local")
    if not Path("/etc/ansible/ansible.cfg").exists():  # a host-wide ansible.cfg keeps its own paths
        assert env["ANSIBLE_COLLECTIONS_PATH"] == f"{tmp_path}/home/.ansible/collections:/usr/share/ansible/collections"
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", "/mine")
    env = ans.ansible_environ(tmp_path, ssh_transport(tmp_path).connection(), {})
    assert "ANSIBLE_NOCOLOR" not in env and env["ANSIBLE_COLLECTIONS_PATH"] == "/mine"
    # A project's ansible.cfg keeps its own roles_path/collections_path (env would override them).
    monkeypatch.delenv("ANSIBLE_COLLECTIONS_PATH")
    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "ansible.cfg").write_text("[defaults]\nroles_path = ./my-roles\n")
    env = ans.ansible_environ(tmp_path, ssh_transport(tmp_path).connection(), {}, tmp_path / "pb")
    assert "ANSIBLE_ROLES_PATH" not in env and "ANSIBLE_COLLECTIONS_PATH" not in env
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"


# -- run() against a stand-in ansible-playbook ---------------------------------------------------

FAKE_PLAYBOOK = """\
#!/bin/sh
out="$FAKE_ANSIBLE_OUT"
printf '%s\\n' "$@" > "$out/argv"
env > "$out/env"
pwd > "$out/cwd"
inv=""; prev=""
for a in "$@"; do [ "$prev" = "-i" ] && inv="$a"; case "$prev" in --extra-vars) cp "${a#@}" "$out/extra_vars.json";; esac; prev="$a"; done
cp "$inv" "$out/inventory"
echo "PLAY [all] ***"
echo ""
echo "TASK [first] ***"
echo "ok: [vm1]"
echo "TASK [second one] ***"
if [ -n "$FAKE_FAIL" ]; then
  echo 'fatal: [vm1]: FAILED! => {"msg": "boom"}'
  i=0; while [ $i -lt 30 ]; do echo "noise $i"; i=$((i+1)); done
  exit 2
fi
echo "changed: [vm1]"
"""


@pytest.fixture
def fake_ansible(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "ansible-playbook"
    exe.write_text(FAKE_PLAYBOOK)
    exe.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_ANSIBLE_OUT", str(out))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-venv" / "python"))
    return out


def run_step(project, tmp_path, config) -> list[str]:
    lines: list[str] = []
    ctx = RunContext(
        machine="vm1",
        root=project,
        transport=ssh_transport(tmp_path),
        reporter=Reporter(lambda e: lines.append(e.text)),
    )
    get_provisioner("ansible").run({"type": "ansible", **config}, ctx)
    return lines


def test_run_passes_everything_to_ansible_playbook(project, tmp_path, fake_ansible):
    lines = run_step(
        project,
        tmp_path,
        {
            "playbook": "ansible/site.yml",
            "extra_vars": {"greeting": "hi", "n": 2},
            "become": True,
            "tags": ["a", "b"],
            "skip_tags": ["slow"],
        },
    )
    assert lines == ["PLAY [all] ***", "TASK [first] ***", "ok: [vm1]", "TASK [second one] ***", "changed: [vm1]"]
    argv = (fake_ansible / "argv").read_text().splitlines()
    tmp = Path(argv[1]).parent
    assert argv == [
        "-i", str(tmp / "inventory.yml"),
        "--extra-vars", f"@{tmp / 'extra_vars.json'}",
        "--become", "--tags", "a,b", "--skip-tags", "slow",
        str(project / "ansible" / "site.yml"),
    ]  # fmt: skip
    assert json.loads((fake_ansible / "extra_vars.json").read_text()) == {"greeting": "hi", "n": 2}
    inv = json.loads((fake_ansible / "inventory").read_text())
    assert inv["all"]["hosts"]["vm1"]["ansible_connection"] == "ssh"
    env = dict(line.split("=", 1) for line in (fake_ansible / "env").read_text().splitlines() if "=" in line)
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True" and env["ANSIBLE_HOME"] == str(tmp / "home")
    assert (fake_ansible / "cwd").read_text().strip() == str(project / "ansible")
    assert not tmp.exists()  # the inventory and the extra vars are removed afterwards


def test_a_failing_playbook_names_the_task_and_shows_the_tail(project, tmp_path, fake_ansible, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(ProvisionError) as exc:
        run_step(project, tmp_path, {"playbook": "ansible/site.yml"})
    msg = exc.value.message
    assert msg.startswith(
        "ansible-playbook failed with exit code 2 at task 'second one': ansible/site.yml\n--- last output ---\n"
    )
    assert msg.endswith("noise 29") and "noise 9" not in msg  # the last 20 lines
    assert exc.value.exit_code == 5
    assert "`devenv provision vm1` resumes at this step" in exc.value.hint


def test_missing_ansible_playbook(project, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-venv" / "python"))
    with pytest.raises(ProvisionError) as exc:
        run_step(project, tmp_path, {"playbook": "ansible/site.yml"})
    assert exc.value.message == (
        "ansible step: ansible-playbook is not installed (Ansible runs on the host, not in the machine)"
    )
    assert exc.value.hint == (
        "pip install 'devenv[ansible]' (the ansible package: ansible-core plus community.docker), "
        "then `devenv provision` resumes at this step"
    )


def test_ansible_playbook_beside_this_python_comes_first(tmp_path, monkeypatch):
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "ansible-playbook").write_text("#!/bin/sh\n")
    (venv_bin / "ansible-playbook").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert ans.find_ansible_playbook() == str(venv_bin / "ansible-playbook")


@pytest.mark.parametrize(
    ("output", "hint"),
    [
        ("[ERROR]: the connection plugin 'community.docker.docker_api' was not found", "pip install 'devenv[ansible]'"),
        ('fatal: [web]: FAILED! => {"module_stderr": "/bin/sh: 1: /usr/bin/python3: not found"}', "no Python"),
    ],
)
def test_failure_hints(output, hint):
    watch = ans._Watch(lambda _line: None)
    watch.feed(output)
    assert hint in ans._failure(2, "site.yml", watch, "web").hint


def test_the_real_ansible_playbook_understands_the_inventory(tmp_path, monkeypatch):
    """ansible-inventory (when installed) reads the generated text as devenv means it."""
    import subprocess

    exe = Path(sys.executable).parent / "ansible-inventory"
    if not exe.exists():
        exe = shutil.which("ansible-inventory")
        if exe is None:
            missing("ansible-inventory is not installed (pip install 'devenv[test]')")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    t = EnvTransport(ssh_transport(tmp_path), {"MODE": "dev"})
    inv = tmp_path / "inventory.yml"
    inv.write_text(ans.inventory_text(ans.inventory("vm1", t.connection(), {"colour": "blue"}, env_keys=["MODE"])))
    env = {
        **ans.ansible_environ(tmp_path, t.connection(), {"MODE": "dev"}),
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
    }
    r = subprocess.run([str(exe), "-i", str(inv), "--host", "vm1"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    host = json.loads(r.stdout)
    assert host["ansible_port"] == 2201 and host["colour"] == "blue"
    assert "StrictHostKeyChecking=yes" in host["ansible_ssh_common_args"]
    assert "/id_ed25519" in host["ansible_ssh_common_args"]


# -- roles outside the playbook's folder, found as ansible-playbook finds them ---------------------

DEBUG_ROLE_PATH = '- debug: {msg: "ROLE {{ role_path }}"}\n'

# name -> (files, the playbook, the file an edit of which must make the step stale, env)
ROLE_LAYOUTS = {
    "relative path from a playbook in a subfolder": (
        {"ansible/site.yml": "- hosts: all\n  roles: ['../roles/web']\n", "roles/web/tasks/main.yml": DEBUG_ROLE_PATH},
        "ansible/site.yml", "roles/web/tasks/main.yml", {},
    ),
    "bare name in the playbook's roles/": (
        {"ansible/site.yml": "- hosts: all\n  roles: [web]\n", "ansible/roles/web/tasks/main.yml": DEBUG_ROLE_PATH},
        "ansible/site.yml", "ansible/roles/web/tasks/main.yml", {},
    ),
    "roles_path in the ansible.cfg beside the playbook": (
        {"ansible/site.yml": "- hosts: all\n  roles: [{role: web}]\n",
         "ansible/ansible.cfg": "[defaults]\nroles_path = ../shared/roles ; a comment\n",
         "shared/roles/web/templates/index.j2": "v1\n", "shared/roles/web/tasks/main.yml": DEBUG_ROLE_PATH},
        "ansible/site.yml", "shared/roles/web/templates/index.j2", {},
    ),
    "role: ../../shared/roles/x": (
        {"deploy/web/site.yml": "- hosts: all\n  roles:\n    - role: ../../shared/roles/x\n      when: true\n",
         "shared/roles/x/defaults/main.yml": "port: 80\n"},
        "deploy/web/site.yml", "shared/roles/x/defaults/main.yml", {},
    ),
    "include_role by name": (
        {"ansible/site.yml": "- hosts: all\n  tasks:\n    - block:\n        - ansible.builtin.include_role:\n"
                             "            name: common\n",
         "ansible/ansible.cfg": "[defaults]\nroles_path = '../shared/roles'\n",
         "shared/roles/common/files/motd": "hello\n"},
        "ansible/site.yml", "shared/roles/common/files/motd", {},
    ),
    "import_role in a role's tasks": (
        {"ansible/site.yml": "- hosts: all\n  roles: [web]\n", "ansible/ansible.cfg": "[defaults]\nroles_path=../shared\n",
         "shared/web/tasks/main.yml": "- import_role: name=common\n", "shared/common/handlers/main.yml": "- debug: {}\n"},
        "ansible/site.yml", "shared/common/handlers/main.yml", {},
    ),
    "a role dependency in meta/main.yml": (
        {"ansible/site.yml": "- hosts: all\n  roles: ['../roles/web']\n",
         "roles/web/meta/main.yml": "dependencies:\n  - role: base\n", "roles/base/vars/main.yml": "x: 1\n"},
        "ansible/site.yml", "roles/base/vars/main.yml", {},
    ),
    "ANSIBLE_CONFIG names a cfg elsewhere in the project": (
        {"ansible/site.yml": "- hosts: all\n  roles: [web]\n", "config/ansible.cfg": "[defaults]\nroles_path = roles\n",
         "config/roles/web/library/mod.py": "print(1)\n"},
        "ansible/site.yml", "config/roles/web/library/mod.py", {"ANSIBLE_CONFIG": "../config"},
    ),
    "ANSIBLE_ROLES_PATH wins over ansible.cfg": (
        {"ansible/site.yml": "- hosts: all\n  roles: [web]\n", "ansible/ansible.cfg": "[defaults]\nroles_path = nowhere\n",
         "other/web/tasks/main.yml": DEBUG_ROLE_PATH},
        "ansible/site.yml", "other/web/tasks/main.yml", {"ANSIBLE_ROLES_PATH": "../other"},
    ),
    "include_tasks and import_playbook outside the folder": (
        {"ansible/site.yml": "- import_playbook: ../plays/db.yml\n- hosts: all\n  tasks:\n"
                             "    - include_tasks: ../common/tasks.yml\n",
         "plays/db.yml": "- hosts: all\n  roles: [db]\n", "plays/roles/db/tasks/main.yml": DEBUG_ROLE_PATH,
         "common/tasks.yml": "- debug: {}\n"},
        "ansible/site.yml", "plays/roles/db/tasks/main.yml", {},
    ),
}  # fmt: skip


def layout(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def role_env(tmp_path, monkeypatch):
    """No ansible.cfg or roles of this host's user in the way, none of the process's Ansible settings."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("ANSIBLE_CONFIG", "ANSIBLE_ROLES_PATH", "ANSIBLE_COLLECTIONS_PATH"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("name", ROLE_LAYOUTS)
def test_editing_a_role_file_makes_the_step_stale_in_every_layout(tmp_path, role_env, name):
    files, playbook, edited, env = ROLE_LAYOUTS[name]
    root = tmp_path / "proj"
    layout(root, files)
    for k, v in env.items():
        role_env.setenv(k, v)
    assert problems_of(root, f'{{ type = "ansible", playbook = "{playbook}" }},\n') == []
    base = fingerprint(step(playbook=playbook), root)
    (root / edited).write_text((root / edited).read_text() + "# edited\n")
    assert fingerprint(step(playbook=playbook), root) != base, f"{name}: editing {edited} must make the step stale"
    # Nothing unrelated does (the project's other files, devenv's own state).
    base = fingerprint(step(playbook=playbook), root)
    (root / ".devenv").mkdir(exist_ok=True)
    (root / ".devenv" / "state.json").write_text("{}")
    (root / "README").write_text("x\n")
    assert fingerprint(step(playbook=playbook), root) == base


def test_roles_outside_the_folder_do_not_change_existing_fingerprints(project, role_env):
    """A role inside the playbook's folder is read as before: no step reruns after an upgrade."""
    prov = get_provisioner("ansible")
    assert prov.files({"playbook": "ansible/site.yml"}, project) == [project / "ansible"]


def test_the_real_ansible_playbook_finds_the_same_roles(tmp_path, role_env):
    """ansible-playbook (when installed), run as devenv runs it, loads only roles the fingerprint covers."""
    import subprocess

    exe = Path(sys.executable).parent / "ansible-playbook"
    if not exe.exists():
        missing("ansible-playbook is not installed (pip install 'devenv[test]')")
    prov = get_provisioner("ansible")
    runs = []
    # One of each way: ansible.cfg's roles_path + import_role by bare name; a relative path + a role
    # dependency found beside the role that needs it; ANSIBLE_ROLES_PATH over ansible.cfg.
    for name in ("import_role in a role's tasks", "a role dependency in meta/main.yml",
                 "ANSIBLE_ROLES_PATH wins over ansible.cfg"):  # fmt: skip
        files, playbook, _, env = ROLE_LAYOUTS[name]
        root = tmp_path / name.replace(" ", "-").replace("'", "")
        # Every role's tasks print where Ansible found it.
        roles = {rel.split(f"/{part}/")[0] for rel in files for part in ans._ROLE_PARTS if f"/{part}/" in rel}
        debug = {f"{r}/tasks/main.yml": files.get(f"{r}/tasks/main.yml", "") + DEBUG_ROLE_PATH for r in roles}
        layout(root, {**files, **debug})
        for k, v in env.items():
            role_env.setenv(k, v)
        pb = root / playbook
        covered = prov.files({"playbook": playbook}, root)
        run_env = ans.ansible_environ(tmp_path / "a", Connection(kind="ssh"), {}, pb.parent)
        run_env["ANSIBLE_GATHERING"] = "explicit"  # debug tasks only: nothing to learn about this host
        for k in env:
            role_env.delenv(k)
        proc = subprocess.Popen(
            [str(exe), "-i", "localhost,", "-c", "local", str(pb)],
            cwd=pb.parent, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        runs.append((name, roles, covered, proc))
    for name, roles, covered, proc in runs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        loaded = {Path(line.split("ROLE ", 1)[1].rstrip('"')) for line in out.splitlines() if '"ROLE ' in line}
        assert len(loaded) == len(roles), f"{name}: {out}"
        for role in loaded:
            assert any(role == c or c in role.parents for c in covered), f"{name}: {role} not in {covered}"


def test_a_role_path_out_of_the_project_is_refused_unless_allowed(tmp_path, role_env):
    root = tmp_path / "proj"
    layout(root, {"ansible/site.yml": "- hosts: all\n  roles: ['../../outside/roles/x']\n"})
    role_env.chdir(root)
    layout(tmp_path, {"outside/roles/x/tasks/main.yml": "- debug: {}\n"})
    assert problems_of(root, '{ type = "ansible", playbook = "ansible/site.yml" },\n') == [
        f"Devfile:4: machines.a.provision[0].playbook: role '../../outside/roles/x' (named in 'ansible/site.yml') "
        f"is '{tmp_path}/outside/roles/x', outside the project ({root}); ansible-playbook runs on this host and "
        "would read it: set allow_outside_project = true on this step if you mean it"
    ]
    allowed = step(playbook="ansible/site.yml", allow_outside_project=True)
    assert (
        problems_of(root, '{ type = "ansible", playbook = "ansible/site.yml", allow_outside_project = true },\n') == []
    )
    base = fingerprint(allowed, root)
    (tmp_path / "outside/roles/x/tasks/main.yml").write_text("- debug: {msg: 2}\n")
    assert fingerprint(allowed, root) != base  # allowed: read, so its edits count


def test_a_role_linked_out_of_the_project_is_refused_and_never_read(tmp_path, role_env, monkeypatch):
    root = tmp_path / "proj"
    layout(
        root,
        {
            "ansible/site.yml": "- hosts: all\n  roles: [web]\n",
            "ansible/ansible.cfg": "[defaults]\nroles_path = ../shared\n",
        },
    )
    layout(tmp_path, {"secret/web/tasks/main.yml": "- debug: {msg: secret}\n"})
    (root / "shared").mkdir()
    (root / "shared" / "web").symlink_to(tmp_path / "secret" / "web")
    role_env.chdir(root)
    [problem] = problems_of(root, '{ type = "ansible", playbook = "ansible/site.yml" },\n')
    assert f"role 'web' (named in 'ansible/site.yml') is '{tmp_path}/secret/web', outside the project" in problem
    read: list[str] = []
    real_read = ans._read_capped
    monkeypatch.setattr(ans, "_read_capped", lambda p: read.append(p) or real_read(p))
    files = get_provisioner("ansible").files({"playbook": "ansible/site.yml"}, root)
    assert files == [(root / "ansible").resolve()]
    assert not [p for p in read if str(tmp_path / "secret") in p]


def test_a_role_swapped_for_a_link_out_after_validation_fails_the_step(tmp_path, role_env, fake_ansible):
    root = tmp_path / "proj"
    layout(
        root,
        {"ansible/site.yml": "- hosts: all\n  roles: ['../roles/web']\n", "roles/web/tasks/main.yml": "- debug: {}\n"},
    )
    layout(tmp_path, {"secret/web/tasks/main.yml": "- debug: {msg: secret}\n"})
    shutil.rmtree(root / "roles" / "web")
    (root / "roles" / "web").symlink_to(tmp_path / "secret" / "web")
    with pytest.raises(ProvisionError, match=r"role '\.\./roles/web' .* outside the project"):
        run_step(root, tmp_path, {"playbook": "ansible/site.yml"})
    assert not (fake_ansible / "argv").exists()  # ansible-playbook never ran


def test_an_installed_role_is_left_out_of_the_fingerprint_with_a_warning(tmp_path, role_env, fake_ansible):
    root = tmp_path / "proj"
    layout(root, {"ansible/site.yml": "- hosts: all\n  roles: [geerlingguy.docker]\n"})
    galaxy = tmp_path / "galaxy"
    layout(galaxy, {"geerlingguy.docker/tasks/main.yml": "- debug: {}\n"})
    role_env.setenv("ANSIBLE_ROLES_PATH", str(galaxy))
    assert problems_of(root, '{ type = "ansible", playbook = "ansible/site.yml" },\n') == []
    base = fingerprint(step(playbook="ansible/site.yml"), root)
    (galaxy / "geerlingguy.docker/tasks/main.yml").write_text("- debug: {msg: new}\n")
    assert fingerprint(step(playbook="ansible/site.yml"), root) == base  # not read: not the project's
    lines = run_step(root, tmp_path, {"playbook": "ansible/site.yml"})
    assert lines[0] == (
        f"ansible step: role 'geerlingguy.docker' is outside the project ({galaxy}/geerlingguy.docker): it is not "
        "part of the step's fingerprint, so a change to it does not rerun this step"
    )


def test_the_users_and_the_systems_ansible_cfg_are_never_read(tmp_path, role_env, monkeypatch):
    root = tmp_path / "proj"
    layout(root, {"ansible/site.yml": "- hosts: all\n  roles: [web]\n", "shared/web/tasks/main.yml": "- debug: {}\n"})
    home_cfg = tmp_path / "home" / ".ansible.cfg"
    layout(tmp_path, {"home/.ansible.cfg": f"[defaults]\nroles_path = {root}/shared\n"})
    read: list[str] = []
    real_read = ans._read_capped
    monkeypatch.setattr(ans, "_read_capped", lambda p: read.append(p) or real_read(p))
    for named in (None, str(home_cfg)):  # found by ansible's own search, or named by ANSIBLE_CONFIG
        if named:
            role_env.setenv("ANSIBLE_CONFIG", named)
        files = get_provisioner("ansible").files({"playbook": "ansible/site.yml"}, root)
        assert files == [(root / "ansible").resolve()]
        assert str(home_cfg) not in read and not [p for p in read if p.startswith("/etc/ansible")]


def test_ansible_cfg_is_found_where_ansible_finds_it(tmp_path, role_env):
    pb = tmp_path / "pb"
    layout(pb, {"ansible.cfg": "[defaults]\n"})
    layout(tmp_path, {"conf/ansible.cfg": "[defaults]\n"})
    assert ans.ansible_cfg(pb) == pb / "ansible.cfg"
    role_env.setenv("ANSIBLE_CONFIG", "../conf")  # a folder, relative to where ansible-playbook runs
    assert ans.ansible_cfg(pb) == tmp_path / "conf" / "ansible.cfg"
    role_env.delenv("ANSIBLE_CONFIG")
    pb.chmod(0o777)  # ansible ignores ./ansible.cfg in a world-writable folder
    try:
        assert ans.ansible_cfg(pb) is None
    finally:
        pb.chmod(0o755)
