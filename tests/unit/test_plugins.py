"""devenv.plugins: built-in drivers and provisioners by name, plugins by entry point, looked up lazily.

The plugins here are fake distributions (a dist-info folder and a module) put on sys.path, as pip
would install them; importlib.metadata reads them like any installed package.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from devenv import plugins
from devenv.errors import DevfileError
from devenv.model import devfile

REPO = Path(__file__).resolve().parents[2]

PODMAN = """
    from devenv.contract import QUIET, Features, Field, Str, Table

    class PodmanDriver:
        name = "podman"
        needs_box = False
        options = Table({"socket": Field(Str(description="The engine's socket"))}, description="podman")
        features = Features()
        reporter = QUIET

        def validate(self, machine):
            return []

    class Evil:  # a second "docker": must never be used (nor imported)
        name = "docker"

    class Misnamed:
        name = "other"
        options = Table({})
"""

TOUCH = """
    from devenv.contract import Field, Str, Table

    class TouchProvisioner:
        type = "touch"
        options = Table({"type": Field(Str()), "file": Field(Str(), required=True)}, description="touch")

        def files(self, config, root):
            return []

        def check(self, config, root, path):
            return []

        def describe(self, config):
            return "touch " + config["file"]
"""


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """Returns install(dist, entry_points, **modules): a fake installed distribution on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    # A fresh registry for this test: no scan yet, no instances (the previous ones come back after).
    monkeypatch.setattr(plugins, "_plugins", None)
    monkeypatch.setattr(plugins, "_drivers", {})
    monkeypatch.setattr(plugins, "_provisioners", {})
    made: list[str] = []

    def install(dist: str, entry_points: str, **modules: str) -> None:
        info = site / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
        for name, source in modules.items():
            (site / f"{name}.py").write_text(textwrap.dedent(source))
            made.append(name)
        importlib.invalidate_caches()

    yield install
    for name in made:
        sys.modules.pop(name, None)


def _devfile(tmp_path: Path, text: str) -> tuple[devfile.Devfile | None, list[str]]:
    path = tmp_path / "proj" / "Devfile"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text))
    df, problems = devfile.check_file(path)
    return df, [f"{p.key}: {p.message}" for p in problems]


# -- entry points ---------------------------------------------------------------------------------


def test_a_plugin_driver_and_provisioner_are_found_by_entry_point(plugin_site, tmp_path):
    plugin_site(
        "devenv-podman",
        """
        [devenv.drivers]
        podman = podman_mod:PodmanDriver
        [devenv.provisioners]
        touch = touch_mod:TouchProvisioner
        """,
        podman_mod=PODMAN,
        touch_mod=TOUCH,
    )
    assert "podman" in plugins.driver_names() and "docker" in plugins.driver_names()
    assert plugins.provisioner_types() == ["ansible", "file", "shell", "touch"]
    assert plugins.driver_class("podman").__name__ == "PodmanDriver"
    assert plugins.get_driver("podman") is plugins.get_driver("podman")  # one instance per process
    assert plugins.needs_box("podman") is False
    assert plugins.get_provisioner("touch").describe({"file": "x"}) == "touch x"

    df, problems = _devfile(
        tmp_path,
        """
        [machines.web]
        driver = "podman"
        [machines.web.podman]
        socket = "/run/podman.sock"
        [[machines.web.provision]]
        type = "touch"
        file = "ready"
        """,
    )
    assert problems == []
    assert df is not None
    web = df.machines["web"]
    assert web.driver_options() == {"socket": "/run/podman.sock"}
    assert web.provision[0].label == "[0] touch ready"


def test_a_plugins_tables_are_checked_against_its_options(plugin_site, tmp_path):
    plugin_site(
        "devenv-podman",
        "[devenv.drivers]\npodman = podman_mod:PodmanDriver\n[devenv.provisioners]\ntouch = touch_mod:TouchProvisioner\n",
        podman_mod=PODMAN,
        touch_mod=TOUCH,
    )
    _, problems = _devfile(
        tmp_path,
        """
        [machines.web]
        driver = "podman"
        [machines.web.podman]
        sockett = "/run/podman.sock"
        [[machines.web.provision]]
        type = "touch"
        """,
    )
    assert problems == [
        "machines.web.podman.sockett: unknown key (did you mean 'socket'?)",
        "machines.web.provision[0].file: is required",
    ]


def test_the_schema_includes_plugin_drivers_and_step_types(plugin_site):
    plugin_site(
        "devenv-podman",
        "[devenv.drivers]\npodman = podman_mod:PodmanDriver\n[devenv.provisioners]\ntouch = touch_mod:TouchProvisioner\n",
        podman_mod=PODMAN,
        touch_mod=TOUCH,
    )
    machine = devfile.json_schema()["properties"]["machines"]["additionalProperties"]
    assert "podman" in machine["properties"]["driver"]["enum"]
    assert machine["properties"]["podman"]["properties"] == {
        "socket": {"type": "string", "description": "The engine's socket"}
    }
    steps = machine["properties"]["provision"]["items"]["anyOf"]
    assert any(s["properties"].get("file") == {"type": "string"} for s in steps)


def test_unknown_names_list_the_plugins_too(plugin_site, tmp_path):
    plugin_site("devenv-podman", "[devenv.drivers]\npodman = podman_mod:PodmanDriver\n", podman_mod=PODMAN)
    with pytest.raises(DevfileError) as exc:
        plugins.get_driver("podmn")
    assert exc.value.message == (
        "unknown driver 'podmn' (known: docker, libvirt, podman, vagrant, virtualbox) (did you mean 'podman'?)"
    )
    _, problems = _devfile(tmp_path, '[machines.web]\ndriver = "podmn"\nbox = "docker:alpine"\n')
    assert problems == [
        "machines.web.driver: 'podmn' is not one of: docker, libvirt, podman, vagrant, virtualbox (did you mean 'podman'?)"
    ]


def test_a_built_in_name_wins_over_an_entry_point(plugin_site):
    # devenv's own distribution lists its built-ins as entry points too; a plugin's "docker" is ignored.
    plugin_site("devenv-evil", "[devenv.drivers]\ndocker = podman_mod:Evil\n", podman_mod=PODMAN)
    assert plugins.driver_names().count("docker") == 1
    assert plugins.driver_class("docker").__module__ == "devenv.drivers.docker.driver"
    assert "docker" not in plugins._entry_points(plugins.DRIVERS)
    assert "podman_mod" not in sys.modules  # never imported at all


def test_a_plugin_that_fails_to_load_is_a_clear_error_naming_it_and_its_package(plugin_site, tmp_path):
    plugin_site(
        "devenv-broken",
        "[devenv.drivers]\nbroken = broken_mod:Driver\n[devenv.provisioners]\nwobbly = broken_mod:Step\n",
        broken_mod="import no_such_module_anywhere\n",
    )
    with pytest.raises(DevfileError) as exc:
        plugins.driver_class("broken")
    assert exc.value.message == (
        "the driver plugin 'broken' (broken_mod:Driver, from the package devenv-broken 1.0) failed to load: "
        "ModuleNotFoundError: No module named 'no_such_module_anywhere'"
    )
    assert "pip" in (exc.value.hint or "")
    # In a Devfile: a problem where the name is written, never a traceback.
    _, problems = _devfile(
        tmp_path,
        """
        [machines.web]
        driver = "broken"
        box = "docker:alpine"
        [machines.web.broken]
        x = 1
        [[machines.web.provision]]
        type = "wobbly"
        """,
    )
    assert sorted(p.split(":")[0] for p in problems) == [
        "machines.web.broken",
        "machines.web.driver",
        "machines.web.provision[0].type",
    ]
    assert all("plugin" in p and "devenv-broken 1.0" in p and "failed to load" in p for p in problems)


def test_a_plugin_class_must_carry_the_name_it_is_registered_under(plugin_site):
    plugin_site(
        "devenv-odd", "[devenv.drivers]\nodd = podman_mod:Misnamed\nnotaclass = podman_mod:QUIET\n", podman_mod=PODMAN
    )
    with pytest.raises(DevfileError, match=r"declares name = 'other', not 'odd'"):
        plugins.driver_class("odd")
    with pytest.raises(DevfileError, match=r"is not a driver class with an `options` table"):
        plugins.driver_class("notaclass")


# -- laziness: built-in names never scan ----------------------------------------------------------


def test_built_in_names_never_scan_entry_points(monkeypatch, tmp_path):
    monkeypatch.setattr(plugins, "_plugins", None)

    def no_scan(*args, **kwargs):
        raise AssertionError("entry points scanned for a built-in name")

    monkeypatch.setattr("importlib.metadata.entry_points", no_scan)
    df, problems = _devfile(
        tmp_path,
        """
        [defaults]
        cpus = 1
        [machines.web]
        driver = "docker"
        box = "docker:alpine:3"
        [machines.web.docker]
        [[machines.web.provision]]
        type = "shell"
        inline = "true"
        [[machines.web.provision]]
        type = "file"
        source = "Devfile"
        destination = "/tmp/Devfile"
        """,
    )
    assert problems == [] and df is not None
    assert df.machines["web"].provision[0].label.startswith("[0] ")
    plugins.get_driver("virtualbox")
    assert plugins.needs_box("vagrant") is False
    assert plugins._plugins is None


def test_the_scan_happens_once_and_only_when_a_name_is_not_built_in(monkeypatch, tmp_path):
    from importlib import metadata

    calls = []
    real = metadata.entry_points

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(plugins, "_plugins", None)
    monkeypatch.setattr(metadata, "entry_points", counting)
    for _ in range(2):  # a misspelt driver needs the full list of names: one scan for both runs
        _, problems = _devfile(tmp_path, '[machines.web]\ndriver = "dockr"\nbox = "docker:alpine"\n')
        assert problems == [
            "machines.web.driver: 'dockr' is not one of: docker, libvirt, vagrant, virtualbox (did you mean 'docker'?)"
        ]
    assert calls == [1]


def test_loading_a_built_in_devfile_does_not_even_import_importlib_metadata(tmp_path):
    """The start-up cost, measured where it is paid: a fresh interpreter running `devenv validate`."""
    (tmp_path / "Devfile").write_text(
        '[machines.web]\nbox = "docker:alpine:3"\n[[machines.web.provision]]\ntype = "shell"\ninline = "true"\n'
    )
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('METADATA', 'importlib.metadata' in sys.modules))\n"
        "from devenv.cli.app import main\n"
        "sys.argv = ['devenv', 'validate']\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "METADATA False" in r.stdout, r.stdout


# -- the built-ins ---------------------------------------------------------------------------------


def test_the_built_ins_are_listed_as_entry_points_in_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert project["devenv.drivers"] == plugins.BUILTIN_DRIVERS
    assert project["devenv.provisioners"] == plugins.BUILTIN_PROVISIONERS
    for group in (plugins.BUILTIN_DRIVERS, plugins.BUILTIN_PROVISIONERS):
        for name, spec in group.items():
            module, _, attr = spec.partition(":")
            cls = getattr(importlib.import_module(module), attr)
            assert getattr(cls, "name", None) == name or getattr(cls, "type", None) == name


def test_a_non_string_step_type_is_a_problem_not_a_crash(tmp_path):
    _, problems = _devfile(
        tmp_path, '[machines.web]\nbox = "docker:alpine"\n[[machines.web.provision]]\ntype = ["shell"]\n'
    )
    assert problems == ["machines.web.provision[0].type: expected a string, got an array"]


def test_names_view_answers_membership_without_listing():
    assert "docker" in plugins.DRIVER_NAMES and bool(plugins.DRIVER_NAMES)
    assert ["shell"] not in plugins.PROVISIONER_TYPES  # not a name: no TypeError, no scan
    assert json.dumps(sorted(plugins.DRIVER_NAMES))  # iterable like any collection
