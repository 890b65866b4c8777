"""The reporter seam: the core reports a machine's lifecycle as events (no text parsing), and the
CLI renders them as text lines or, with --progress json, one JSON object per stderr line."""

from __future__ import annotations

import json

from devenv.contract import Event, Reporter
from devenv.core.project import Project
from devenv.model import devfile

DEVFILE = """
[machines.web]
driver = "fake"
box = "fake-box"
provision = [
  { type = "shell", name = "greet", inline = "echo hello from web" },
  { type = "shell", name = "second", inline = "echo again" },
]
"""


def _up(proj) -> list[Event]:
    proj.devfile(DEVFILE)
    events: list[Event] = []
    Project(devfile.load(proj.root / "Devfile"), Reporter(events.append)).up()
    return events


def _phases(events: list[Event]) -> list[tuple[str | None, str | None]]:
    return [(e.machine, e.phase) for e in events if e.kind == "phase"]


def test_up_reports_created_started_each_step_and_ready(proj):
    events = _up(proj)
    assert _phases(events) == [
        ("web", "create"),
        ("web", "created"),
        ("web", "start"),
        ("web", "started"),
        ("web", "step"),
        ("web", "step-done"),
        ("web", "step"),
        ("web", "step-done"),
        ("web", "ready"),
    ]
    steps = [e.data for e in events if e.phase == "step"]
    assert [(s["index"], s["step"]) for s in steps] == [(0, "[0] greet"), (1, "[1] second")]
    assert all(s["fingerprint"].startswith("sha256:") and len(s["fingerprint"]) == 71 for s in steps)
    # A step's own output arrives as output events of its machine, in order.
    assert [e.text for e in events if e.kind == "output" and e.machine == "web"][:1] == ["hello from web"]


def test_a_second_up_reports_the_steps_as_skipped_and_nothing_created(proj):
    _up(proj)
    events: list[Event] = []
    Project(devfile.load(proj.root / "Devfile"), Reporter(events.append)).up()
    phases = [p for _, p in _phases(events)]
    assert "create" not in phases and "start" not in phases
    assert phases.count("step-skipped") == 2 and phases[-1] == "ready"


def test_a_failing_step_reports_step_failed_and_no_ready(proj):
    proj.devfile(DEVFILE.replace("echo again", "exit 3"))
    events: list[Event] = []
    project = Project(devfile.load(proj.root / "Devfile"), Reporter(events.append))
    try:
        project.up()
    except Exception:  # noqa: BLE001 - the ProvisionError itself is the CLI's to render
        pass
    phases = [p for _, p in _phases(events)]
    assert phases[-1] == "step-failed" and "ready" not in phases
    assert events[-1].data["step"] == "[1] second"


def test_progress_json_prints_one_json_event_per_line(proj):
    proj.devfile(DEVFILE)
    r = proj.cli("--progress", "json", "up")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is one JSON object
    assert all(isinstance(rec, dict) and "event" in rec and "time" in rec for rec in records)
    phases = [rec["phase"] for rec in records if rec["event"] == "phase"]
    assert phases[:4] == ["create", "created", "start", "started"] and phases[-1] == "ready"
    assert any(rec["event"] == "output" and rec["message"] == "hello from web" for rec in records)
    assert "==>" not in r.stderr


def test_progress_json_reports_the_failure_as_an_event(proj):
    proj.devfile(DEVFILE.replace("echo again", "exit 3"))
    r = proj.cli("--progress", "json", "up")
    assert r.exit_code == 5
    last = json.loads(r.stderr.strip().splitlines()[-1])
    assert last["event"] in ("error", "hint")
    errors = [json.loads(ln) for ln in r.stderr.splitlines() if '"error"' in ln]
    assert any("step [1] second failed" in e["message"] for e in errors)


def test_progress_json_masks_secrets(proj, monkeypatch, private_secrets):
    monkeypatch.setenv("WEB_TOKEN", "s3cr3t-value")
    proj.devfile(
        DEVFILE.replace(
            'box = "fake-box"',
            'box = "fake-box"\nenv = { TOKEN = { from_env = "WEB_TOKEN" } }',
        ).replace("echo hello from web", "echo token=s3cr3t-value")
    )
    r = proj.cli("--progress", "json", "up")
    assert r.exit_code == 0, r.output
    assert "s3cr3t-value" not in r.stderr
    assert any(json.loads(ln).get("message") == "token=***" for ln in r.stderr.splitlines() if ln.strip())


def test_text_progress_is_unchanged(proj):
    proj.devfile(DEVFILE)
    r = proj.cli("up")
    assert r.exit_code == 0, r.output
    assert "==> web: creating from fake-box" in r.stderr
    assert "==> web: starting" in r.stderr
    assert "==> web: provision [0] greet (not applied yet)" in r.stderr
    assert "    web: hello from web" in r.stderr


def test_bad_progress_value_is_a_usage_error(proj):
    proj.devfile(DEVFILE)
    r = proj.cli("--progress", "yaml", "status")
    assert r.exit_code == 2
    assert "--progress 'yaml': not one of text, json" in r.stderr
