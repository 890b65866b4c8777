"""Unit fixtures: the fake driver registered as "fake", and throw-away project folders."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devenv import masking
from devenv.cli import ui
from tests.unit.fakes import FakeDriver, install


class ProjectDir:
    """A project folder with a Devfile, driven in-process (Project) or through the CLI (CliRunner)."""

    def __init__(self, root: Path, driver: FakeDriver) -> None:
        self.root = root
        self.driver = driver
        root.mkdir(parents=True, exist_ok=True)

    def write(self, rel: str, text: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p

    def devfile(self, text: str) -> Path:
        return self.write("Devfile", text)

    def project(self):
        from devenv.cli.render import reporter
        from devenv.core.project import Project
        from devenv.model import devfile

        return Project(devfile.load(self.root / "Devfile"), reporter())

    def cli(self, *args: str, input: str | None = None):
        from devenv.cli.app import app_for

        argv = ["-f", str(self.root / "Devfile"), *args]
        # As `devenv` runs it: app_for builds only the command argv names.
        result = CliRunner().invoke(app_for(argv), argv, input=input)
        assert "Traceback" not in result.output, result.output
        return result

    def status(self) -> dict[str, dict]:
        r = self.cli("status", "--json")
        assert r.exit_code == 0, r.output
        return {m["name"]: m for m in json.loads(r.stdout)}

    def state_file(self, name: str) -> Path:
        return self.root / ".devenv" / "machines" / f"{name}.json"


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeDriver:
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "devenv-home"))  # never the real user index
    ui.configure()
    old_sigterm = signal.getsignal(signal.SIGTERM)  # `up` installs its own SIGTERM handler
    yield install(monkeypatch, tmp_path / "fake-engine.json")
    signal.signal(signal.SIGTERM, old_sigterm)


@pytest.fixture
def proj(tmp_path, fake) -> ProjectDir:
    return ProjectDir(tmp_path / "proj", fake)


@pytest.fixture
def private_secrets(monkeypatch):
    """Each test registers its own secrets; none leaks into the next test's output."""
    monkeypatch.setattr(masking, "_secrets", set())
    monkeypatch.setattr(masking, "_short", set())
    monkeypatch.setattr(masking, "_pattern", None)
    ui.configure()
    yield
    ui.configure()
