"""Provision step fingerprints: what changes them, what does not, and that they are path-independent."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from devenv.model.devfile import Step
from devenv.provisioners import fingerprint


def step(type_: str = "shell", index: int = 0, **config) -> Step:
    config = {"type": type_, **config}
    return Step(index=index, type=type_, config=config, run=config.get("run", "once"), name=config.get("name"))


def write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_fingerprint_is_stable_and_tagged(tmp_path):
    write(tmp_path, "s.sh", "echo hi\n")
    a = fingerprint(step(script="s.sh"), tmp_path)
    assert a == fingerprint(step(script="s.sh"), tmp_path)
    assert a.startswith("sha256:") and len(a) == len("sha256:") + 64


def test_script_content_change_changes_fingerprint(tmp_path):
    script = write(tmp_path, "scripts/s.sh", "echo one\n")
    before = fingerprint(step(script="scripts/s.sh"), tmp_path)
    script.write_text("echo two\n")
    assert fingerprint(step(script="scripts/s.sh"), tmp_path) != before


def test_script_mode_change_changes_fingerprint(tmp_path):
    script = write(tmp_path, "s.sh", "#!/bin/sh\necho one\n")
    before = fingerprint(step(script="s.sh"), tmp_path)
    script.chmod(0o755)
    assert fingerprint(step(script="s.sh"), tmp_path) != before


def test_config_change_changes_fingerprint(tmp_path):
    write(tmp_path, "s.sh", "echo hi\n")
    base = fingerprint(step(script="s.sh", args=["a"]), tmp_path)
    assert fingerprint(step(script="s.sh", args=["b"]), tmp_path) != base
    assert fingerprint(step(script="s.sh", args=["a", "b"]), tmp_path) != base
    assert fingerprint(step(script="s.sh", args=["a"], env={"X": "1"}), tmp_path) != base
    assert fingerprint(step(script="s.sh", args=["a"], user="app"), tmp_path) != base
    assert fingerprint(step(inline="echo a"), tmp_path) != fingerprint(step(inline="echo b"), tmp_path)


def test_name_and_run_do_not_change_fingerprint(tmp_path):
    write(tmp_path, "s.sh", "echo hi\n")
    base = fingerprint(step(script="s.sh"), tmp_path)
    assert fingerprint(step(script="s.sh", name="setup"), tmp_path) == base
    assert fingerprint(step(script="s.sh", run="always"), tmp_path) == base
    assert fingerprint(step(script="s.sh", name="other", run="never"), tmp_path) == base


def test_index_does_not_change_fingerprint(tmp_path):
    assert fingerprint(step(inline="echo"), tmp_path) == fingerprint(step(inline="echo", index=3), tmp_path)


def test_type_enters_fingerprint(tmp_path):
    write(tmp_path, "f", "x")
    shell = step(script="f")
    copy = step("file", source="f", destination="/f")
    assert fingerprint(shell, tmp_path) != fingerprint(copy, tmp_path)


def test_folder_source_hashes_every_file(tmp_path):
    write(tmp_path, "conf/top.txt", "top\n")
    nested = write(tmp_path, "conf/a/b/deep.txt", "deep\n")
    s = step("file", source="conf", destination="/etc/conf")
    base = fingerprint(s, tmp_path)

    nested.write_text("changed\n")
    changed = fingerprint(s, tmp_path)
    assert changed != base

    nested.write_text("deep\n")
    assert fingerprint(s, tmp_path) == base  # content, not mtimes

    write(tmp_path, "conf/a/new.txt", "")
    added = fingerprint(s, tmp_path)
    assert added != base

    (tmp_path / "conf/a/new.txt").unlink()
    nested.rename(nested.with_name("renamed.txt"))
    assert fingerprint(s, tmp_path) != base


def test_missing_source_has_a_fingerprint_that_changes_when_it_appears(tmp_path):
    s = step("file", source="later.txt", destination="/x")
    missing = fingerprint(s, tmp_path)
    write(tmp_path, "later.txt", "")
    assert fingerprint(s, tmp_path) != missing


def test_identical_projects_at_different_paths_have_identical_fingerprints(tmp_path):
    one = tmp_path / "one"
    write(one, "scripts/s.sh", "echo hi\n")
    write(one, "conf/a/b.txt", "b\n")
    write(one, "conf/c.txt", "c\n")
    two = tmp_path / "elsewhere" / "two"
    shutil.copytree(one, two)
    steps = [
        step(script="scripts/s.sh", args=["x"]),
        step("file", source="conf", destination="/etc/conf"),
        step("file", source="scripts/s.sh", destination="/s.sh"),
    ]
    for s in steps:
        assert fingerprint(s, one) == fingerprint(s, two)
    # ... and the paths inside the project do count.
    os.rename(two / "conf" / "a", two / "conf" / "z")
    assert fingerprint(steps[1], one) != fingerprint(steps[1], two)


def test_ansible_roles_outside_the_playbook_folder_are_fingerprinted_path_independently(tmp_path, monkeypatch):
    """Roles found beside the playbook's folder (../roles, ansible.cfg's roles_path) enter the fingerprint
    by their path inside the project: a copy of the project elsewhere agrees, a moved role does not."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("ANSIBLE_CONFIG", "ANSIBLE_ROLES_PATH"):
        monkeypatch.delenv(var, raising=False)
    one = tmp_path / "one"
    write(one, "ansible/site.yml", "- hosts: all\n  roles: ['../roles/web', db]\n")
    write(one, "ansible/ansible.cfg", "[defaults]\nroles_path = ../shared\n")
    write(one, "roles/web/tasks/main.yml", "- debug: {}\n")
    write(one, "shared/db/tasks/main.yml", "- debug: {}\n")
    two = tmp_path / "elsewhere" / "two"
    shutil.copytree(one, two)
    s = step("ansible", playbook="ansible/site.yml")
    assert fingerprint(s, one) == fingerprint(s, two)
    write(two, "shared/db/tasks/main.yml", "- debug: {msg: changed}\n")
    assert fingerprint(s, one) != fingerprint(s, two)
