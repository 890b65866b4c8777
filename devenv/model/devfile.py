"""Find, load and validate a Devfile into an immutable model; export its JSON Schema.

Validation never stops at the first problem: every problem is collected with its file, line
and key path, so one `devenv validate` run shows them all.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import hashlib
import os
import re
import tomllib as _toml
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv import plugins
from devenv.errors import DevfileError
from devenv.model.networks import ATTACHMENT, NETWORKS, Attachment, Network
from devenv.model.networks import resolve as resolve_networks
from devenv.model.refs import REGISTRY_REPO
from devenv.model.schema import (
    MISSING,
    USER_NAME_HELP,
    USER_NAME_PATTERN,
    AnyOf,
    Bool,
    Custom,
    Field,
    Int,
    IPAddress,
    ListOf,
    MapOf,
    Number,
    Problem,
    Size,
    Str,
    Table,
    did_you_mean,
    format_path,
)
from devenv.model.steps import MAX_DEPTH, MAX_DEVFILE_BYTES, MAX_VALUES, Step, shape_problem
from devenv.model.steps import check_step as _step
from devenv.model.tomlpos import key_lines, line_of, nesting_depth_exceeded
from devenv.paths import ConfinementError, confine, read_regular, resolve

DEVFILE_NAMES = ("Devfile", "Devfile.toml")
NAME_PATTERN = r"[a-z0-9][a-z0-9-]{0,40}"
NAME_HELP = "lower-case letters, digits and '-', starting with a letter or digit, at most 41 characters"
HOSTNAME_PATTERN = (
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
BOX_PATTERN = r"docker:\S+|[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._-]+)?|\S+\.box|(file|https?)://\S+"
# A Devfile is a hand-written config: these bounds are far above any real one, and keep a hostile
# or broken file (/dev/zero, 50 MB, 5,000 nested arrays) a clear error instead of a hang or a crash.
MAX_SECRET_BYTES = 128 * 1024
SECRET_FIX = "write the host file's absolute or ~/ path in the Devfile if you mean a file outside the project"


# ---------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Secret:
    """An env value read from the host at use time; never written to state or shown."""

    from_env: str | None = None
    from_file: str | None = None

    def describe(self) -> str:
        return f"from_env:{self.from_env}" if self.from_env else f"from_file:{self.from_file}"

    @property
    def explicit_host_file(self) -> bool:
        """from_file written as an absolute or ~ path: the Devfile names a host file in plain sight."""
        return bool(self.from_file) and self.from_file.startswith(("/", "~"))

    def host_path(self, root: Path) -> Path:
        """The file to read. A relative path must really stay in the project (no '..' or symlink out).

        A secret usually lives outside the repository, so an absolute or ~ path may name any host
        file (devenv lists it in the first-use notice); but a relative path reads as "in this
        project", and a link committed there (conf/key -> ~/.ssh/id_ed25519) must not quietly
        carry a host file into a machine. Raises OSError (with the reason as strerror).
        """
        written = self.from_file or ""
        if self.explicit_host_file:
            return Path(os.path.expanduser(written))
        try:
            return confine(root, written, kind="none", fix=SECRET_FIX)
        except ConfinementError as exc:
            raise OSError(errno.EACCES, exc.message) from None

    def read(self, root: Path) -> str:
        """The value now: KeyError when the variable is unset, OSError when the file cannot be read."""
        if self.from_env:
            return os.environ[self.from_env]
        data = read_regular(self.host_path(root), MAX_SECRET_BYTES, what="it")
        try:
            return data.decode("utf-8").rstrip("\n")
        except UnicodeDecodeError:
            raise OSError(errno.EILSEQ, "it is not UTF-8 text") from None


@dataclass(frozen=True)
class Port:
    guest: int
    host: int | None = None  # None: the driver picks a free port
    host_ip: str = "127.0.0.1"
    protocol: str = "tcp"
    auto_correct: bool = False


@dataclass(frozen=True)
class SyncFolder:
    host: Path  # absolute
    guest: str
    read_only: bool = False
    type: str = "auto"
    exclude: tuple[str, ...] = ()
    allow_outside: bool = False  # allow_outside_project, for the check again at use


@dataclass(frozen=True)
class Machine:
    name: str
    driver: str
    box: str | None
    cpus: float | None
    memory: int | None  # bytes
    hostname: str
    env: dict = field(hash=False)
    ports: tuple[Port, ...] = ()
    sync: tuple[SyncFolder, ...] = ()
    provision: tuple[Step, ...] = ()
    depends_on: tuple[str, ...] = ()
    options: dict = field(default_factory=dict, hash=False)  # driver tables by driver name
    line: int | None = None
    networks: tuple[Attachment, ...] = ()  # private networks it joins (model/networks.py)
    user: str | None = None  # who ssh/exec run as; None: the transport's login user

    def driver_options(self) -> dict:
        return self.options.get(self.driver, {})


@dataclass(frozen=True)
class Devfile:
    path: Path
    root: Path
    project_name: str
    machines: dict[str, Machine] = field(hash=False)
    networks: dict[str, Network] = field(default_factory=dict, hash=False)
    box_registry: str | None = None  # [project] box_registry: oci://HOST/PATH
    package_cache: bool = True  # [project] package_cache = false: provision without the host's cache

    @property
    def project_id(self) -> str:
        """Stable per project folder: two checkouts of one repo never share machines."""
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:8]
        return f"{self.project_name}-{digest}"

    def order(self, names: list[str] | None = None) -> list[str]:
        """Machines in depends_on order; with names, those machines and what they depend on."""
        wanted = list(self.machines) if not names else list(names)
        out: list[str] = []

        def visit(n: str) -> None:
            if n in out:
                return
            for d in self.machines[n].depends_on:
                visit(d)
            out.append(n)

        for n in wanted:
            visit(n)
        return out

    def levels(self, names: list[str] | None = None) -> list[list[str]]:
        """Group machines so that each group depends only on earlier groups (parallel up)."""
        order = self.order(names)
        depth: dict[str, int] = {}
        for n in order:
            depth[n] = 1 + max((depth[d] for d in self.machines[n].depends_on), default=-1)
        groups: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for n in order:
            groups[depth[n]].append(n)
        return groups


# ---------------------------------------------------------------------------------------------
# Located problems and errors


@dataclass(frozen=True)
class LocatedProblem:
    file: str
    line: int | None
    key: str
    message: str
    column: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.column:
            where += f":{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "column": self.column, "key": self.key, "message": self.message}


def display_path(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# Schema


def _port_shorthand(value: Any, path: tuple, problems: list) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        text = value
    m = re.fullmatch(r"(?:(?:(\[?[0-9A-Fa-f:.]+\]?):)?(\d+):)?(\d+)(?:/(tcp|udp))?", text)
    if not m:
        problems.append(
            Problem(path, f"'{text}' is not a port: use a table {{ guest = 80, host = 8080 }} or \"HOST:GUEST[/udp]\"")
        )
        return MISSING
    ip, host, guest, proto = m.groups()
    table: dict = {"guest": int(guest)}
    if host:
        table["host"] = int(host)
    if ip:
        table["host_ip"] = ip.strip("[]")
    if proto:
        table["protocol"] = proto
    return _PORT_TABLE.check(table, path, problems)


_PORT_TABLE = Table(
    {
        "guest": Field(Int(minimum=1, maximum=65535, description="Port inside the machine"), required=True),
        "host": Field(Int(minimum=1, maximum=65535, description="Port on the host (free one chosen when absent)")),
        "host_ip": Field(IPAddress(description="Host address to bind; default 127.0.0.1"), default="127.0.0.1"),
        "protocol": Field(Str(choices=("tcp", "udp")), default="tcp"),
        "auto_correct": Field(Bool(description="Pick the next free host port when taken"), default=False),
    },
    description="A forwarded port",
)

_PORT = AnyOf(
    {
        dict: _PORT_TABLE,
        str: Custom(_port_shorthand, {"type": "string"}),
        int: Custom(_port_shorthand, {"type": "integer"}),
    },
    expected='a port table or "HOST:GUEST"',
)


def _sync_check(sync: dict, path: tuple, problems: list) -> None:
    guest = sync.get("guest")
    if guest and not guest.startswith("/"):
        problems.append(Problem(path + ("guest",), f"must be an absolute path in the machine, got '{guest}'"))


_SYNC_TABLE = Table(
    {
        "host": Field(Str(description="Folder on the host, relative to the project"), required=True),
        "guest": Field(Str(description="Absolute path in the machine"), required=True),
        "read_only": Field(Bool(), default=False),
        "type": Field(Str(choices=("auto", "bind", "rsync", "virtiofs", "9p", "vboxsf")), default="auto"),
        "exclude": Field(ListOf(Str()), default=list),
        "allow_outside_project": Field(Bool(description="Allow a host path outside the project"), default=False),
    },
    description="A folder shared from the host into the machine",
    check_fn=_sync_check,
)


def _sync_shorthand(value: Any, path: tuple, problems: list) -> Any:
    parts = value.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        problems.append(
            Problem(
                path, f'\'{value}\' is not a sync folder: use {{ host = ".", guest = "/src" }} or "HOST:GUEST[:ro]"'
            )
        )
        return MISSING
    table: dict = {"host": parts[0], "guest": parts[1]}
    if len(parts) == 3:
        table["read_only"] = parts[2] == "ro"
    return _SYNC_TABLE.check(table, path, problems)


_SYNC = AnyOf(
    {dict: _SYNC_TABLE, str: Custom(_sync_shorthand, {"type": "string"})}, expected='a sync table or "HOST:GUEST"'
)


_SECRET = Table(
    {
        "from_env": Field(Str(pattern=ENV_NAME, pattern_help="an environment variable name")),
        "from_file": Field(Str(description="A host file whose content is the value")),
    },
    description="A value read from the host when the machine starts; never stored",
)


def _env_value(value: Any, path: tuple, problems: list) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, dict):
        before = len(problems)
        t = _SECRET.check(value, path, problems)
        # Counted on the table as written: a misspelt from_env is not also "missing".
        if len([k for k in ("from_env", "from_file") if k in value]) != 1:
            problems.append(Problem(path, "a secret needs exactly one of 'from_env' or 'from_file'"))
        if t is MISSING or len(problems) > before:
            return MISSING
        return Secret(from_env=t.get("from_env"), from_file=t.get("from_file"))
    problems.append(Problem(path, "expected a string, number, boolean or { from_env = ... } / { from_file = ... }"))
    return MISSING


_ENV = MapOf(
    Custom(
        _env_value,
        {
            "anyOf": [
                {"type": ["string", "number", "boolean"]},
                {**_SECRET.json_schema(), "minProperties": 1, "maxProperties": 1},
            ]
        },
    ),
    key_pattern=ENV_NAME,
    key_help="letters, digits and '_', not starting with a digit",
    description="Environment variables of the machine",
)


class _LazySchemaCustom(Custom):
    """A Custom node whose JSON Schema is computed on export only (it imports every provisioner)."""

    def __init__(self, fn, schema_fn) -> None:
        super().__init__(fn, {})
        self._schema_fn = schema_fn

    def json_schema(self):
        return self._schema_fn()


def _step_schema() -> dict:
    return {"anyOf": [plugins.get_provisioner(t).options.json_schema() for t in plugins.provisioner_types()]}


def _driver_tables(value: dict, path: tuple, problems: list) -> dict[str, Any]:
    """The [machines.X.NAME] tables of drivers, each checked against its driver's options.

    A machine key (box, env, ...) is never a driver table, even if a plugin took that name; the
    other keys are looked up as driver names (a built-in one without scanning for plugins)."""
    out: dict[str, Any] = {}
    for name in value:
        if name in _MACHINE_KEYS or name not in plugins.DRIVER_NAMES:
            continue
        try:
            options = plugins.driver_class(name).options
        except DevfileError as exc:  # a plugin that fails to load: reported at its table
            problems.append(Problem(path + (name,), exc.message))
            out[name] = MISSING
            continue
        out[name] = options.check(value[name], path + (name,), problems)
    return out


# Vagrant's habits in a machine table, and what devenv calls them: `validate` says so at an
# unknown key (difflib alone would guess wrong: "ip" is not close to "networks").
_NETWORKS_HINT = (
    'a fixed address goes in networks = [{ name = "private", ip = "192.168.56.10" }], with a [networks.private] '
    "table (Vagrant's private_network)"
)
_RESOURCES_HINT = 'memory and CPUs are keys of the machine: memory = "2GiB", cpus = 2 (Vagrant\'s vb.memory, vb.cpus)'
_PORTS_HINT = "did you mean 'ports'? ports = [{ guest = 80, host = 8080 }] (Vagrant's forwarded_port)"
_SYNC_HINT = 'did you mean \'sync\'? sync = [{ host = ".", guest = "/vagrant" }] (Vagrant\'s synced_folder)'
VAGRANT_MACHINE_HINTS = {
    "ip": _NETWORKS_HINT,
    "ips": _NETWORKS_HINT,
    "private_network": _NETWORKS_HINT,
    "private_networks": _NETWORKS_HINT,
    "public_network": 'devenv does not bridge machines onto a host network: forward ports (host_ip = "0.0.0.0" '
    "shares one on your network)",
    "vb": _RESOURCES_HINT,
    "memory_mb": _RESOURCES_HINT,
    "memsize": _RESOURCES_HINT,
    "ram": _RESOURCES_HINT,
    "customize": _RESOURCES_HINT,
    "vcpus": _RESOURCES_HINT,
    "numvcpus": _RESOURCES_HINT,
    "forwarded_port": _PORTS_HINT,
    "forwarded_ports": _PORTS_HINT,
    "synced_folder": _SYNC_HINT,
    "synced_folders": _SYNC_HINT,
    "vm": "a machine table has no vm table: box, hostname, memory, cpus, ports, sync and networks are keys of "
    "the machine itself",
}
# "owner/name": how Vagrant Cloud names boxes (ubuntu/jammy64, bento/debian-12).
_VAGRANT_CLOUD_BOX = r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*"


@dataclass
class _BoxName(Str):
    """A box name; a Vagrant Cloud one gets the way to a devenv box."""

    def check(self, value, path, problems):
        if isinstance(value, str) and not re.fullmatch(BOX_PATTERN, value) and re.fullmatch(_VAGRANT_CLOUD_BOX, value):
            problems.append(
                Problem(
                    path,
                    f"'{value}' is a Vagrant Cloud box: devenv boots its own boxes (box = \"debian-12\") or an "
                    'engine image ("docker:IMAGE"); `devenv import-vagrant` turns a Vagrantfile into a Devfile '
                    "and maps its boxes (debian/*64, bento/debian-*, generic/debian* -> debian-12)",
                )
            )
            return MISSING
        return super().check(value, path, problems)


def machine_table(required: bool) -> Table:
    """The schema of a [machines.NAME] table; [defaults] uses it with nothing required."""
    return Table(
        {
            "driver": Field(
                # A live view: a built-in name validates without the plugin scan; a plugin's is found.
                Str(choices=plugins.DRIVER_NAMES, description="docker, libvirt, virtualbox, vagrant or a plugin's")
            ),
            "box": Field(
                _BoxName(
                    pattern=BOX_PATTERN,
                    pattern_help='a box name ("debian-12", "debian-12@VERSION"), "docker:IMAGE", or a .box path/URL',
                    description="What the machine boots",
                ),
            ),
            "cpus": Field(Number(exclusive_minimum=0, description="CPU limit (containers) or vCPUs (VMs)")),
            "memory": Field(Size(description='Memory limit, e.g. "1GiB"')),
            "hostname": Field(Str(pattern=HOSTNAME_PATTERN, pattern_help="an RFC 1123 host name")),
            "user": Field(
                Str(
                    pattern=USER_NAME_PATTERN,
                    pattern_help=USER_NAME_HELP,
                    description="Who `devenv ssh` and `exec` run as (default: the machine's login user); "
                    "provisioning stays root",
                )
            ),
            "env": Field(_ENV),
            "ports": Field(ListOf(_PORT, description="Ports forwarded from the host", keep_missing=True)),
            "sync": Field(ListOf(_SYNC, description="Folders shared into the machine", keep_missing=True)),
            "provision": Field(
                ListOf(_LazySchemaCustom(_step, _step_schema), description="Ordered provision steps", keep_missing=True)
            ),
            "depends_on": Field(ListOf(Str(), unique=True, description="Machines brought up first")),
            "networks": Field(
                ListOf(ATTACHMENT, keep_missing=True, description="Private networks it joins (default: 'default')")
            ),
        },
        description="A machine",
        extra_keys=_driver_tables,
        extra_names=plugins.DRIVER_NAMES,
        extra_schema=lambda: {n: plugins.driver_class(n).options.json_schema() for n in plugins.driver_names()},
        hints=VAGRANT_MACHINE_HINTS,
    )


# The keys of a machine table itself: every other key in it is a driver's table.
_MACHINE_KEYS = frozenset(machine_table(False).fields)


_PROJECT = Table(
    {
        "name": Field(
            Str(pattern=NAME_PATTERN, pattern_help=NAME_HELP, description="Project name (default: folder name)")
        ),
        # The team's box registry: every recipe box of the project (bundled ones too) is pulled
        # from REGISTRY/NAME:VERSION before it is built -- how a laptop gets the boxes CI published.
        "box_registry": Field(
            Str(
                pattern=REGISTRY_REPO,
                pattern_help="an OCI repository prefix: oci://HOST[:PORT]/PATH (boxes are PATH/NAME:VERSION)",
                description="Where the team's published boxes are (devenv box publish): tried before building",
            )
        ),
        # The host's shared package cache (apt through apt-cacher-ng) while devenv provisions.
        "package_cache": Field(
            Bool(description="apt in this project's machines goes through the host's package cache while provisioning"),
            default=True,
        ),
    },
    description="The project",
)


def json_schema() -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "devenv Devfile",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "project": _PROJECT.json_schema(),
            "networks": NETWORKS.json_schema(),
            "defaults": machine_table(False).json_schema(),
            "machines": {
                "type": "object",
                "propertyNames": {"pattern": f"^(?:{NAME_PATTERN})$"},
                "additionalProperties": machine_table(True).json_schema(),
            },
        },
        "required": ["machines"],
    }


# ---------------------------------------------------------------------------------------------
# Loading


def find_devfile(start: Path | None = None) -> Path:
    """The Devfile in ``start`` or the nearest parent folder, like Vagrant's Vagrantfile search."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for n in DEVFILE_NAMES:
            p = folder / n
            try:
                if p.is_file():
                    return p
            except PermissionError as exc:  # Python 3.11's is_file() raises it rather than say False
                raise DevfileError(
                    f"cannot look for a Devfile in {folder}: permission denied",
                    hint="run devenv as a user who can read the project folder (and every folder above it), "
                    "or name the Devfile with `devenv -f PATH`",
                ) from exc
    raise DevfileError(
        f"no Devfile found in {here} or any parent folder",
        hint="create one with `devenv init`, or name one with `devenv -f PATH`",
    )


def default_project_name(root: Path) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", root.name.lower()).strip("-")[:41]
    return slug or "project"


def _slug_hostname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", name)[:63].strip("-") or "machine"


def load(path: Path | None = None) -> Devfile:
    """Load and fully validate a Devfile; raise DevfileError listing every problem."""
    if path is None:
        path = find_devfile()
    try:
        found = Path(path).exists()
    except PermissionError as exc:
        raise DevfileError(
            f"cannot read {path}: permission denied",
            hint="run devenv as a user who can read the project folder (and every folder above it)",
        ) from exc
    if not found:
        raise DevfileError(f"Devfile not found: {path}", hint="check the path given with -f")
    path = real_devfile_path(path)
    devfile, problems = check_file(path)
    if problems:
        raise DevfileError(
            f"{display_path(path)} has {len(problems)} problem{'s' if len(problems) != 1 else ''}",
            problems,
            hint="fix them and run `devenv validate`",
        )
    assert devfile is not None
    return devfile


def real_devfile_path(path: Path | str) -> Path:
    """The Devfile's real path (its folder is the project root); a link loop stays as written."""
    r = resolve(os.path.abspath(path))
    return Path(r.path) if not r.error else Path(os.path.abspath(path))


def read_devfile_text(path: Path) -> tuple[str | None, LocatedProblem | None]:
    """The Devfile's text: a regular file of at most MAX_DEVFILE_BYTES, in UTF-8."""
    shown = display_path(path)
    try:
        raw = read_regular(path, MAX_DEVFILE_BYTES, what="it")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EFBIG:
            reason += "; a Devfile is a short config file: keep data out of it"
        return None, LocatedProblem(shown, None, "", f"cannot read the Devfile: {reason}")
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, LocatedProblem(
            shown,
            None,
            "",
            f"cannot read the Devfile: it is not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, "
            f"column {col}): save it as UTF-8",
        )


def check_file(path: Path) -> tuple[Devfile | None, list[LocatedProblem]]:
    path = real_devfile_path(path)
    text, problem = read_devfile_text(path)
    if problem is not None or text is None:
        return None, [problem] if problem else []
    return check_text(text, path)


def check_text(text: str, path: Path) -> tuple[Devfile | None, list[LocatedProblem]]:
    shown = display_path(path)
    if len(text) > MAX_DEVFILE_BYTES:
        return None, [LocatedProblem(shown, None, "", f"the Devfile is larger than {MAX_DEVFILE_BYTES >> 20} MiB")]
    # Before the parser, which recurses per nesting level: 5,000 nested arrays end here, clearly.
    deep_line = nesting_depth_exceeded(text, MAX_DEPTH)
    if deep_line is not None:
        return None, [LocatedProblem(shown, deep_line, "", f"arrays or tables nested deeper than {MAX_DEPTH} levels")]
    try:
        data = _toml.loads(text)
    except RecursionError:  # not expected after the depth check; never an internal error
        return None, [LocatedProblem(shown, None, "", f"nested deeper than {MAX_DEPTH} levels")]
    except _toml.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        col = getattr(exc, "colno", None)
        msg = getattr(exc, "msg", str(exc))
        if line is None:  # Python < 3.14: the position is only in the text
            m = re.search(r"line (\d+), column (\d+)", str(exc))
            if m:
                line, col = int(m.group(1)), int(m.group(2))
            elif "(at end of document)" in str(exc):
                line, col = text.count("\n") + 1, len(text) - text.rfind("\n")
            msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
        return None, [LocatedProblem(shown, line, "", f"TOML syntax error: {_toml_message(msg)}", column=col)]
    problems: list[Problem] = []
    shape = shape_problem(data, MAX_DEPTH, MAX_VALUES)
    if shape is not None:  # dotted keys nest without brackets (a.b.c... 5,000 levels); or a flood
        problems.append(shape)
        devfile = None
    else:
        devfile = _build(data, path, problems)
    if not problems:  # positions are needed for problems only: a valid Devfile is never scanned
        return devfile, []
    locs = key_lines(text, {tuple(p.path) for p in problems})
    # One problem per place: a [defaults] entry inherited by several machines is reported once.
    problems = list(dict.fromkeys(problems))
    problems.sort(key=lambda p: (line_of(locs, p.path) or 0, _sort_path(p)))
    located = [LocatedProblem(shown, line_of(locs, p.path), p.key, p.message) for p in problems]
    return (None if located else devfile), located


def _sort_path(p: Problem) -> tuple:
    """Problems on one line in key order, array elements by index (ports[2] before ports[10])."""
    return tuple((0, x, "") if isinstance(x, int) else (1, 0, str(x)) for x in p.path)


def _toml_message(msg: str) -> str:
    """tomllib's wording, made to speak TOML rather than Python."""
    m = re.fullmatch(r"Cannot declare \((.*)\) twice", msg)
    if m:
        try:
            keys = ast.literal_eval(f"({m.group(1)})")
            return f"table [{format_path(tuple(keys))}] is declared twice"
        except (ValueError, SyntaxError):
            return msg
    if msg == "Cannot overwrite a value":
        return "a key is set twice in the same table"
    return msg


def _build(data: dict, path: Path, problems: list[Problem]) -> Devfile | None:
    root = path.parent
    top = ("project", "networks", "defaults", "machines")
    for k in data:
        if k not in top:
            problems.append(Problem((k,), f"unknown key{did_you_mean(k, top)}"))

    project = _PROJECT.check(data.get("project", {}), ("project",), problems)
    name = (project or {}).get("name") or default_project_name(root)

    defaults = machine_table(False).check(data.get("defaults", {}), ("defaults",), problems) or {}
    declared = NETWORKS.check(data.get("networks", {}), ("networks",), problems)
    wants: dict[str, dict] = {}

    raw_machines = data.get("machines")
    if raw_machines is None:
        problems.append(Problem(("machines",), "no machines defined: add a [machines.NAME] table"))
        return None
    if not isinstance(raw_machines, dict):
        problems.append(Problem(("machines",), "expected a table of machines"))
        return None
    if not raw_machines:
        problems.append(Problem(("machines",), "no machines defined: add a [machines.NAME] table"))

    table = machine_table(True)
    machines: dict[str, Machine] = {}
    origins: dict[str, dict[str, tuple]] = {}
    port_index: dict[str, list[int]] = {}
    for mname, raw in raw_machines.items():
        mpath = ("machines", mname)
        if not re.fullmatch(NAME_PATTERN, mname):
            problems.append(Problem(mpath, f"'{mname}' is not a valid machine name: {NAME_HELP}"))
            continue
        checked = table.check(raw, mpath, problems)
        if checked is MISSING:
            continue
        merged, origin = _merge(defaults, checked, mname, raw)
        origins[mname] = origin
        # Indices of the usable ports as written: a port conflict names the entry in the file.
        port_index[mname] = [i for i, p in enumerate(merged.get("ports", [])) if p and "guest" in p]
        raw_defaults = data.get("defaults")
        box_written = "box" in raw or (isinstance(raw_defaults, dict) and "box" in raw_defaults)
        m = _make_machine(mname, merged, origin, root, problems, box_written=box_written)
        if m is not None:
            machines[mname] = m
            wants[mname] = {"networks": merged.get("networks"), "at": origin.get("networks", mpath) + ("networks",)}

    networks, attached = resolve_networks(declared if declared is not MISSING else {}, wants, problems)
    for n, m in list(machines.items()):
        atts = attached.get(n, ())
        if atts and not _makes_networks(m.driver):
            # The project default is Docker's for now; a network the Devfile names is a promise.
            if any(not a.network.implicit for a in atts):
                problems.append(
                    Problem(
                        wants[n]["at"],
                        f"the {m.driver} driver does not make private networks yet "
                        f"(drivers that do: {', '.join(_network_drivers())})",
                    )
                )
            atts = ()
        machines[n] = dataclasses.replace(m, networks=atts)
    _cross_check(machines, origins, port_index, problems)
    for m in machines.values():
        # Drivers with host paths of their own (vagrant's dir) confine them against the real root.
        if m.driver == "vagrant":
            vagrant: Any = plugins.get_driver("vagrant")  # by the registry: the model imports no driver
            for p in vagrant.validate_paths(m, root):
                problems.append(Problem(("machines", m.name, *p.path), p.message))
    return Devfile(
        path=path,
        root=root,
        project_name=name,
        machines=machines,
        networks=networks,
        box_registry=(project or {}).get("box_registry"),
        package_cache=(project or {}).get("package_cache", True) is not False,
    )


def _makes_networks(driver: str) -> bool:
    try:
        features = getattr(plugins.driver_class(driver), "features", None)
    except DevfileError:
        return False  # an unknown driver: reported where it is named
    return bool(getattr(features, "networks", False))


def _network_drivers() -> list[str]:
    """The drivers that make private networks, by what the registry's classes declare (loaded on
    this error path only), so the message stays true as drivers and plugins learn them."""
    return [n for n in plugins.driver_names() if _makes_networks(n)]


def _merge(defaults: dict, machine: dict, mname: str, raw: dict | None = None) -> tuple[dict, dict[str, tuple]]:
    """[defaults] under a machine: scalars and lists are replaced, env and driver tables merged.

    ``raw`` is the machine table as written: of a merged table only the keys written in it
    override [defaults] (not the schema defaults that checking filled in).
    """
    merged: dict = {}
    origin: dict[str, tuple] = {}
    for k, v in defaults.items():
        merged[k] = v
        origin[k] = ("defaults",)
    for k, v in machine.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            written = (raw or {}).get(k)
            if isinstance(written, dict):
                v = {kk: vv for kk, vv in v.items() if kk in written}
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
        origin[k] = ("machines", mname)
    return merged, origin


def _make_machine(
    name: str, d: dict, origin: dict, root: Path, problems: list[Problem], *, box_written: bool = False
) -> Machine | None:
    def at(key: str, *rest) -> tuple:
        return origin.get(key, ("machines", name)) + (key, *rest)

    driver = d.get("driver", "docker")
    # An invalid box is reported where it is written; some drivers take the box from their own config.
    if not d.get("box") and not box_written and plugins.needs_box(driver):
        problems.append(
            Problem(("machines", name, "box"), 'is required, e.g. box = "debian-12" or box = "docker:IMAGE"')
        )
    sync = []
    for i, s in enumerate(d.get("sync", [])):
        if not s or "host" not in s or "guest" not in s:
            continue  # unusable entry: its problems are reported already
        # The real path (every link followed) must be inside the project: a folder that is, or goes
        # through, a symlink to ~ or / would otherwise be shared into the machine read-write.
        allow = bool(s.get("allow_outside_project"))
        try:
            host = confine(root, s["host"], allow_outside=allow, kind="dir", what="entry")
        except ConfinementError as exc:
            problems.append(Problem(at("sync", i, "host"), exc.message))
            continue
        sync.append(
            SyncFolder(
                host=host,
                guest=s["guest"],
                read_only=s.get("read_only", False),
                type=s.get("type", "auto"),
                exclude=tuple(s.get("exclude", ())),
                allow_outside=allow,
            )
        )
    for k, v in d.get("env", {}).items():
        if isinstance(v, Secret) and v.from_file and not v.explicit_host_file:
            try:
                v.host_path(root)
            except OSError as exc:
                problems.append(Problem(at("env", k, "from_file"), exc.strerror or str(exc)))
    steps = []
    for i, s in enumerate(d.get("provision", [])):
        if s is MISSING:
            continue
        prov = plugins.get_provisioner(s["type"])
        for p in prov.check(s, root, at("provision", i)):
            problems.append(p)
        steps.append(Step(index=i, type=s["type"], config=s, run=s.get("run", "once"), name=s.get("name")))
    ports = tuple(
        Port(
            guest=p["guest"],
            host=p.get("host"),
            host_ip=p.get("host_ip", "127.0.0.1"),
            protocol=p.get("protocol", "tcp"),
            auto_correct=p.get("auto_correct", False),
        )
        for p in d.get("ports", [])
        if p and "guest" in p
    )
    options = {k: v for k, v in d.items() if k not in _MACHINE_KEYS and k in plugins.DRIVER_NAMES}
    return Machine(
        name=name,
        driver=driver,
        box=d.get("box"),
        cpus=d.get("cpus"),
        memory=d.get("memory"),
        hostname=d.get("hostname") or _slug_hostname(name),
        user=d.get("user"),
        env=dict(d.get("env", {})),
        ports=ports,
        sync=tuple(sync),
        provision=tuple(steps),
        depends_on=tuple(d.get("depends_on", ())),
        options=options,
    )


def check_sync_at_use(machine: Machine, root: Path) -> None:
    """Confine the machine's sync folders again just before an engine is given them.

    Validation resolved each to its real path; a folder on that path may have been replaced by a
    symlink since (a machine with the project synced read-write can do it), and the engine would
    follow it at mount time. Raises ConfinementError (exit 2) naming the entry.
    """
    for i, s in enumerate(machine.sync):
        try:
            confine(root, str(s.host), allow_outside=s.allow_outside, kind="dir", what="entry")
        except ConfinementError as exc:
            raise ConfinementError(
                f"machine '{machine.name}': sync[{i}] {exc.message}",
                hint="it changed since the Devfile was checked (a symbolic link was put in its place?): "
                "nothing was shared; fix it and run the command again",
            ) from None


def _overlap(a: str, b: str) -> bool:
    wildcard = ("0.0.0.0", "::")
    return a == b or a in wildcard or b in wildcard


def _cross_check(
    machines: dict[str, Machine], origins: dict, port_index: dict[str, list[int]], problems: list[Problem]
) -> None:
    def at(m: str, key: str, *rest) -> tuple:
        return origins.get(m, {}).get(key, ("machines", m)) + (key, *rest)

    for m in machines.values():
        for i, dep in enumerate(m.depends_on):
            if dep == m.name:
                problems.append(Problem(at(m.name, "depends_on", i), "a machine cannot depend on itself"))
            elif dep not in machines:
                problems.append(
                    Problem(at(m.name, "depends_on", i), f"unknown machine '{dep}'{did_you_mean(dep, machines)}")
                )
    # Cycles: report each once, at the machine where the walk closes it.
    state: dict[str, int] = {}
    reported: set[frozenset] = set()

    def walk(n: str, stack: list[str]) -> None:
        state[n] = 1
        for i, d in enumerate(machines[n].depends_on):
            if d not in machines or d == n:
                continue
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [n, d] if d in stack else [n, d]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    problems.append(Problem(at(n, "depends_on", i), "dependency cycle: " + " -> ".join(cycle)))
            elif state.get(d) is None:
                walk(d, stack + [n])
        state[n] = 2

    for n in machines:
        if state.get(n) is None:
            walk(n, [])

    seen: list[tuple[str, int, str, str, int]] = []  # (ip, host, proto, machine, index)
    for m in machines.values():
        written_at = port_index.get(m.name) or list(range(len(m.ports)))
        for k, p in enumerate(m.ports):
            i = written_at[k]
            if p.host is None:
                continue
            for ip, host, proto, other, j in seen:
                if host == p.host and proto == p.protocol and _overlap(ip, p.host_ip):
                    what = "this machine" if other == m.name else f"machine '{other}'"
                    msg = f"host port {p.host}/{p.protocol} is already used by {what} (ports[{j}])"
                    if at(m.name, "ports")[0] == "defaults":
                        msg = (
                            f"host port {p.host}/{p.protocol} is inherited by machine '{m.name}' and "
                            f"already used by {what} (ports[{j}]); give each machine its own ports"
                        )
                    problems.append(Problem(at(m.name, "ports", i, "host"), msg))
                    break
            seen.append((p.host_ip, p.host, p.protocol, m.name, i))

    for m in machines.values():
        try:
            driver = plugins.get_driver(m.driver)
        except DevfileError as exc:
            problems.append(Problem(at(m.name, "driver"), exc.message))
            continue
        for p in driver.validate(m):
            problems.append(Problem(at(m.name, *p.path), p.message))


ANSIBLE_ON_HOST = (
    "ansible-playbook runs on this host, and a playbook can run any command here "
    "(delegate_to: localhost, local_action, lookup('pipe', ...), templated extra_vars)"
)


def _step_reach(where: str, step: Step) -> list[str]:
    """What one provision step (a Devfile's or a recipe's) runs on, or reads from, this host."""
    if step.type == "ansible":
        return [f"{where}: ansible playbook {step.config.get('playbook')}: {ANSIBLE_ON_HOST}"]
    if step.config.get("allow_outside_project"):
        key = "script" if "script" in step.config else "source"
        if key in step.config:
            return [f"{where}: reads the host path {step.config[key]} (outside the project)"]
    return []


def _outside(path: str, root: Path) -> bool:
    real = resolve(os.path.join(str(root), os.path.expanduser(path))).path
    base = resolve(str(root)).path
    return not (real == base or real.startswith(base.rstrip("/") + "/"))


def _file_url_path(url: str) -> str | None:
    """The host path a ``file:`` URL names (``file:/x``, ``file:///x``, ``file://localhost/x``)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        return None
    return unquote(parts.path) or "/"


def _box_reach(where: str, box: str, root: Path) -> list[str]:
    """A ``box`` that is a host file (a path or a file: URL) outside the project."""
    from devenv.model import recipe as boxes

    if boxes.parse_ref(box).kind != "file":
        return []
    path = _file_url_path(box) if "://" in box or box.lower().startswith("file:") else box
    if path is None or not _outside(path, root):
        return []
    return [f"{where}: reads the host file {box} (outside the project)"]


def recipe_reach(recipe: Any) -> list[str]:
    """What building this box recipe runs on, or reads from, this host (`box build`, and `up` when
    the box is missing: the recipe's steps run as the Devfile's own would)."""
    root = str(recipe.root)
    items: list[str] = []
    for step in recipe.provision:
        items += _step_reach(f"box recipe {recipe.path}: provision[{step.index}]", step)
    for i, src in enumerate(recipe.sources):
        if isinstance(src.get("path"), str):
            real = resolve(os.path.join(root, os.path.expanduser(src["path"]))).path
            if not (real == root or real.startswith(root.rstrip("/") + "/")):
                items.append(f"box recipe {recipe.path}: sources[{i}]: reads the host file {src['path']}")
        for key in ("url", "mirror"):
            # A file: URL (cloud-image/box url, debootstrap mirror) reads the host's own files.
            value = src.get(key)
            host_path = _file_url_path(value) if isinstance(value, str) else None
            if host_path is not None and _outside(host_path, recipe.root):
                items.append(f"box recipe {recipe.path}: sources[{i}].{key}: reads the host path {value}")
    return items


def _recipe_for(box: str | None, root: Path) -> Any | None:
    """The recipe a `box` value builds from (the project's boxes/, then devenv's own), if any.

    Looked up as the drivers do, but quietly: an unknown or invalid recipe is reported elsewhere."""
    if not box:
        return None
    from devenv.errors import DevenvError
    from devenv.model import recipe as boxes

    ref = boxes.parse_ref(box)
    if ref.kind != "recipe" or not boxes.valid_name(ref.name):
        return None
    for d in boxes.recipe_dirs(root):
        path = d / f"{ref.name}.toml"
        if path.is_file():
            try:
                return boxes.load_recipe(path)
            except DevenvError:
                return None
    return None


def host_reach(df: Devfile, *, extra_boxes: tuple[str, ...] = ()) -> list[str]:
    """What in this Devfile runs code on, or reads files of, this host rather than a machine.

    Includes the steps of the box recipes its machines (or ``extra_boxes``: `up --box`) build from."""
    root = str(df.root)

    def inside(p: str) -> bool:
        return p == root or p.startswith(root.rstrip("/") + "/")

    items: list[str] = []
    recipes: dict[str, Any] = {}
    for m in df.machines.values():
        for step in m.provision:
            items += _step_reach(step_path(m.name, step.index), step)
        for k, v in sorted(m.env.items()):
            if isinstance(v, Secret) and v.from_env:
                # Any host variable (a CI token, a cloud key) can be named: the notice says which.
                items.append(
                    f"{format_path(('machines', m.name, 'env', k))}: reads the host environment variable "
                    f"{v.from_env} into machine {m.name}"
                )
            if isinstance(v, Secret) and v.explicit_host_file:
                real = resolve(os.path.expanduser(v.from_file or "")).path
                if not inside(real):
                    items.append(
                        f"{format_path(('machines', m.name, 'env', k))}: puts the host file {v.from_file} "
                        "into the machine's environment"
                    )
        for i, s in enumerate(m.sync):
            if not inside(str(s.host)):
                how = "read-only" if s.read_only else "read-write"
                items.append(f"{format_path(('machines', m.name, 'sync', i))}: shares the host folder {s.host} ({how})")
        if m.driver == "vagrant" and isinstance(m.driver_options().get("dir"), str):
            # Every `vagrant` call devenv makes (status, up, destroy) loads that Vagrantfile: Ruby.
            items.append(
                f"{format_path(('machines', m.name, 'vagrant', 'dir'))}: the Vagrantfile in "
                f"{m.driver_options()['dir']} is Ruby code that Vagrant runs on this host"
            )
        if m.box:
            items += _box_reach(format_path(("machines", m.name, "box")), m.box, df.root)
    for box in [*(m.box for m in df.machines.values()), *extra_boxes]:
        recipe = _recipe_for(box, df.root)
        if recipe is not None:
            recipes.setdefault(str(recipe.path), recipe)
    for recipe in recipes.values():
        items += recipe_reach(recipe)
    return items


def step_path(machine: str, index: int) -> str:
    return format_path(("machines", machine, "provision", index))
