"""Unit tests for devenv.model.devfile: loading, validation messages, defaults, shorthands and the JSON Schema.

No engine is needed: the docker driver's validate() only inspects the model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from devenv.errors import DevfileError
from devenv.model import devfile
from devenv.model.devfile import LocatedProblem, Port, check_file, find_devfile, json_schema, load
from devenv.model.schema import parse_size
from tests.support import missing

REPO = Path(__file__).resolve().parents[2]
DEVENV = Path(sys.executable).with_name("devenv")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the cwd, so problems print as `Devfile:LINE`) with real files to point at."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup.sh").write_text("#!/bin/sh\necho setup\n")
    (tmp_path / "conf").mkdir()  # conf/app.env deliberately missing
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "motd").write_text("hello\n")
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(root: Path, text: str, name: str = "Devfile") -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems_of(root: Path, text: str) -> list[str]:
    df, problems = check_file(write(root, text))
    assert (df is None) == bool(problems)
    return [str(p) for p in problems]


def load_text(root: Path, text: str) -> devfile.Devfile:
    return load(write(root, text))


# ---------------------------------------------------------------------------------------------
# Invalid Devfiles: every problem, exact text, in order. "{root}" is the project folder.

INVALID = [
    pytest.param(
        """
        [machines.web
        box = "busybox"
        """,
        ["Devfile:1:14: TOML syntax error: Expected ']' at the end of a table declaration"],
        id="toml-syntax-unclosed-header",
    ),
    pytest.param(
        """
        [machines.web]
        box = busybox
        """,
        ["Devfile:2:7: TOML syntax error: Invalid value"],
        id="toml-syntax-bare-string",
    ),
    pytest.param(
        """
        [machines.web]
        box = "busybox
        """,
        ["Devfile:2:15: TOML syntax error: Illegal character '\\n'"],
        id="toml-syntax-unterminated-string",
    ),
    pytest.param(
        """
        [machines.web]
        ports = [80,
        """,
        ["Devfile:3:1: TOML syntax error: Invalid value"],
        id="toml-syntax-at-end-of-file-has-a-position",
    ),
    pytest.param(
        """
        [machines.web]
        box = "busybox"
        box = "debian-12"
        cpus = 1
        """,
        ["Devfile:3:18: TOML syntax error: a key is set twice in the same table"],
        id="toml-duplicate-key",
    ),
    pytest.param(
        """
        [machines.web]
        box = "busybox"
        [machines.web]
        cpus = 1
        """,
        ["Devfile:3:14: TOML syntax error: table [machines.web] is declared twice"],
        id="toml-duplicate-table",
    ),
    pytest.param(
        """
        [machines.web]
        box = "busybox"
        memroy = "1GiB"
        """,
        ["Devfile:3: machines.web.memroy: unknown key (did you mean 'memory'?)"],
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        """
        [machines.web]
        box = "busybox"
        colour = "red"
        """,
        ["Devfile:3: machines.web.colour: unknown key"],
        id="unknown-key-nothing-close",
    ),
    pytest.param(
        """
        [machine.web]
        box = "busybox"
        """,
        [
            "Devfile: machines: no machines defined: add a [machines.NAME] table",
            "Devfile:1: machine: unknown key (did you mean 'machines'?)",
        ],
        id="unknown-top-level-table",
    ),
    pytest.param(
        """
        [machines.web]
        box = "busybox"
        [machines.web.dokcer]
        privileged = true
        """,
        ["Devfile:3: machines.web.dokcer: unknown key (did you mean 'docker'?)"],
        id="unknown-driver-table",
    ),
    pytest.param(
        """
        [project]
        name = "demo"
        [machines.web]
        box = "busybox"
        provision = [
          { type = "file", source = "files/motd", destination = "/etc/motd" },
          { type = "file", source = "conf/app.env", destination = "/etc/app.env" },
          { type = "shell", script = "scripts/missing.sh" },
        ]
        """,
        [
            "Devfile:7: machines.web.provision[1].source: file not found: conf/app.env",
            "Devfile:8: machines.web.provision[2].script: file not found: scripts/missing.sh",
        ],
        id="missing-provision-files",
    ),
    pytest.param(
        """
        [machines.web]
        box = "busybox"

        [[machines.web.provision]]
        type = "shell"
        script = "scripts/setup.sh"

        [[machines.web.provision]]
        type = "shell"
        script = "scripts/nope.sh"
        """,
        ["Devfile:10: machines.web.provision[1].script: file not found: scripts/nope.sh"],
        id="missing-script-array-of-tables",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        depends_on = ["b"]

        [machines.b]
        box = "busybox"
        depends_on = ["a"]
        """,
        ["Devfile:7: machines.b.depends_on[0]: dependency cycle: a -> b -> a"],
        id="dependency-cycle-two",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        depends_on = ["b"]
        [machines.b]
        box = "busybox"
        depends_on = ["c"]
        [machines.c]
        box = "busybox"
        depends_on = ["a"]
        """,
        ["Devfile:9: machines.c.depends_on[0]: dependency cycle: a -> b -> c -> a"],
        id="dependency-cycle-three",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        depends_on = ["a"]
        """,
        ["Devfile:3: machines.a.depends_on[0]: a machine cannot depend on itself"],
        id="depends-on-itself",
    ),
    pytest.param(
        """
        [machines.app]
        box = "busybox"
        depends_on = ["db", "wbe"]
        [machines.web]
        box = "busybox"
        """,
        [
            "Devfile:3: machines.app.depends_on[0]: unknown machine 'db'",
            "Devfile:3: machines.app.depends_on[1]: unknown machine 'wbe' (did you mean 'web'?)",
        ],
        id="depends-on-unknown-machine",
    ),
    pytest.param(
        """
        [machines.app]
        box = "busybox"
        depends_on = ["web", "web"]
        [machines.web]
        box = "busybox"
        """,
        ["Devfile:3: machines.app.depends_on[1]: 'web' is listed twice"],
        id="depends-on-twice",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        depends_on = "b"
        """,
        ["Devfile:3: machines.a.depends_on: expected an array, got a string"],
        id="depends-on-not-a-list",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        ports = ["8080:80"]

        [machines.b]
        box = "busybox"
        ports = [{ guest = 81, host = 8080 }]
        """,
        ["Devfile:7: machines.b.ports[0].host: host port 8080/tcp is already used by machine 'a' (ports[0])"],
        id="host-port-twice-two-machines",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        ports = [
          "8080:80",
          "8080:53/udp",
          "127.0.0.2:8080:81",
          { guest = 82, host = 8080, host_ip = "0.0.0.0" },
        ]
        """,
        ["Devfile:7: machines.a.ports[3].host: host port 8080/tcp is already used by this machine (ports[0])"],
        id="host-port-twice-wildcard-address",
    ),
    pytest.param(
        """
        [defaults]
        box = "busybox"
        ports = ["8080:80"]
        [machines.a]
        [machines.b]
        """,
        [
            "Devfile:3: defaults.ports[0].host: host port 8080/tcp is inherited by machine 'b' and already used "
            "by machine 'a' (ports[0]); give each machine its own ports"
        ],
        id="host-port-from-defaults",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        sync = [
          { host = "..", guest = "/up" },
          { host = "/etc", guest = "/etc-host" },
          "src/../..:/up2",
        ]
        """,
        [
            "Devfile:4: machines.a.sync[0].host: '..' is outside the project ({root}); "
            "set allow_outside_project = true on this entry if you mean it",
            "Devfile:5: machines.a.sync[1].host: '/etc' is outside the project ({root}); "
            "set allow_outside_project = true on this entry if you mean it",
            "Devfile:6: machines.a.sync[2].host: 'src/../..' is outside the project ({root}); "
            "set allow_outside_project = true on this entry if you mean it",
        ],
        id="sync-outside-project",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        sync = ["./nope:/src", "a:b:c", ".:rel", { guest = "/x" }, 7]
        """,
        [
            "Devfile:3: machines.a.sync[0].host: folder not found: ./nope",
            "Devfile:3: machines.a.sync[1]: 'a:b:c' is not a sync folder: "
            'use { host = ".", guest = "/src" } or "HOST:GUEST[:ro]"',
            "Devfile:3: machines.a.sync[2].guest: must be an absolute path in the machine, got 'rel'",
            "Devfile:3: machines.a.sync[3].host: is required",
            'Devfile:3: machines.a.sync[4]: expected a sync table or "HOST:GUEST", got an integer',
        ],
        id="sync-bad-entries",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        sync = [{ host = ".", guest = "/s", read_only = "yes", type = "nfs", exclude = "x" }]
        """,
        [
            "Devfile:3: machines.a.sync[0].exclude: expected an array, got a string",
            "Devfile:3: machines.a.sync[0].read_only: expected true or false, got a string",
            "Devfile:3: machines.a.sync[0].type: 'nfs' is not one of: auto, bind, rsync, virtiofs, 9p, vboxsf",
        ],
        id="sync-bad-fields",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        sync = [{ host = ".", guest = "/src", type = "rsync" }]
        """,
        [
            "Devfile:3: machines.a.sync[0].type: the docker driver syncs with bind mounts; "
            'type \'rsync\' is not supported (use "auto" or "bind")'
        ],
        id="sync-type-not-for-docker",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        ports = ["abc", 0, "70000:80", { guest = 80, host_ip = "nope" }, true, { host = 1 }]
        """,
        [
            "Devfile:3: machines.a.ports[0]: 'abc' is not a port: "
            'use a table { guest = 80, host = 8080 } or "HOST:GUEST[/udp]"',
            "Devfile:3: machines.a.ports[1].guest: must be at least 1, got 0",
            "Devfile:3: machines.a.ports[2].host: must be at most 65535, got 70000",
            "Devfile:3: machines.a.ports[3].host_ip: 'nope' is not an IP address",
            'Devfile:3: machines.a.ports[4]: expected a port table or "HOST:GUEST", got a boolean',
            "Devfile:3: machines.a.ports[5].guest: is required",
        ],
        id="bad-ports",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        ports = [{ guest = 80, host = 8080, protocol = "sctp", auto_correct = 1 }]
        """,
        [
            "Devfile:3: machines.a.ports[0].auto_correct: expected true or false, got an integer",
            "Devfile:3: machines.a.ports[0].protocol: 'sctp' is not one of: tcp, udp",
        ],
        id="bad-port-fields",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        cpus = 0
        memory = "lots"
        hostname = "-bad"
        [machines.b]
        box = "busybox"
        cpus = "2"
        memory = 1
        hostname = "b_1"
        [machines.c]
        box = "busybox"
        memory = true
        """,
        [
            "Devfile:3: machines.a.cpus: must be greater than 0, got 0",
            'Devfile:4: machines.a.memory: expected a size like "512MiB" or "2GiB" (a bare number is MiB), '
            "got 'lots'",
            "Devfile:5: machines.a.hostname: '-bad' is not valid: an RFC 1123 host name",
            "Devfile:8: machines.b.cpus: expected a number, got a string",
            "Devfile:9: machines.b.memory: 1 is too small (at least 4MiB)",
            "Devfile:10: machines.b.hostname: 'b_1' is not valid: an RFC 1123 host name",
            'Devfile:13: machines.c.memory: expected a size like "512MiB" or "2GiB" (a bare number is MiB), '
            "got a boolean",
        ],
        id="resources-and-hostname",
    ),
    pytest.param(
        """
        [machines.a]
        cpus = 1
        [machines.b]
        box = "not a box!"
        [machines.c]
        box = "x.box"
        """,
        [
            'Devfile:1: machines.a.box: is required, e.g. box = "debian-12" or box = "docker:IMAGE"',
            "Devfile:4: machines.b.box: 'not a box!' is not valid: "
            'a box name ("debian-12", "debian-12@VERSION"), "docker:IMAGE", or a .box path/URL',
            'Devfile:6: machines.c.box: the docker driver cannot boot a .box file; use a box recipe name or "docker:IMAGE"',
        ],
        id="box-missing-invalid-unsupported",
    ),
    pytest.param(
        """
        [project]
        name = "My Project"

        [machines.Web]
        box = "busybox"
        [machines.db]
        box = "busybox"
        """,
        [
            "Devfile:2: project.name: 'My Project' is not valid: "
            "lower-case letters, digits and '-', starting with a letter or digit, at most 41 characters",
            "Devfile:4: machines.Web: 'Web' is not a valid machine name: "
            "lower-case letters, digits and '-', starting with a letter or digit, at most 41 characters",
        ],
        id="bad-names",
    ),
    pytest.param(
        """
        [project]
        name = "x"
        [machines]
        """,
        ["Devfile:3: machines: no machines defined: add a [machines.NAME] table"],
        id="no-machines",
    ),
    pytest.param(
        """
        machines = ["web"]
        """,
        ["Devfile:1: machines: expected a table of machines"],
        id="machines-not-a-table",
    ),
    pytest.param(
        """
        [machines]
        web = "busybox"
        """,
        ["Devfile:2: machines.web: expected a table, got a string"],
        id="machine-not-a-table",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        driver = "vagrnt"
        """,
        [
            "Devfile:3: machines.a.driver: 'vagrnt' is not one of: docker, libvirt, vagrant, virtualbox (did you mean 'vagrant'?)"
        ],
        id="unknown-driver",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        [machines.a.docker]
        privileged = "yes"
        prvileged = true
        """,
        [
            "Devfile:4: machines.a.docker.privileged: expected true or false, got a string",
            "Devfile:5: machines.a.docker.prvileged: unknown key (did you mean 'privileged'?)",
        ],
        id="docker-table",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        docker = { shm_size = "64 megs" }
        """,
        ['Devfile:3: machines.a.docker.shm_size: \'64 megs\' is not a size (use e.g. "64m" or "1g")'],
        id="docker-shm-size",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        env = { "1X" = "a", OK = [1], X = { from_env = "1BAD" }, Y = { from_file = "" }, Z = {}, W = { from_env = "A", from_file = "b" } }
        """,
        [
            "Devfile:3: machines.a.env.1X: '1X' is not a valid name: letters, digits and '_', not starting with a digit",
            "Devfile:3: machines.a.env.OK: expected a string, number, boolean or { from_env = ... } / { from_file = ... }",
            "Devfile:3: machines.a.env.W: a secret needs exactly one of 'from_env' or 'from_file'",
            "Devfile:3: machines.a.env.X.from_env: '1BAD' is not valid: an environment variable name",
            "Devfile:3: machines.a.env.Y.from_file: must not be empty",
            "Devfile:3: machines.a.env.Z: a secret needs exactly one of 'from_env' or 'from_file'",
        ],
        id="env",
    ),
    pytest.param(
        """
        [machines.a]
        box = "busybox"
        provision = [
          "echo hi",
          { type = "shel", inline = "true" },
          { inline = "true" },
          { type = "shell" },
          { type = "shell", inline = "true", script = "scripts/setup.sh" },
          { type = "file", source = "files/motd", destination = "etc/motd" },
          { type = "file", source = "files/motd" },
          { type = "shell", inline = "true", run = "twice", bogus = 1, args = "x" },
          { type = "shell", script = "scripts/gone.sh" },
        ]
        """,
        [
            'Devfile:4: machines.a.provision[0]: expected a step table like { type = "shell", script = "..." }',
            "Devfile:5: machines.a.provision[1].type: unknown provisioner type 'shel' (known: ansible, file, shell) "
            "(did you mean 'shell'?)",
            "Devfile:6: machines.a.provision[2].type: is required (one of: ansible, file, shell)",
            "Devfile:7: machines.a.provision[3]: a shell step needs exactly one of 'inline' or 'script'",
            "Devfile:8: machines.a.provision[4]: a shell step needs exactly one of 'inline' or 'script'",
            "Devfile:9: machines.a.provision[5].destination: must be an absolute path in the machine, got 'etc/motd'",
            "Devfile:10: machines.a.provision[6].destination: is required",
            "Devfile:11: machines.a.provision[7].args: expected an array, got a string",
            "Devfile:11: machines.a.provision[7].bogus: unknown key",
            "Devfile:11: machines.a.provision[7].run: 'twice' is not one of: once, always, never",
            "Devfile:12: machines.a.provision[8].script: file not found: scripts/gone.sh",
        ],
        id="provision-steps",
    ),
    pytest.param(
        """
        [defaults]
        box = "x.box"
        memory = "1XB"
        sync = [{ host = "/", guest = "/host" }]
        provision = [{ type = "shell", script = "scripts/nope.sh" }]

        [machines.a]
        [machines.b]
        """,
        [
            'Devfile:2: defaults.box: the docker driver cannot boot a .box file; use a box recipe name or "docker:IMAGE"',
            'Devfile:3: defaults.memory: expected a size like "512MiB" or "2GiB" (a bare number is MiB), got \'1XB\'',
            "Devfile:4: defaults.sync[0].host: '/' is outside the project ({root}); "
            "set allow_outside_project = true on this entry if you mean it",
            "Devfile:5: defaults.provision[0].script: file not found: scripts/nope.sh",
        ],
        id="defaults-reported-once-where-written",
    ),
    pytest.param(
        """
        [defaults]
        box = "bad box"
        [machines.a]
        """,
        [
            "Devfile:2: defaults.box: 'bad box' is not valid: "
            'a box name ("debian-12", "debian-12@VERSION"), "docker:IMAGE", or a .box path/URL',
        ],
        id="invalid-default-box-not-also-missing",
    ),
    pytest.param(
        # Several problems at once, written out of order: all reported, sorted by line.
        """
        [project]
        name = "Demo"

        [defaults]
        box = "busybox"
        cpu = 2

        [machines.web]
        ports = ["8080:80"]
        provision = [
          { type = "shell", script = "scripts/setup.sh" },
          { type = "file", source = "conf/app.env", destination = "/etc/app.env" },
        ]
        depends_on = ["db"]

        [machines.api]
        ports = [{ guest = 8000, host = 8080 }]
        sync = [{ host = "../shared", guest = "/shared" }]
        memory = "2 parsecs"
        depends_on = ["web", "cache"]

        [machines.cache]
        depends_on = ["api"]

        [mashines.db]
        box = "postgres"
        """,
        [
            "Devfile:2: project.name: 'Demo' is not valid: "
            "lower-case letters, digits and '-', starting with a letter or digit, at most 41 characters",
            "Devfile:6: defaults.cpu: unknown key (did you mean 'cpus'?)",
            "Devfile:12: machines.web.provision[1].source: file not found: conf/app.env",
            "Devfile:14: machines.web.depends_on[0]: unknown machine 'db'",
            "Devfile:17: machines.api.ports[0].host: host port 8080/tcp is already used by machine 'web' (ports[0])",
            "Devfile:18: machines.api.sync[0].host: '../shared' is outside the project ({root}); "
            "set allow_outside_project = true on this entry if you mean it",
            'Devfile:19: machines.api.memory: expected a size like "512MiB" or "2GiB" (a bare number is MiB), '
            "got '2 parsecs'",
            "Devfile:23: machines.cache.depends_on[0]: dependency cycle: api -> cache -> api",
            "Devfile:25: mashines: unknown key (did you mean 'machines'?)",
        ],
        id="many-problems-at-once-sorted-by-line",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_invalid_devfile_reports_every_problem(project: Path, text: str, expected: list[str]) -> None:
    assert problems_of(project, text) == [e.replace("{root}", str(project)) for e in expected]


def test_there_are_enough_invalid_cases() -> None:
    assert len(INVALID) >= 20


@pytest.mark.parametrize(("text", "expected"), INVALID[:3])
def test_load_raises_with_the_same_problems(project: Path, text: str, expected: list[str]) -> None:
    with pytest.raises(DevfileError) as exc:
        load_text(project, text)
    assert exc.value.exit_code == 2
    assert [str(p) for p in exc.value.problems] == [e.replace("{root}", str(project)) for e in expected]
    n = len(expected)
    assert exc.value.message == f"Devfile has {n} problem{'s' if n != 1 else ''}"


def test_outside_project_allowed_when_asked(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("shared")
    df = load_text(
        project,
        f"""
        [machines.a]
        box = "busybox"
        sync = [{{ host = "{outside}", guest = "/shared", allow_outside_project = true }}, ".:/src:ro", "src:/s"]
        """,
    )
    sync = df.machines["a"].sync
    assert [(s.host, s.guest, s.read_only, s.type) for s in sync] == [
        (outside, "/shared", False, "auto"),
        (project, "/src", True, "auto"),
        (project / "src", "/s", False, "auto"),
    ]


def test_problem_in_other_file_is_shown_relative_to_cwd(project: Path) -> None:
    sub = project / "sub"
    sub.mkdir()
    path = write(sub, '[machines.a]\nbox = "busybox"\ncpus = -1\n')
    _, problems = check_file(path)
    assert [str(p) for p in problems] == ["sub/Devfile:3: machines.a.cpus: must be greater than 0, got -1"]


def test_unreadable_devfile_is_a_problem_not_a_crash(project: Path) -> None:
    (project / "Devfile").write_bytes(b"\xff\xfe[machines]")
    _, problems = check_file(project / "Devfile")
    assert len(problems) == 1
    assert str(problems[0]).startswith("Devfile: cannot read the Devfile: ")


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (LocatedProblem("Devfile", 3, "machines.a.box", "is required"), "Devfile:3: machines.a.box: is required"),
        (LocatedProblem("Devfile", 1, "", "TOML syntax error: x", column=5), "Devfile:1:5: TOML syntax error: x"),
        (LocatedProblem("Devfile", None, "machines", "none"), "Devfile: machines: none"),
        (LocatedProblem("Devfile", None, "", "cannot read"), "Devfile: cannot read"),
    ],
)
def test_located_problem_str(problem: LocatedProblem, text: str) -> None:
    assert str(problem) == text
    assert problem.as_dict()["message"] == problem.message


# ---------------------------------------------------------------------------------------------
# Valid Devfiles: the model


def test_devfile_example_is_valid() -> None:
    df = load(REPO / "Devfile.example")
    assert df.project_name == "example"
    assert list(df.machines) == ["web", "app"]
    app = df.machines["app"]
    assert (app.driver, app.box, app.cpus, app.memory, app.hostname) == ("docker", "debian-12", 1, 512 * 2**20, "app")
    assert app.env == {"APP_ENV": "development"}
    assert app.sync[0].host == REPO and app.sync[0].read_only
    assert [s.type for s in app.provision] == ["shell", "file"]
    assert df.machines["web"].box == "busybox"
    assert df.machines["web"].ports == (Port(guest=80, host=18080),)
    assert df.order() == ["web", "app"]


def test_defaults_merged_under_every_machine(project: Path) -> None:
    df = load_text(
        project,
        """
        [defaults]
        box = "debian-12"
        cpus = 2
        env = { A = "1", B = "2" }
        ports = ["8080:80"]
        provision = [{ type = "shell", inline = "echo default" }]
        docker = { privileged = true, labels = { team = "x" }, network = "n1" }

        [machines.a]
        box = "busybox"
        env = { B = "3", C = true, D = 4 }
        ports = ["9000:90"]
        docker = { user = "me" }

        [machines.b]
        provision = []
        """,
    )
    a, b = df.machines["a"], df.machines["b"]
    # scalars: the machine wins, otherwise the default
    assert (a.box, a.cpus) == ("busybox", 2)
    assert (b.box, b.cpus) == ("debian-12", 2)
    # env: merged key-wise, values as strings
    assert a.env == {"A": "1", "B": "3", "C": "true", "D": "4"}
    assert b.env == {"A": "1", "B": "2"}
    # lists: replaced, never appended
    assert [p.host for p in a.ports] == [9000]
    assert [p.host for p in b.ports] == [8080]
    assert [s.config["inline"] for s in a.provision] == ["echo default"]
    assert b.provision == ()
    # driver tables: merged key-wise; the schema's own defaults do not undo [defaults]
    assert a.driver_options()["privileged"] is True
    assert a.driver_options()["labels"] == {"team": "x"}
    assert a.driver_options()["network"] == "n1"
    assert a.driver_options()["user"] == "me"
    assert "user" not in b.driver_options()
    assert b.driver_options()["privileged"] is True


def test_machine_defaults(project: Path) -> None:
    df = load_text(project, '[machines.web-1]\nbox = "busybox"\n')
    m = df.machines["web-1"]
    assert (m.driver, m.hostname, m.cpus, m.memory) == ("docker", "web-1", None, None)
    assert (m.env, m.ports, m.sync, m.provision, m.depends_on) == ({}, (), (), (), ())
    assert df.project_name == devfile.default_project_name(project)
    assert df.root == project and df.path == project / "Devfile"


def test_hostname_given(project: Path) -> None:
    df = load_text(project, '[machines.a]\nbox = "busybox"\nhostname = "api.local"\n')
    assert df.machines["a"].hostname == "api.local"


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ('"8080:80"', Port(guest=80, host=8080)),
        ('"127.0.0.1:8080:80/udp"', Port(guest=80, host=8080, host_ip="127.0.0.1", protocol="udp")),
        ('"0.0.0.0:8080:80"', Port(guest=80, host=8080, host_ip="0.0.0.0")),
        ('"[::1]:8080:80/tcp"', Port(guest=80, host=8080, host_ip="::1")),
        ('"53/udp"', Port(guest=53, protocol="udp")),
        ('"80"', Port(guest=80)),
        ("80", Port(guest=80)),
        ("{ guest = 80 }", Port(guest=80)),
        ("{ guest = 80, host = 8080 }", Port(guest=80, host=8080, host_ip="127.0.0.1")),
        (
            '{ guest = 80, host = 8080, host_ip = "::", protocol = "udp", auto_correct = true }',
            Port(guest=80, host=8080, host_ip="::", protocol="udp", auto_correct=True),
        ),
    ],
)
def test_ports(project: Path, port: str, expected: Port) -> None:
    df = load_text(project, f'[machines.a]\nbox = "busybox"\nports = [{port}]\n')
    assert df.machines["a"].ports == (expected,)
    assert df.machines["a"].ports[0].host_ip == expected.host_ip


def test_host_ip_defaults_to_loopback(project: Path) -> None:
    df = load_text(project, '[machines.a]\nbox = "busybox"\nports = ["8080:80", { guest = 81, host = 8081 }]\n')
    assert [p.host_ip for p in df.machines["a"].ports] == ["127.0.0.1", "127.0.0.1"]


def test_same_host_port_on_different_addresses_or_protocols_is_fine(project: Path) -> None:
    df = load_text(
        project,
        """
        [machines.a]
        box = "busybox"
        ports = ["8080:80", "8080:80/udp", "127.0.0.2:8080:81"]
        [machines.b]
        box = "busybox"
        ports = ["127.0.0.3:8080:80", "80", "80"]
        """,
    )
    assert len(df.machines["a"].ports) == 3


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ('"512MiB"', 512 * 2**20),
        ('"1GiB"', 2**30),
        ('"1.5GiB"', 3 * 2**29),
        ('"2g"', 2 * 10**9),
        ('"2GB"', 2 * 10**9),
        ('" 64 mib "', 64 * 2**20),
        ("1024", 2**30),
        ('"1024"', 2**30),
        ("4", 4 * 2**20),
    ],
)
def test_memory_sizes(project: Path, memory: str, expected: int) -> None:
    df = load_text(project, f'[machines.a]\nbox = "busybox"\nmemory = {memory}\n')
    assert df.machines["a"].memory == expected


@pytest.mark.parametrize("text", ["", "lots", "1XB", "-1GiB", "0", "GiB", "1 2", True, False, 0, -5])
def test_parse_size_rejects(text) -> None:
    assert parse_size(text) is None


def test_secrets_from_env_and_file(project: Path) -> None:
    df = load_text(
        project,
        """
        [machines.a]
        box = "busybox"
        env = { TOKEN = { from_env = "MY_TOKEN" }, KEY = { from_file = "conf/key" }, PLAIN = 1.5 }
        """,
    )
    env = df.machines["a"].env
    assert env["TOKEN"] == devfile.Secret(from_env="MY_TOKEN")
    assert env["KEY"] == devfile.Secret(from_file="conf/key")
    assert env["PLAIN"] == "1.5"
    assert env["TOKEN"].describe() == "from_env:MY_TOKEN"


def test_provision_steps(project: Path) -> None:
    df = load_text(
        project,
        """
        [machines.a]
        box = "busybox"
        provision = [
          { type = "shell", script = "scripts/setup.sh", args = ["x"], name = "setup" },
          { type = "file", source = "files", destination = "/srv/files", run = "always" },
          { type = "shell", inline = "echo hi" },
        ]
        """,
    )
    steps = df.machines["a"].provision
    assert [(s.index, s.type, s.run, s.name) for s in steps] == [
        (0, "shell", "once", "setup"),
        (1, "file", "always", None),
        (2, "shell", "once", None),
    ]
    assert [s.label for s in steps] == ["[0] setup", "[1] file files -> /srv/files", "[2] shell: echo hi"]
    assert devfile.step_path("a", 1) == "machines.a.provision[1]"


# ---------------------------------------------------------------------------------------------
# find_devfile, order, levels


def test_find_devfile_in_a_parent_folder(project: Path) -> None:
    write(project, '[machines.a]\nbox = "busybox"\n')
    deep = project / "src" / "pkg" / "mod"
    deep.mkdir(parents=True)
    assert find_devfile(deep) == project / "Devfile"
    assert find_devfile(project) == project / "Devfile"


def test_find_devfile_uses_cwd_and_nearest_and_devfile_toml(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(project, '[machines.a]\nbox = "busybox"\n')
    inner = project / "src"
    write(inner, '[machines.b]\nbox = "busybox"\n', name="Devfile.toml")
    monkeypatch.chdir(inner)
    assert find_devfile() == inner / "Devfile.toml"
    assert list(load().machines) == ["b"]


def test_find_devfile_not_found(tmp_path: Path) -> None:
    with pytest.raises(DevfileError, match="no Devfile found in") as exc:
        find_devfile(tmp_path)
    assert exc.value.exit_code == 2 and "devenv init" in exc.value.hint


def test_load_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DevfileError, match="Devfile not found"):
        load(tmp_path / "nope" / "Devfile")


DEPENDS = """
[defaults]
box = "busybox"
[machines.app]
depends_on = ["db", "cache"]
[machines.db]
[machines.cache]
depends_on = ["db"]
[machines.worker]
depends_on = ["cache"]
[machines.docs]
"""


def test_order_follows_depends_on(project: Path) -> None:
    df = load_text(project, DEPENDS)
    assert df.order() == ["db", "cache", "app", "worker", "docs"]
    assert df.order(["worker"]) == ["db", "cache", "worker"]
    assert df.order(["docs", "app"]) == ["docs", "db", "cache", "app"]
    order = df.order()
    for name, m in df.machines.items():
        assert all(order.index(d) < order.index(name) for d in m.depends_on)


def test_levels_follow_depends_on(project: Path) -> None:
    df = load_text(project, DEPENDS)
    assert df.levels() == [["db", "docs"], ["cache"], ["app", "worker"]]
    assert df.levels(["worker"]) == [["db"], ["cache"], ["worker"]]
    assert df.levels(["docs"]) == [["docs"]]


def test_project_id_is_stable_per_folder(project: Path) -> None:
    a = load_text(project, '[project]\nname = "demo"\n[machines.a]\nbox = "busybox"\n')
    b = load_text(project, '[project]\nname = "demo"\n[machines.a]\nbox = "busybox"\n')
    assert a.project_id == b.project_id and a.project_id.startswith("demo-")


# ---------------------------------------------------------------------------------------------
# JSON Schema


def _objects(schema):
    """Every object schema (with properties) inside a JSON Schema."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            yield schema
        for v in schema.values():
            yield from _objects(v)
    elif isinstance(schema, list):
        for v in schema:
            yield from _objects(v)


def test_json_schema_structure() -> None:
    schema = json_schema()
    json.dumps(schema)  # serialisable
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"project", "networks", "defaults", "machines"}
    assert schema["required"] == ["machines"]
    machine = schema["properties"]["machines"]["additionalProperties"]
    assert {"box", "cpus", "memory", "ports", "sync", "provision", "depends_on", "env", "docker"} <= set(
        machine["properties"]
    )
    objects = list(_objects(schema))
    assert len(objects) > 5
    assert all(o["additionalProperties"] is False for o in objects)


@pytest.fixture
def validator():
    try:
        import jsonschema
    except ImportError:
        missing("jsonschema is not installed (pip install 'devenv[test]')")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_json_schema_accepts_devfile_example(validator) -> None:
    data = tomllib.loads((REPO / "Devfile.example").read_text())
    assert list(validator.iter_errors(data)) == []


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        (lambda d: d.update(bogus=1), "$"),
        (lambda d: d["project"].update(title="x"), "$.project"),
        (lambda d: d["defaults"].update(memroy="1GiB"), "$.defaults"),
        (lambda d: d["machines"]["web"].update(colour="red"), "$.machines.web"),
        (lambda d: d["machines"]["app"].update(docker={"prvileged": True}), "$.machines.app.docker"),
        (lambda d: d["machines"]["web"]["ports"][0].update(hots=1), "$.machines.web.ports[0]"),
        (lambda d: d["machines"]["app"]["sync"][0].update(ro=True), "$.machines.app.sync[0]"),
        (lambda d: d["machines"]["app"]["provision"][0].update(scirpt="x"), "$.machines.app.provision[0]"),
        (lambda d: d["machines"]["app"]["env"].update(S={}), "$.machines.app.env.S"),
        (lambda d: d["machines"]["web"]["ports"][0].update(host_ip="nope"), "$.machines.web.ports[0]"),
        (lambda d: d["machines"].update(Web={"box": "busybox"}), "$.machines"),
        (lambda d: d["machines"]["app"].update(memory=True), "$.machines.app.memory"),
    ],
)
def test_json_schema_rejects(validator, patch, where: str) -> None:
    data = tomllib.loads((REPO / "Devfile.example").read_text())
    patch(data)
    errors = list(validator.iter_errors(data))
    assert [e.json_path for e in errors] == [where]


# ---------------------------------------------------------------------------------------------
# Through the CLI


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEVENV), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_cli_validate_invalid_exits_2_with_every_problem(project: Path) -> None:
    text, expected = INVALID[-1].values
    path = write(project, text)
    r = run_cli(project, "-f", str(path), "validate")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.splitlines()
    assert lines[: len(expected)] == [e.replace("{root}", str(project)) for e in expected]
    assert f"{len(expected)} problems in Devfile" in r.stderr


def test_cli_validate_toml_syntax_error(project: Path) -> None:
    path = write(project, "[machines.web\n")
    r = run_cli(project, "-f", str(path), "validate")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stderr.splitlines()[0] == "Devfile:1:14: TOML syntax error: Expected ']' at the end of a table declaration"


def test_cli_validate_json(project: Path) -> None:
    path = write(project, '[machines.a]\nbox = "busybox"\nmemroy = 1\n')
    r = run_cli(project, "-f", str(path), "validate", "--json")
    assert r.returncode == 2
    out = json.loads(r.stdout)
    assert out["valid"] is False
    assert out["problems"] == [
        {
            "file": "Devfile",
            "line": 3,
            "column": None,
            "key": "machines.a.memroy",
            "message": "unknown key (did you mean 'memory'?)",
        }
    ]


def test_cli_validate_valid_exits_0(project: Path) -> None:
    write(project, '[machines.a]\nbox = "busybox"\n')
    r = run_cli(project, "validate")  # found in the cwd
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.strip() == "Devfile is valid: 1 machine(s): a"


def test_cli_validate_devfile_example() -> None:
    r = run_cli(REPO, "-f", "Devfile.example", "validate")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_validate_missing_file_exits_2(project: Path) -> None:
    r = run_cli(project, "-f", "nope", "validate")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("nope: cannot read the Devfile:")


def test_cli_schema_is_json() -> None:
    r = run_cli(REPO, "schema")
    assert r.returncode == 0
    assert json.loads(r.stdout) == json_schema()


def test_step_paths_outside_the_project_need_consent(tmp_path, monkeypatch):
    from devenv.model import devfile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Devfile").write_text(
        '[machines.a]\nbox = "busybox"\nprovision = [\n'
        '  { type = "file", source = "/etc/hostname", destination = "/x" },\n'
        '  { type = "shell", script = "../outside.sh" },\n'
        '  { type = "file", source = "/etc/hostname", destination = "/y", allow_outside_project = true },\n'
        "]\n"
    )
    (tmp_path.parent / "outside.sh").write_text("true\n")
    _, problems = devfile.check_file(tmp_path / "Devfile")
    assert [str(p) for p in problems] == [
        f"Devfile:4: machines.a.provision[0].source: '/etc/hostname' is outside the project ({tmp_path}); "
        "set allow_outside_project = true on this step if you mean it",
        f"Devfile:5: machines.a.provision[1].script: '../outside.sh' is outside the project ({tmp_path}); "
        "set allow_outside_project = true on this step if you mean it",
    ]
