"""ansible: run a playbook from the project against the machine, with ansible-playbook on the host.

The inventory is generated from the machine's transport into a private temporary folder (removed
afterwards) and names one host, the machine itself:

* Docker: the ``community.docker.docker_api`` connection (the engine API, as devenv's own transport
  uses; no docker CLI needed), ``ansible_host`` = the container id, the engine from DOCKER_HOST or
  the current docker context. ssh:// and TLS engines use ``community.docker.docker`` (the docker CLI),
  because the API plugin cannot talk TLS. Both come with the ``ansible`` package (``devenv[ansible]``);
  ``ansible-core`` alone has no docker connection.
* SSH (VMs): OpenSSH with the machine's key, its pinned known_hosts and StrictHostKeyChecking=yes,
  never a disabled host key check; connections share devenv's own ControlMaster.

The machine's environment is not applied by Ansible on its own: for drivers that pass it with every
command (libvirt), the host var ``devenv_env`` holds it as lookups of the ansible-playbook process's
environment (so the values, secrets included, are never written on the host); a play applies it
with ``environment: "{{ devenv_env }}"``. On Docker the container already has it (devenv_env = {}).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from devenv.contract import Connection
from devenv.errors import ProvisionError
from devenv.model.schema import MISSING, Bool, Custom, Field, ListOf, MapOf, Problem, Str, Table
from devenv.provisioners import RunContext, host_path_problems, step_fields

TAIL_LINES = 20
INSTALL_HINT = "pip install 'devenv[ansible]' (the ansible package: ansible-core plus community.docker)"
DOCKER_API = "community.docker.docker_api"
DOCKER_CLI = "community.docker.docker"
ENV_PREFIX = "DEVENV_ENV_"

_VAR_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# Variables that decide where and how Ansible connects: devenv sets them from the machine, and a
# Devfile may not override them (extra_vars win over everything in Ansible, host key checks included).
# Whole families, not a list of known names: every variable the ssh connection plugin reads
# (ansible_ssh*, incl. sshpass_prompt; ansible_scp_* / ansible_sftp_* extra_args and executables, which
# put -oProxyCommand or a host program on this host's command line; control_path*; private_key*),
# every one of the docker and docker_api plugins (ansible_docker_*) and paramiko's, plus the
# target itself. ansible_become_* is left to the Devfile: become runs inside the machine.
_RESERVED = re.compile(
    r"ansible_(connection.*|host|port|user|remote_user|password.*|private_key.*|host_key_checking|"
    r"ssh.*|scp.*|sftp.*|docker.*|control_path.*|paramiko.*)",
    re.IGNORECASE,
)
# When the playbook sits in one of these, its folder is not a playbook folder: only Ansible's
# usual neighbours are read (never the whole project, its .devenv/ state or a home folder).
_NEIGHBOURS = (
    "ansible.cfg",
    "requirements.yml",
    "requirements.yaml",
    "galaxy.yml",
    "roles",
    "group_vars",
    "host_vars",
    "inventory",
    "collections",
    # A role's own folders: a role repository keeps its playbook (or tests/) beside them.
    "tasks",
    "handlers",
    "defaults",
    "vars",
    "meta",
    "templates",
    "files",
    "library",
    "module_utils",
    # Plugins Ansible loads from beside a playbook or inside a role.
    "action_plugins",
    "cache_plugins",
    "callback_plugins",
    "connection_plugins",
    "filter_plugins",
    "inventory_plugins",
    "lookup_plugins",
    "strategy_plugins",
    "test_plugins",
    "vars_plugins",
)


def _plain(value: Any, path: tuple, problems: list) -> Any:
    """TOML values Ansible can take as JSON: strings, numbers, booleans, arrays and tables."""
    if isinstance(value, (datetime.date, datetime.time)):
        problems.append(Problem(path, "dates and times are not supported here: quote it as a string"))
        return None
    if isinstance(value, list):
        return [_plain(v, path + (i,), problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _plain(v, path + (k,), problems) for k, v in value.items()}
    return value


def _any_value(value: Any, path: tuple, problems: list) -> Any:
    before = len(problems)
    out = _plain(value, path, problems)
    return MISSING if len(problems) > before else out


_VALUE = Custom(_any_value, {}, description="Any TOML value but a date or time")


def _vars_node(description: str) -> MapOf:
    return MapOf(
        _VALUE,
        key_pattern=_VAR_NAME,
        key_help="letters, digits, _ (not starting with a digit)",
        description=description,
    )


def _check(config: dict, path: tuple, problems: list) -> None:
    for key in ("extra_vars", "inventory_vars"):
        for name in config.get(key, {}):
            if _RESERVED.fullmatch(name):
                problems.append(
                    Problem(path + (key, name), "is set by devenv from the machine (how Ansible connects to it)")
                )


class AnsibleProvisioner:
    type = "ansible"
    options = Table(
        {
            **step_fields("ansible"),
            "playbook": Field(
                Str(description="Playbook in the project; its whole folder (roles/, templates/ ...) is fingerprinted"),
                required=True,
            ),
            "extra_vars": Field(_vars_node("Variables passed with --extra-vars")),
            "inventory_vars": Field(_vars_node("Host variables of the machine in the generated inventory")),
            "become": Field(Bool(description="Run tasks with become (sudo), for a login user that is not root")),
            "tags": Field(ListOf(Str(pattern=r"[^,\s]+", pattern_help="no commas or spaces"), unique=True)),
            "skip_tags": Field(ListOf(Str(pattern=r"[^,\s]+", pattern_help="no commas or spaces"), unique=True)),
            "allow_outside_project": Field(Bool(description="Allow a playbook outside the project")),
        },
        description="Run an Ansible playbook (ansible-playbook on the host) against the machine",
        check_fn=_check,
    )

    def files(self, config: dict, root: Path) -> list[Path]:
        from devenv.paths import real_root, resolve

        base = Path(real_root(root))
        # Where the playbook really is (links followed): ansible-playbook reads its neighbours there.
        playbook = Path(resolve(os.path.abspath(root / os.path.expanduser(config["playbook"]))).path)
        folder = playbook.parent
        if folder == base or folder in base.parents or folder == Path.home() or folder == Path(folder.anchor):
            return [playbook, *(folder / n for n in _NEIGHBOURS if os.path.lexists(folder / n))]
        return [folder]

    def check(self, config: dict, root: Path, path: tuple) -> list[Problem]:
        problems = host_path_problems(config, "playbook", root, path, want_file=True)
        if not problems:
            why = self.escaping_link(config, root)
            if why:
                problems.append(Problem(path + ("playbook",), why))
        return problems

    def escaping_link(self, config: dict, root: Path) -> str | None:
        """Why the playbook's files reach outside the project through a link, or None.

        ansible-playbook runs on this host and follows links: a role, vars file or template
        linked to /etc or ~ would be read here (and could be copied into the machine).
        """
        if config.get("allow_outside_project"):
            return None
        from devenv.paths import escaping_links, real_root

        base = real_root(root)
        for top in self.files(config, root):
            for link, target in escaping_links(top, root, limit=1):
                shown = os.path.relpath(link, base)
                return (
                    f"'{shown}' is a symbolic link to '{target}', outside the project ({base}); ansible-playbook "
                    "runs on this host and would read it: set allow_outside_project = true on this step if you mean it"
                )
        return None

    def describe(self, config: dict) -> str:
        return f"ansible {config['playbook']}"

    def run(self, config: dict, ctx: RunContext) -> None:
        from devenv.provisioners.shell import _at_use

        # Checked again now, links included: one may have been swapped in since validation.
        playbook = _at_use(config, "playbook", ctx, want_file=True, step="ansible")
        why = self.escaping_link(config, ctx.root)
        if why:
            raise ProvisionError(f"ansible step: {config['playbook']}: {why}")
        exe = find_ansible_playbook()
        conn = ctx.transport.connection()
        env_values = dict(conn.env)
        watch = _Watch(ctx.on_output)
        with tempfile.TemporaryDirectory(prefix="devenv-ansible-") as tmp_name:
            tmp = Path(tmp_name)
            inv = inventory(ctx.machine, conn, config.get("inventory_vars", {}), env_keys=sorted(env_values))
            (tmp / "inventory.yml").write_text(inventory_text(inv))
            argv = [exe, "-i", str(tmp / "inventory.yml")]
            if config.get("extra_vars"):
                (tmp / "extra_vars.json").write_text(json.dumps(config["extra_vars"], sort_keys=True))
                argv += ["--extra-vars", f"@{tmp / 'extra_vars.json'}"]
            if config.get("become"):
                argv.append("--become")
            if config.get("tags"):
                argv += ["--tags", ",".join(config["tags"])]
            if config.get("skip_tags"):
                argv += ["--skip-tags", ",".join(config["skip_tags"])]
            if ctx.reporter.debug_enabled:
                argv.append("-vv")
            argv.append(str(playbook))
            env = ansible_environ(tmp, conn, env_values, playbook.parent)
            code = _stream(argv, env, playbook.parent, watch.feed)
        if code != 0:
            raise _failure(code, config["playbook"], watch, ctx.machine)


def find_ansible_playbook() -> str:
    """ansible-playbook next to this Python (a venv with devenv[ansible]) first, then on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise ProvisionError(
            "ansible step: ansible-playbook is not installed (Ansible runs on the host, not in the machine)",
            hint=f"{INSTALL_HINT}, then `devenv provision` resumes at this step",
        )
    return found


def _docker_connection(endpoint: str | None) -> str:
    tls = bool(os.environ.get("DOCKER_TLS_VERIFY") or os.environ.get("DOCKER_TLS"))
    if endpoint and (endpoint.startswith("ssh://") or (endpoint.startswith("tcp://") and tls)):
        return DOCKER_CLI  # the API plugin cannot do TLS; ssh:// is what the docker CLI does best
    return DOCKER_API


def inventory(machine: str, conn: Connection, inventory_vars: dict, *, env_keys: list[str] = ()) -> dict:
    """The one-host inventory for the machine, from how its transport says it is reached."""
    if conn.kind == "docker":
        host: dict[str, Any] = {
            "ansible_connection": _docker_connection(conn.docker_host),
            "ansible_host": conn.container,
            # As shell steps: root, whatever user the container's main process runs as.
            "ansible_user": "root",
        }
    elif conn.kind == "ssh":
        # Exactly the options devenv connects with (pinned host key, StrictHostKeyChecking=yes),
        # paths as OpenSSH reads them back (quoted, % doubled). The key goes here too, not in
        # ansible_ssh_private_key_file, which Ansible quotes without escaping.
        control = ["-o", "ControlMaster=auto", "-o", f"ControlPath={conn.control_path}", "-o", "ControlPersist=120"]
        host = {
            "ansible_connection": "ssh",
            "ansible_host": conn.host,
            "ansible_port": conn.port,
            "ansible_user": conn.user,
            "ansible_ssh_common_args": shlex.join(conn.ssh_options),
            # devenv's own connection master, already open after boot: no second handshake per task.
            "ansible_ssh_args": shlex.join(control),
        }
    else:
        raise ProvisionError(
            f"ansible step: machine '{machine}' is reached through {conn.kind!r}, "
            "but Ansible can reach only Docker containers and SSH machines"
        )
    host["ansible_python_interpreter"] = "auto_silent"
    host["devenv_env"] = {k: f"{{{{ lookup('ansible.builtin.env', '{ENV_PREFIX}{k}') }}}}" for k in env_keys}
    for k, v in inventory_vars.items():
        host[k] = v
    # The machine's name is the host's name (a box build's label "box NAME" becomes "box-NAME").
    return {"all": {"hosts": {inventory_hostname(machine): host}}}


def inventory_hostname(machine: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", machine).strip("-") or "machine"


def inventory_text(inv: dict) -> str:
    """YAML inventory text (JSON is YAML, and exact for every value a Devfile can hold)."""
    return json.dumps(inv, indent=2, sort_keys=False) + "\n"


def ansible_cfg(cwd: Path | None) -> Path | None:
    """The ansible.cfg ansible-playbook will read (ANSIBLE_CONFIG, ./, ~/, /etc/ansible/), if any."""
    candidates = [os.environ.get("ANSIBLE_CONFIG")]
    if cwd is not None:
        candidates.append(str(cwd / "ansible.cfg"))
    candidates += [str(Path.home() / ".ansible.cfg"), "/etc/ansible/ansible.cfg"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def ansible_environ(tmp: Path, conn: Connection, env_values: dict[str, str], cwd: Path | None = None) -> dict[str, str]:
    """The ansible-playbook process environment: private state under tmp, host keys checked."""
    env = dict(os.environ)
    home = Path.home()
    env.update(
        {
            "ANSIBLE_HOME": str(tmp / "home"),
            "ANSIBLE_LOCAL_TEMP": str(tmp / "local"),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The private ANSIBLE_HOME must not hide collections and roles the user installed (but an
    # ansible.cfg that sets its own paths wins: these would override it, so they are left out then).
    if not ansible_cfg(cwd):
        env.setdefault("ANSIBLE_COLLECTIONS_PATH", f"{home}/.ansible/collections:/usr/share/ansible/collections")
        env.setdefault("ANSIBLE_ROLES_PATH", f"{home}/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles")
    if os.environ.get("NO_COLOR") is not None:
        env["ANSIBLE_NOCOLOR"] = "1"
    if conn.kind == "docker" and conn.docker_host:
        env["DOCKER_HOST"] = conn.docker_host
    for k, v in env_values.items():
        env[ENV_PREFIX + k] = v
    return env


def _stream(argv: list[str], env: dict[str, str], cwd: Path, sink) -> int:
    """Run argv, passing each output line (stdout and stderr merged) to sink; its exit code."""

    from devenv.contract import LineSplitter

    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    splitter = LineSplitter(sink)
    try:
        while data := os.read(proc.stdout.fileno(), 65536):
            splitter.feed(data)
        splitter.close()
        return proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: do not leave ansible-playbook behind
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


_TASK = re.compile(r"^TASK \[(.*)\] \**$")


class _Watch:
    """Passes ansible's output on (without its blank separator lines), keeping a tail and the failed task."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.task: str | None = None
        self.failed_task: str | None = None

    def feed(self, line: str) -> None:
        if not line.strip():
            return
        m = _TASK.match(line)
        if m:
            self.task = m.group(1)
        elif line.startswith(("fatal: [", "failed: [")) and self.task and self.failed_task is None:
            self.failed_task = self.task
        self.tail.append(line)
        self.sink(line)


def _failure(code: int, playbook: str, watch: _Watch, machine: str) -> ProvisionError:
    task = watch.failed_task
    text = "\n".join(watch.tail)
    hint = (
        f"the machine is left running: inspect it with `devenv ssh {machine}`, fix the playbook, "
        f"then `devenv provision {machine}` resumes at this step"
    )
    if f"'{DOCKER_API}' was not found" in text or f"'{DOCKER_CLI}' was not found" in text:
        hint = f"this Ansible has no docker connection plugin: {INSTALL_HINT}"
    elif re.search(r"python3?: (not found|No such file)|No python interpreters found", text, re.IGNORECASE):
        hint = (
            "the machine has no Python, which most Ansible modules need: use a box with python3 (debian-12 has it), "
            "or only the raw module with gather_facts: false"
        )
    return ProvisionError(
        f"ansible-playbook failed with exit code {code}"
        + (f" at task '{task}'" if task else "")
        + f": {playbook}"
        + ("\n--- last output ---\n" + text if text else ""),
        hint=hint,
    )
