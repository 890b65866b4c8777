"""devenv.state: atomic writes, the project lock across processes, the global index."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devenv.cli import ui
from devenv.contract import Event, Reporter
from devenv.errors import LockTimeout, StateError
from devenv.state import GlobalIndex, ProjectState, atomic_write

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from devenv.state import ProjectState

    with ProjectState(Path(sys.argv[1])).lock("up"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def test_atomic_write_replaces_content_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "state.json"
    atomic_write(target, "first\n")
    assert target.read_text() == "first\n"
    atomic_write(target, b"second\n", mode=0o644)
    assert target.read_bytes() == b"second\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_atomic_write_default_mode_is_private(tmp_path):
    target = tmp_path / "secret.json"
    atomic_write(target, "{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_failed_atomic_write_keeps_old_content_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def _hold_lock(root: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(root), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_project_lock_waits_for_another_process_and_says_so(tmp_path):
    events: list[Event] = []
    ui.configure()
    proc = _hold_lock(tmp_path, 1.0)
    try:
        start = time.monotonic()
        with ProjectState(tmp_path, Reporter(events.append)).lock("provision"):
            waited = time.monotonic() - start
            holder = (tmp_path / ".devenv" / "lock").read_text()
            assert holder == f"`devenv provision` (pid {os.getpid()})"
    finally:
        proc.wait(timeout=10)
    assert waited > 0.5  # the holder keeps the lock for 1 s after saying so
    waits = [e.text for e in events if e.kind == "info"]
    assert any(f"waiting for `devenv up` (pid {proc.pid}) to finish" in t for t in waits), waits


def test_project_lock_times_out(tmp_path):
    proc = _hold_lock(tmp_path, 3.0)
    try:
        with pytest.raises(LockTimeout, match="still holds the project lock"):
            with ProjectState(tmp_path).lock("halt", timeout=0.3):
                pytest.fail("took a lock another process holds")
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_project_lock_free_does_not_wait(tmp_path, capsys):
    ui.configure()
    with ProjectState(tmp_path).lock("up"):
        pass
    assert "waiting" not in capsys.readouterr().err
    assert (tmp_path / ".devenv" / ".gitignore").read_text().endswith("*\n")


def test_project_state_round_trip_and_corruption(tmp_path):
    ps = ProjectState(tmp_path)
    assert ps.load("dev") is None
    ps.save("dev", {"handle": "h1"})
    assert ps.load("dev") == {"handle": "h1", "schema": 1}
    assert ps.names() == ["dev"]
    ps.machine_file("dev").write_text("[1, 2]")
    with pytest.raises(StateError, match="not a JSON object"):
        ps.load("dev")
    ps.machine_file("dev").write_text("{oops")
    with pytest.raises(StateError) as info:
        ps.load("dev")
    assert str(ps.machine_file("dev")) in info.value.message
    assert ps.load_or_none("dev") is None
    ps.remove("dev")
    ps.remove("dev")  # removing twice is fine
    assert ps.names() == []


def _entry(project: str, machine: str) -> dict:
    return {
        "project_id": project,
        "project": project,
        "root": f"/p/{project}",
        "machine": machine,
        "driver": "fake",
        "handle": f"{project}-{machine}",
    }


def test_global_index_record_and_forget(tmp_path):
    index = GlobalIndex(tmp_path)
    assert index.entries() == []
    index.record(_entry("a", "web"))
    index.record(_entry("a", "db"))
    index.record(_entry("b", "web"))
    index.record({**_entry("a", "web"), "handle": "new"})  # same machine: replaced, not added
    assert [(e["project_id"], e["machine"]) for e in index.entries()] == [("a", "db"), ("a", "web"), ("b", "web")]
    assert next(e for e in index.entries() if e["machine"] == "web" and e["project_id"] == "a")["handle"] == "new"

    index.forget("a", "web")
    assert [(e["project_id"], e["machine"]) for e in index.entries()] == [("a", "db"), ("b", "web")]
    index.forget("a")
    assert [(e["project_id"], e["machine"]) for e in GlobalIndex(tmp_path).entries()] == [("b", "web")]
    index.forget("nope")
    assert json.loads((tmp_path / "index.json").read_text())["machines"].keys() == {"b/web"}


def test_global_index_uses_devenv_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "home"))
    GlobalIndex().record(_entry("a", "web"))
    assert (tmp_path / "home" / "index.json").is_file()


def test_corrupt_global_index_is_replaced(tmp_path):
    (tmp_path / "index.json").write_text("garbage")
    events: list[Event] = []
    index = GlobalIndex(tmp_path, Reporter(events.append))
    assert index.entries() == []
    assert [e.kind for e in events] == ["warning"] and "global index" in events[0].text
    index.record(_entry("a", "web"))
    assert len(index.entries()) == 1
