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
import stat
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Mapping
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
# A role's own folders, and the plugins Ansible loads from inside a role (or beside a playbook).
_ROLE_PARTS = (
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
# When the playbook sits in one of these, its folder is not a playbook folder: only Ansible's
# usual neighbours are read (never the whole project, its .devenv/ state or a home folder). A role
# repository keeps its playbook (or tests/) beside the role's own folders.
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
    *_ROLE_PARTS,
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
        return self.reads(config, root).files

    def reads(self, config: dict, root: Path) -> Reads:
        """Everything the step reads, found as ansible-playbook finds it (see Reads)."""
        from devenv.paths import real_root, resolve

        base = Path(real_root(root))
        # Where the playbook really is (links followed): ansible-playbook reads its neighbours there.
        playbook = Path(resolve(os.path.abspath(root / os.path.expanduser(config["playbook"]))).path)
        folder = playbook.parent
        if _broad(folder, base):
            listed = [playbook, *(folder / n for n in _NEIGHBOURS if os.path.lexists(folder / n))]
        else:
            listed = [folder]
        return Reads(playbook, base, listed, allow_outside=bool(config.get("allow_outside_project")))

    def check(self, config: dict, root: Path, path: tuple) -> list[Problem]:
        problems = host_path_problems(config, "playbook", root, path, want_file=True)
        if not problems:
            why = self.refusal(config, root, self.reads(config, root))
            if why:
                problems.append(Problem(path + ("playbook",), why))
        return problems

    def refusal(self, config: dict, root: Path, reads: Reads) -> str | None:
        """Why the step may not read what it would, or None: a link out of the project among its
        files (first: a role linked out would otherwise be named twice), else a role, task file or
        playbook it names outside the project (Reads.outside)."""
        return self.escaping_link(config, root, reads.files) or (reads.outside[0] if reads.outside else None)

    def escaping_link(self, config: dict, root: Path, files: list[Path] | None = None) -> str | None:
        """Why the playbook's files reach outside the project through a link, or None.

        ansible-playbook runs on this host and follows links: a role, vars file or template
        linked to /etc or ~ would be read here (and could be copied into the machine).
        """
        if config.get("allow_outside_project"):
            return None
        from devenv.paths import escaping_links, real_root

        base = real_root(root)
        for top in self.files(config, root) if files is None else files:
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
        reads = self.reads(config, ctx.root)
        why = self.refusal(config, ctx.root, reads)
        if why:
            raise ProvisionError(f"ansible step: {config['playbook']}: {why}")
        for name, where in reads.installed.items():
            ctx.reporter.warn(
                f"ansible step: role '{name}' is outside the project ({where}): it is not part of the step's "
                "fingerprint, so a change to it does not rerun this step",
                machine=ctx.machine,
            )
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


def _found_cfg(cwd: Path | None, env: Mapping[str, str]) -> tuple[Path, bool] | None:
    """The ansible.cfg ansible-playbook will read, as it looks (first found of ANSIBLE_CONFIG, a
    file or a folder; ./ansible.cfg unless the folder is world-writable; ~/.ansible.cfg;
    /etc/ansible/ansible.cfg), and whether it is one of the first two (named for this run)."""
    candidates: list[tuple[str, bool]] = []
    value = env.get("ANSIBLE_CONFIG")
    if value is not None:
        named = os.path.expanduser(os.path.expandvars(value))
        named = os.path.normpath(os.path.join(str(cwd) if cwd is not None else os.getcwd(), named))
        candidates.append((os.path.join(named, "ansible.cfg") if os.path.isdir(named) else named, True))
    if cwd is not None:
        try:
            if not os.stat(cwd).st_mode & stat.S_IWOTH:
                candidates.append((str(cwd / "ansible.cfg"), True))
        except OSError:
            pass
    candidates += [(str(Path.home() / ".ansible.cfg"), False), ("/etc/ansible/ansible.cfg", False)]
    for path, named_here in candidates:
        if os.path.exists(path) and os.access(path, os.R_OK):
            return Path(path), named_here
    return None


def ansible_cfg(cwd: Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The ansible.cfg ansible-playbook will read (ANSIBLE_CONFIG, ./, ~/, /etc/ansible/), if any."""
    found = _found_cfg(cwd, os.environ if env is None else env)
    return found[0] if found else None


def _search_path_defaults(cwd: Path | None) -> dict[str, str]:
    """The collections and roles paths devenv gives ansible-playbook (what the process environment
    already sets wins). The private ANSIBLE_HOME must not hide collections and roles the user
    installed; but an ansible.cfg that sets its own paths wins: these would override it, so they
    are left out then. The run and the fingerprint's role search both take them from here."""
    if ansible_cfg(cwd):
        return {}
    home = Path.home()
    return {
        "ANSIBLE_COLLECTIONS_PATH": f"{home}/.ansible/collections:/usr/share/ansible/collections",
        "ANSIBLE_ROLES_PATH": f"{home}/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles",
    }


def ansible_environ(tmp: Path, conn: Connection, env_values: dict[str, str], cwd: Path | None = None) -> dict[str, str]:
    """The ansible-playbook process environment: private state under tmp, host keys checked."""
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_HOME": str(tmp / "home"),
            "ANSIBLE_LOCAL_TEMP": str(tmp / "local"),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for k, v in _search_path_defaults(cwd).items():
        env.setdefault(k, v)
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


# -- what the step reads: the playbook's folder, and the roles and files it names --------------------

_YAML_CAP = 4 << 20  # a playbook, task or meta file larger than this is not looked into
_FQCN = ("ansible.builtin.", "ansible.legacy.")


def _broad(folder: Path, base: Path) -> bool:
    """A folder too wide to read whole (the project root or above it, a home folder, /)."""
    return folder == base or folder in base.parents or folder == Path.home() or folder == Path(folder.anchor)


def _expand(path: str, basedir: str) -> str:
    """A path as Ansible's unfrackpath takes it: variables and ~ expanded, relative to ``basedir``."""
    path = os.path.expanduser(os.path.expandvars(path))
    return path if os.path.isabs(path) else os.path.join(basedir, path)


def _short(key: object) -> str:
    """A task keyword without the collection Ansible's own modules may be named by."""
    text = str(key)
    for prefix in _FQCN:
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _templated(value: str) -> bool:
    return "{{" in value or "{%" in value  # known only when the play runs: not followed


def _free_form(value: str) -> dict[str, str]:
    """``name=web tasks_from=x`` (a task's k=v arguments) as a dict; a bare word is ``_raw_params``."""
    try:
        words = shlex.split(value)
    except ValueError:
        words = value.split()
    out: dict[str, str] = {}
    for w in words:
        k, eq, v = w.partition("=")
        if eq:
            out[k] = v
        else:
            out.setdefault("_raw_params", w)
    return out


def _read_capped(path: str) -> bytes | None:
    """A regular file's bytes (``path`` real: opened with no link followed on the way), or None."""
    from devenv.paths import open_nofollow

    try:
        fd = open_nofollow(path)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _YAML_CAP:
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


_loader: Any = None


def _load_yaml(path: str) -> Any:
    """A YAML file's data, or None when it cannot be read or parsed (ansible-playbook says why).

    PyYAML comes with ansible-core; without it no role is followed (the playbook cannot run anyway).
    Ansible's own tags (!vault, !unsafe) read as the plain value under them."""
    global _loader
    data = _read_capped(path)
    if data is None:
        return None
    try:
        import yaml
    except ImportError:
        return None
    if _loader is None:

        class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
            pass

        def any_tag(loader: Any, _suffix: str, node: Any) -> Any:
            if isinstance(node, yaml.ScalarNode):
                return loader.construct_scalar(node)
            if isinstance(node, yaml.SequenceNode):
                return loader.construct_sequence(node)
            return loader.construct_mapping(node)

        Loader.add_multi_constructor("!", any_tag)
        _loader = Loader
    try:
        return yaml.load(data, Loader=_loader)  # a SafeLoader, plus plain values under '!' tags
    except Exception:  # noqa: BLE001 - yaml.YAMLError, a value it cannot build: not followed
        return None


def _cfg_roles_path(cfg: str) -> str | None:
    """``roles_path`` in an ansible.cfg's [defaults], read as Ansible reads it (quotes removed)."""
    import configparser

    data = _read_capped(cfg)
    if data is None:
        return None
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
    try:
        parser.read_string(data.decode("utf-8"))
        value = parser.get("defaults", "roles_path", fallback=None)
    except (configparser.Error, UnicodeDecodeError, ValueError):
        return None
    if value and len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


class Reads:
    """What an ansible step reads, found as ansible-playbook finds it, for the fingerprint.

    ``files``: the playbook's folder (or, at the project root, its Ansible neighbours), then every
    role its plays name (``roles:``, ``include_role``/``import_role`` tasks, role dependencies in
    meta/main.yml) that is not inside those already, and the task files, playbooks and ansible.cfg
    it includes or runs with. A role name is looked up as Ansible does (ansible-core's
    RoleDefinition._load_role_path): ``<playbook dir>/roles/NAME``, then each roles path entry
    (ANSIBLE_ROLES_PATH as the run has it, else ``roles_path`` in the project's ansible.cfg for this
    run: ANSIBLE_CONFIG or the one where ansible-playbook runs, the playbook's folder; relative
    entries from the cfg's folder), then the folder of the role that depends on it, then the playbook
    folder itself; the first that exists wins. A path (``../roles/web``) goes the same way, so it
    ends up relative to the playbook's folder. ~/.ansible.cfg and /etc/ansible are never read.

    Nothing outside the project is read unless the step allows it: a role found there by bare name
    on a roles path outside the project is an installed one (``installed``: left out of the
    fingerprint, warned about when the step runs); any other (named by a path, or reached through a
    link) is in ``outside``, refused like a link out of the project.
    """

    def __init__(self, playbook: Path, base: Path, listed: list[Path], *, allow_outside: bool) -> None:
        self.base = str(base)
        self.allow = allow_outside
        self.cwd = str(playbook.parent)  # where ansible-playbook runs (AnsibleProvisioner.run)
        self.files: list[Path] = list(listed)
        self.outside: list[str] = []
        self.installed: dict[str, str] = {}  # role name -> where it is
        self._done: set[str] = set()
        env = {**_search_path_defaults(playbook.parent), **os.environ}  # as ansible_environ has it
        self.roles_path = self._roles_path(env)
        if self._may_read(str(playbook)):
            self._playbook(str(playbook))

    # -- where things are ---------------------------------------------------------------------------
    def _inside(self, path: str) -> bool:
        return path == self.base or path.startswith(self.base.rstrip("/") + "/")

    def _may_read(self, real: str) -> bool:
        return self.allow or self._inside(real)

    def _shown(self, path: str) -> str:
        return os.path.relpath(path, self.base) if self._inside(path) else path

    def _covered(self, path: Path) -> bool:
        return any(path == f or f in path.parents for f in self.files)

    def _add(self, path: Path) -> None:
        if not self._covered(path):
            self.files.append(path)

    def _project_cfg(self, env: Mapping[str, str]) -> tuple[str, str] | None:
        """(as found, real path) of the ansible.cfg this run reads when it is the project's (named
        by ANSIBLE_CONFIG or where ansible-playbook runs, and inside the project), else None."""
        from devenv.paths import resolve

        found = _found_cfg(Path(self.cwd), env)
        if found is None or not found[1]:
            return None  # ~/.ansible.cfg, /etc/ansible/ansible.cfg or none: not the project's
        real = resolve(os.path.abspath(found[0])).path
        # The user's and the system's own are not the project's, even when ANSIBLE_CONFIG names them.
        theirs = {resolve(Path.home() / ".ansible.cfg").path, resolve("/etc/ansible/ansible.cfg").path}
        if not self._may_read(real) or real in theirs or real.startswith("/etc/ansible/"):
            return None
        return str(found[0]), real

    def _roles_path(self, env: Mapping[str, str]) -> list[str]:
        cfg = self._project_cfg(env)
        if cfg is not None:
            self._add(Path(cfg[1]))  # what it says changes what ansible-playbook does
        value = env.get("ANSIBLE_ROLES_PATH")
        if value:  # Ansible: the environment beats ansible.cfg; relative entries from the cwd
            return [os.path.normpath(_expand(p, self.cwd)) for p in value.split(os.pathsep) if p]
        value = _cfg_roles_path(cfg[1]) if cfg is not None else None
        if cfg is not None and value:  # relative entries from the cfg's own folder
            folder = os.path.dirname(os.path.abspath(cfg[0]))
            return [os.path.normpath(_expand(p, folder)) for p in value.split(os.pathsep) if p]
        # Ansible's default, but for {{ ANSIBLE_HOME }}/roles: devenv's private one holds none.
        return ["/usr/share/ansible/roles", "/etc/ansible/roles"]

    def _find_role(self, name: str, pbdir: str, role_basedir: str | None) -> tuple[str, str] | None:
        """(the search folder it was found in, its real path) for role ``name``, or None."""
        from devenv.paths import resolve

        search = [os.path.join(pbdir, "roles"), *self.roles_path, *([role_basedir] if role_basedir else []), pbdir]
        for folder in search:
            r = resolve(_expand(os.path.join(folder, name), self.cwd))
            if r.exists and not r.error:
                return folder, r.path
        r = resolve(_expand(name, self.cwd))  # last: the name as a path, from ansible-playbook's cwd
        if r.exists and not r.error:
            return self.cwd, r.path
        return None

    def _escapes(self, what: str, real: str, named_in: str) -> None:
        self.outside.append(
            f"{what} (named in '{self._shown(named_in)}') is '{real}', outside the project ({self.base}); "
            "ansible-playbook runs on this host and would read it: "
            "set allow_outside_project = true on this step if you mean it"
        )

    # -- what names what ----------------------------------------------------------------------------
    def _playbook(self, path: str) -> None:
        if path in self._done:
            return
        self._done.add(path)
        plays = _load_yaml(path)
        if not isinstance(plays, list):
            return
        pbdir = os.path.dirname(path)  # a play's roles are looked up from its own playbook's folder
        for play in plays:
            if not isinstance(play, dict):
                continue
            for key, value in play.items():
                if _short(key) == "import_playbook" and isinstance(value, str):
                    self._file(value, [pbdir], path, self._playbook)
            roles = play.get("roles")
            for entry in roles if isinstance(roles, list) else []:
                name = entry.get("role") or entry.get("name") if isinstance(entry, dict) else entry
                self._role(name, pbdir, None, path)
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                self._tasks(play.get(key), pbdir, pbdir, None, path)

    def _tasks(self, tasks: Any, pbdir: str, here: str, role: str | None, named_in: str) -> None:
        if not isinstance(tasks, list):
            return
        for task in tasks:
            if not isinstance(task, dict):
                continue
            for key in ("block", "rescue", "always"):
                self._tasks(task.get(key), pbdir, here, role, named_in)
            for key, value in task.items():
                short = _short(key)
                args = _free_form(value) if isinstance(value, str) else value if isinstance(value, dict) else {}
                if short in ("include_role", "import_role"):
                    self._role(args.get("name"), pbdir, None, named_in)
                elif short in ("include_tasks", "import_tasks"):
                    file = args.get("file") or args.get("_raw_params")
                    # In a role: its tasks/ folder first, then beside the file that includes it.
                    where = [os.path.join(role, "tasks"), role, here] if role else [here]
                    self._file(file, where, named_in, lambda p, r=role: self._task_file(p, pbdir, r))

    def _task_file(self, path: str, pbdir: str, role: str | None) -> None:
        if path in self._done:
            return
        self._done.add(path)
        self._tasks(_load_yaml(path), pbdir, os.path.dirname(path), role, path)

    def _file(self, name: Any, folders: list[str], named_in: str, follow: Any) -> None:
        """A task file or playbook named relative to ``folders``: fingerprinted, then looked into."""
        from devenv.paths import resolve

        if not isinstance(name, str) or not name or _templated(name):
            return
        for folder in folders:
            r = resolve(_expand(name, folder))
            if r.exists and not r.error:
                break
        else:
            return  # ansible-playbook says it is missing
        if not self._may_read(r.path):
            self._escapes(f"'{name}'", r.path, named_in)
            return
        self._add(Path(r.path))
        follow(r.path)

    def _role(self, name: Any, pbdir: str, role_basedir: str | None, named_in: str) -> None:
        from devenv.paths import resolve, walk

        if not isinstance(name, str) or not name.strip() or _templated(name):
            return
        found = self._find_role(name, pbdir, role_basedir)
        if found is None:
            return  # ansible-playbook says it is missing (or it is a collection's)
        folder, real = found
        if not self._may_read(real):
            bare = "/" not in name and not name.startswith("~")
            if bare and not self._inside(resolve(folder).path):
                self.installed.setdefault(name, real)
            else:
                self._escapes(f"role '{name}'", real, named_in)
            return
        if real in self._done:
            return
        self._done.add(real)
        role = Path(real)
        if _broad(role, Path(self.base)):  # a role repository's root: its role folders, not all of it
            for part in _ROLE_PARTS:
                if os.path.lexists(role / part):
                    self._add(role / part)
        else:
            self._add(role)
        for meta in ("main.yml", "main.yaml", "main"):
            data = _load_yaml(str(role / "meta" / meta))
            if data is not None:
                deps = data.get("dependencies") if isinstance(data, dict) else None
                for dep in deps if isinstance(deps, list) else []:
                    dep_name = dep.get("role") or dep.get("name") if isinstance(dep, dict) else dep
                    self._role(dep_name, pbdir, os.path.dirname(real), str(role / "meta" / meta))
                break
        for part in ("tasks", "handlers"):
            if not (role / part).is_dir():
                continue
            for p, st in walk(role / part):
                if stat.S_ISREG(st.st_mode) and p.name.endswith((".yml", ".yaml")):
                    self._task_file(str(p), pbdir, real)
