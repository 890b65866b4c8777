"""Files a repository brings besides its Devfile (Devfile.lock, boxes/*.toml) are hostile input:
links to devices, FIFOs, wrong types and deep nesting end in one clear error, never a hang or a
crash."""

from __future__ import annotations

import os

import pytest

LOCKED_DEVFILE = """\
[machines.web]
driver = "fake"
box = "base"
"""


@pytest.mark.parametrize(
    "plant",
    [
        lambda p: p.symlink_to("/dev/zero"),
        lambda p: os.mkfifo(p),
        lambda p: p.write_text("[machines.web]\nbox = 5\n"),
        lambda p: p.write_text('machines = "x"\n'),
        lambda p: p.write_text('[machines.web]\nbox = "debian-12"\nversion = ["x"]\n'),
        lambda p: p.write_bytes(b'[machines.web]\nbox = "\xff"\n'),
        lambda p: p.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n"),
    ],
    ids=["link-to-dev-zero", "fifo", "box-not-a-string", "machines-not-a-table", "version-a-list", "not-utf8", "deep"],
)
def test_a_hostile_lock_file_is_a_state_error_not_a_hang_or_crash(proj, plant) -> None:
    proj.devfile(LOCKED_DEVFILE)
    plant(proj.root / "Devfile.lock")
    r = proj.cli("up")
    assert r.exit_code == 8, r.output
    assert "Devfile.lock" in r.output


def test_box_prune_reads_no_state_through_a_link(proj, tmp_path) -> None:
    from devenv.state import GlobalIndex

    proj.devfile(LOCKED_DEVFILE)
    assert proj.cli("up").exit_code == 0
    machines = proj.root / ".devenv" / "machines"
    target = tmp_path / "elsewhere.json"
    target.write_text('{"box": {"name": "x", "version": "1"}}')
    (machines / "web.json").unlink()
    (machines / "web.json").symlink_to(target)
    (proj.root / "Devfile.lock").unlink(missing_ok=True)
    (proj.root / "Devfile.lock").symlink_to("/dev/zero")
    assert GlobalIndex().entries()
    r = proj.cli("box", "prune", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "Devfile.lock" in r.output  # said, and its boxes kept; no hang on /dev/zero


@pytest.mark.parametrize(
    "plant",
    [
        lambda p: p.symlink_to("/dev/zero"),
        lambda p: os.mkfifo(p),
        lambda p: p.write_text("name = " + "[" * 5000 + "]" * 5000 + "\n"),
        lambda p: p.write_text(
            'name = "x"\nversion = "1"\n' + "a.b" * 1 + "".join(f".k{i}" for i in range(200)) + " = 1\n"
        ),
        lambda p: p.write_bytes(b'name = "\xff"\n'),
    ],
    ids=["link-to-dev-zero", "fifo", "deep-arrays", "deep-dotted-keys", "not-utf8"],
)
def test_a_hostile_box_recipe_is_a_devfile_error(proj, plant) -> None:
    proj.devfile('[machines.web]\ndriver = "fake"\nbox = "evil"\n')
    (proj.root / "boxes").mkdir()
    plant(proj.root / "boxes" / "evil.toml")
    r = proj.cli("box", "build", "evil", "--output", "docker")
    # 2: the recipe is refused as invalid; 7: a recipe that is not a regular file is no recipe
    assert r.exit_code in (2, 7), r.output
    assert "evil.toml" in r.output
    r = proj.cli("box", "list")  # the listing skips it, saying why, and does not hang
    assert "evil.toml" in r.output
    assert "internal error" not in r.output
