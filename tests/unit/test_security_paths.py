"""Path confinement (issue #10 item 5) and the host-code notice (item 8), through real code paths.

Every case builds its own project with real files and real symbolic links, then runs the real
`devenv validate` / `up` / `provision` (CliRunner, the fake engine at the driver seam) or the
real provisioners: what is checked is what devenv would read, upload or share on this host.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from devenv import plugins, provisioners
from devenv.errors import DevfileError, ProvisionError
from devenv.model import devfile
from devenv.model.devfile import Secret, Step, check_file
from devenv.provisioners import RunContext, fingerprint

OUT_SECRET = "outside-secret-content"


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(project, outside): a project folder and a folder beside it holding a host secret."""
    root = tmp_path / "proj"
    outside = tmp_path / "outside"
    for d in (root / "src", root / "scripts", root / "conf", outside / "sub"):
        d.mkdir(parents=True)
    (outside / "secret.txt").write_text(OUT_SECRET + "\n")
    (outside / "sub" / "x.sh").write_text("#!/bin/sh\necho outside\n")
    (root / "scripts" / "ok.sh").write_text("#!/bin/sh\necho ok\n")
    (root / "conf" / "app.env").write_text("A=1\n")
    return root, outside


def write_devfile(root: Path, body: str) -> Path:
    path = root / "Devfile"
    path.write_text('[machines.a]\nbox = "busybox"\n' + body)
    return path


def problems(root: Path, body: str) -> list[str]:
    _, found = check_file(write_devfile(root, body))
    return [f"{p.key}: {p.message}" for p in found]


# Every way a link can lead out: (links to make, relative to the project, -> target), the path to name.
LINK_KINDS = [
    pytest.param({"link": "{outside}"}, "link", id="last-component-absolute"),
    pytest.param({"link": "../outside"}, "link", id="last-component-relative-climb"),
    pytest.param({"src/deep": "../../outside"}, "src/deep", id="relative-link-in-subfolder-climbs"),
    pytest.param({"mid": "{outside}"}, "mid/sub", id="symlinked-intermediate-folder"),
    pytest.param({"rootlink": "/"}, "rootlink{outside}", id="link-to-slash"),
    pytest.param({"hop1": "hop2", "hop2": "{outside}"}, "hop1", id="chain-of-links"),
    pytest.param({"link": "../outside"}, "link/..", id="dotdot-after-a-link"),
    pytest.param({"src/back": ".."}, "src/back/../outside", id="link-to-parent-then-climb"),
]


def make_links(root: Path, outside: Path, links: dict[str, str]) -> None:
    for name, target in links.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.format(outside=outside), p)


@pytest.mark.parametrize(("links", "rel"), LINK_KINDS)
def test_sync_through_any_link_out_of_the_project_is_refused(tree, links, rel) -> None:
    root, outside = tree
    make_links(root, outside, links)
    rel = rel.format(outside=outside)
    found = problems(root, f'sync = [{{ host = "{rel}", guest = "/x" }}]\n')
    assert len(found) == 1, found
    assert found[0].startswith(f"machines.a.sync[0].host: '{rel}' is outside the project ({root})"), found
    assert "allow_outside_project = true" in found[0]


@pytest.mark.parametrize(("links", "rel"), LINK_KINDS)
@pytest.mark.parametrize(
    ("step", "key", "target_file"),
    [
        ('{{ type = "shell", script = "{rel}" }}', "script", "sub/x.sh"),
        ('{{ type = "file", source = "{rel}", destination = "/y" }}', "source", ""),
        ('{{ type = "file", source = "{rel}", destination = "/y" }}', "source", "secret.txt"),
        ('{{ type = "ansible", playbook = "{rel}" }}', "playbook", "sub/x.sh"),
    ],
)
def test_step_paths_through_any_link_out_are_refused(tree, links, rel, step, key, target_file) -> None:
    root, outside = tree
    make_links(root, outside, links)
    rel = rel.format(outside=outside)
    if target_file:
        rel = f"{rel}/{target_file}" if not rel.endswith("..") else f"{rel}/outside/{target_file}"
    found = problems(root, "provision = [" + step.format(rel=rel) + "]\n")
    assert len(found) == 1, found
    assert found[0].startswith(f"machines.a.provision[0].{key}: '{rel}' is outside the project ({root})"), found


def test_links_that_stay_inside_are_fine_and_resolve_to_their_real_path(tree) -> None:
    root, outside = tree
    os.symlink("src", root / "code")
    os.symlink("../scripts/ok.sh", root / "src" / "run.sh")
    df = devfile.load(
        write_devfile(
            root,
            'sync = [{ host = "code", guest = "/src" }]\n'
            'provision = [{ type = "shell", script = "src/run.sh" }, '
            '{ type = "file", source = "code", destination = "/c" }]\n',
        )
    )
    assert df.machines["a"].sync[0].host == root / "src"  # the real folder is what is shared


def test_allow_outside_project_is_the_one_way_out(tree) -> None:
    root, outside = tree
    os.symlink(outside, root / "link")
    df = devfile.load(
        write_devfile(
            root,
            'sync = [{ host = "link", guest = "/x", allow_outside_project = true }]\n'
            'provision = [{ type = "file", source = "link/secret.txt", destination = "/y", '
            "allow_outside_project = true }]\n",
        )
    )
    assert df.machines["a"].sync[0].host == outside


def test_link_loop_and_long_chain_are_one_clear_problem(tree) -> None:
    root, _ = tree
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    prev = "src"
    for i in range(60):  # longer than the kernel's 40: an error, never RecursionError or OSError
        os.symlink(prev, root / f"c{i}")
        prev = f"c{i}"
    found = problems(
        root,
        'sync = [{ host = "loop1", guest = "/x" }, { host = "c59", guest = "/y" }]\n'
        'provision = [{ type = "shell", script = "loop2" }]\n',
    )
    assert len(found) == 3, found
    assert all("too many levels of symbolic links" in f for f in found), found


def test_sync_and_steps_must_be_the_right_kind_of_file(tree) -> None:
    root, _ = tree
    os.mkfifo(root / "fifo")
    found = problems(
        root,
        'sync = [{ host = "conf/app.env", guest = "/x" }]\n'
        'provision = [{ type = "shell", script = "fifo" }, { type = "shell", script = "scripts" }, '
        '{ type = "file", source = "fifo", destination = "/f" }]\n',
    )
    assert found == [
        "machines.a.sync[0].host: folder not found: conf/app.env (it is not a folder)",
        "machines.a.provision[0].script: 'fifo' is not a regular file (it is a named pipe)",
        "machines.a.provision[1].script: 'scripts' is not a regular file (it is a folder)",
        "machines.a.provision[2].source: 'fifo' is neither a regular file nor a folder (it is a named pipe)",
    ]


def test_project_whose_root_is_a_symlink_still_works(tree, tmp_path, monkeypatch) -> None:
    root, _ = tree
    alias = tmp_path / "alias"
    os.symlink(root, alias)
    write_devfile(root, 'sync = [".:/src", "src:/s"]\nprovision = [{ type = "shell", script = "scripts/ok.sh" }]\n')
    df = devfile.load(alias / "Devfile")
    assert df.root == root
    assert [s.host for s in df.machines["a"].sync] == [root, root / "src"]
    monkeypatch.chdir(alias / "src")
    assert devfile.load().root == root  # found from a cwd under the alias


# -- from_file secrets ----------------------------------------------------------------------------


def test_relative_from_file_may_not_lead_out_but_an_explicit_host_path_may(tree, monkeypatch) -> None:
    root, outside = tree
    os.symlink(outside / "secret.txt", root / "conf" / "key")  # a committed link to a host file
    found = problems(
        root,
        'env = { K = { from_file = "conf/key" }, D = { from_file = "../outside/secret.txt" }, '
        f'A = {{ from_file = "{outside}/secret.txt" }} }}\n',
    )
    assert len(found) == 2, found
    assert found[0].startswith("machines.a.env.D.from_file: '../outside/secret.txt' is outside the project")
    assert found[1].startswith("machines.a.env.K.from_file: 'conf/key' is outside the project")
    assert "absolute or ~/ path" in found[0]
    # And at use (the link swapped in after validation): reading refuses, without the content.
    with pytest.raises(OSError) as info:
        Secret(from_file="conf/key").read(root)
    assert OUT_SECRET not in str(info.value)
    assert Secret(from_file=f"{outside}/secret.txt").read(root) == OUT_SECRET
    monkeypatch.setenv("HOME", str(outside.parent))
    assert Secret(from_file="~/outside/secret.txt").read(root) == OUT_SECRET


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "big", "latin1", "folder"])
def test_from_file_reads_only_a_small_regular_utf8_file(tree, special) -> None:
    root, _ = tree
    target = {
        "/dev/zero": "/dev/zero",
        "fifo": str(root / "fifo"),
        "big": str(root / "big"),
        "latin1": str(root / "latin1"),
        "folder": str(root / "src"),
    }[special]
    os.mkfifo(root / "fifo")
    (root / "big").write_bytes(b"x" * (devfile.MAX_SECRET_BYTES + 1))
    (root / "latin1").write_bytes(b"caf\xe9")
    with pytest.raises(OSError) as info:
        Secret(from_file=target).read(root)  # never blocks on the FIFO, never reads /dev/zero forever
    assert info.value.strerror


def test_secret_problems_reach_the_user_as_a_usage_error(proj, tmp_path) -> None:
    (tmp_path / "zero-link").symlink_to("/dev/zero")
    proj.devfile(
        f'[machines.a]\ndriver = "fake"\nbox = "fake-box"\nenv = {{ K = {{ from_file = "{tmp_path}/zero-link" }} }}\n'
    )
    r = proj.cli("up")
    assert r.exit_code == 2, r.output
    assert "not a regular file" in r.output
    assert "internal error" not in r.output


# -- checks again at use --------------------------------------------------------------------------


class _Recorder:
    """A transport that records what it is asked to copy (the real file is read by the caller)."""

    def __init__(self) -> None:
        self.put_calls: list[tuple[Path, str]] = []
        self.env: dict = {}

    def put(self, local: Path, remote: str) -> None:
        self.put_calls.append((local, remote))

    def run(self, argv, **kw) -> int:
        return 0


def _swap(path: Path, target: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path)
    else:
        path.unlink()
    os.symlink(target, path)


@pytest.mark.parametrize(
    ("config", "swap"),
    [
        ({"type": "shell", "script": "scripts/ok.sh"}, "scripts/ok.sh"),
        ({"type": "shell", "script": "scripts/ok.sh"}, "scripts"),
        ({"type": "file", "source": "conf/app.env", "destination": "/y"}, "conf/app.env"),
        ({"type": "file", "source": "conf", "destination": "/y"}, "conf"),
    ],
)
def test_a_link_swapped_in_after_validation_is_caught_when_the_step_runs(tree, config, swap) -> None:
    root, outside = tree
    df = devfile.load(write_devfile(root, "provision = [" + _toml_table(config) + "]\n"))
    step = df.machines["a"].provision[0]
    _swap(root / swap, outside / ("secret.txt" if "." in Path(swap).name else "sub"))
    t = _Recorder()
    with pytest.raises(ProvisionError, match="outside the project"):
        provisioners.run_step(step, "a", root, t)
    assert t.put_calls == []  # nothing left the host


def test_steps_upload_the_real_path_they_checked(tree) -> None:
    root, _ = tree
    os.symlink("scripts/ok.sh", root / "run.sh")
    t = _Recorder()
    step = Step(index=0, type="shell", config={"type": "shell", "script": "run.sh"})
    provisioners.run_step(step, "a", root, t)
    assert t.put_calls[0][0] == root / "scripts" / "ok.sh"


def test_sync_swapped_after_validation_is_refused_before_the_engine_sees_it(proj, tmp_path) -> None:
    outside = tmp_path / "outside-folder"
    outside.mkdir()
    (proj.root / "data").mkdir()
    proj.devfile('[machines.a]\ndriver = "fake"\nbox = "fake-box"\nsync = [{ host = "data", guest = "/data" }]\n')
    df = devfile.load(proj.root / "Devfile")
    from devenv.core.project import Project

    project = Project(df)
    (proj.root / "data").rmdir()
    os.symlink(outside, proj.root / "data")
    with pytest.raises(DevfileError, match="outside the project"):
        project.up()
    assert proj.driver.machines == {}  # the engine was never handed the folder
    assert not proj.state_file("a").exists()


def _toml_table(config: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in config.items()) + " }"


# -- folders that contain links -------------------------------------------------------------------


def test_fingerprint_never_reads_through_a_link_out_or_a_special_file(tree) -> None:
    root, outside = tree
    folder = root / "conf"
    os.symlink(outside / "secret.txt", folder / "leak")
    os.symlink("/dev/zero", folder / "zero")
    os.mkfifo(folder / "pipe")
    step = Step(index=0, type="file", config={"type": "file", "source": "conf", "destination": "/c"})
    before = fingerprint(step, root)  # returns: no blocking read of the FIFO or /dev/zero
    (outside / "secret.txt").write_text("changed on the host\n")
    assert fingerprint(step, root) == before  # the outside content was never part of it
    os.unlink(folder / "leak")
    os.symlink(outside / "other", folder / "leak")
    assert fingerprint(step, root) != before  # the link itself (its target text) is


def test_ansible_playbook_folder_with_a_link_out_is_refused(tree) -> None:
    root, outside = tree
    pb = root / "ansible"
    pb.mkdir()
    (pb / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (pb / "roles").mkdir()
    os.symlink("/etc", pb / "roles" / "common")
    found = problems(root, 'provision = [{ type = "ansible", playbook = "ansible/site.yml" }]\n')
    assert len(found) == 1 and "'ansible/roles/common' is a symbolic link to '/etc'" in found[0], found
    # a role linked to /etc is not read into the fingerprint either
    step = Step(index=0, type="ansible", config={"type": "ansible", "playbook": "ansible/site.yml"})
    h = fingerprint(step, root)
    assert h.startswith("sha256:")


def test_ansible_playbook_beside_the_devfile_with_a_neighbour_link_out_is_refused(tree) -> None:
    root, outside = tree
    (root / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    os.symlink(outside, root / "group_vars")
    found = problems(root, 'provision = [{ type = "ansible", playbook = "site.yml" }]\n')
    assert len(found) == 1 and "'group_vars' is a symbolic link to" in found[0], found


def test_ansible_link_swapped_in_after_validation_stops_the_run(tree) -> None:
    root, outside = tree
    pb = root / "ansible"
    pb.mkdir()
    (pb / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    df = devfile.load(write_devfile(root, 'provision = [{ type = "ansible", playbook = "ansible/site.yml" }]\n'))
    os.symlink(outside, pb / "vars")
    prov = plugins.get_provisioner("ansible")
    ctx = RunContext(machine="a", root=root, transport=_Recorder())
    with pytest.raises(ProvisionError, match="symbolic link"):
        prov.run(df.machines["a"].provision[0].config, ctx)


# -- the host-code notice (item 8) ----------------------------------------------------------------


ANSIBLE_DEVFILE = """\
[machines.a]
driver = "fake"
box = "fake-box"
provision = [{ type = "ansible", playbook = "site.yml" }]
"""


def test_validate_says_once_that_ansible_runs_code_on_the_host(proj) -> None:
    proj.write("site.yml", "- hosts: all\n  tasks: []\n")
    proj.devfile(ANSIBLE_DEVFILE)
    first = proj.cli("validate")
    assert first.exit_code == 0, first.output
    assert "ansible-playbook runs on this host" in first.output
    assert "machines.a.provision[0]" in first.output
    second = proj.cli("validate")
    assert second.exit_code == 0
    assert "runs on this host" not in second.output
    # A new ansible step is a new notice.
    proj.devfile(ANSIBLE_DEVFILE.replace(" }]\n", ' }, { type = "ansible", playbook = "site.yml", name = "b" }]\n'))
    assert "machines.a.provision[1]" in proj.cli("validate").output


def test_up_shows_the_notice_when_validate_never_ran_and_a_committed_marker_cannot_hide_it(proj) -> None:
    proj.write("site.yml", "- hosts: all\n  tasks: []\n")
    proj.devfile(ANSIBLE_DEVFILE)
    # A repository that ships .devenv/ with anything in it does not silence the notice.
    (proj.root / ".devenv").mkdir()
    (proj.root / ".devenv" / "notices").mkdir()
    r = proj.cli("up", "--no-provision")
    assert "ansible-playbook runs on this host" in r.output, r.output
    marker_dir = Path(os.environ["DEVENV_HOME"]) / "notices"
    key = hashlib.sha256(str(proj.root.resolve()).encode()).hexdigest()[:32]
    assert (marker_dir / f"{key}.json").is_file()


def test_no_notice_without_host_reach(proj) -> None:
    proj.devfile('[machines.a]\ndriver = "fake"\nbox = "fake-box"\nprovision = [{ type = "shell", inline = "true" }]\n')
    assert "this host" not in proj.cli("validate").output


def test_notice_lists_host_files_and_folders_a_devfile_reaches(proj, tmp_path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "token").write_text("t0ken-value\n")
    proj.devfile(
        '[machines.a]\ndriver = "fake"\nbox = "fake-box"\n'
        f'env = {{ T = {{ from_file = "{tmp_path}/token" }} }}\n'
        f'sync = [{{ host = "{shared}", guest = "/s", allow_outside_project = true }}]\n'
    )
    out = proj.cli("validate").output
    assert f"puts the host file {tmp_path}/token into the machine's environment" in out
    assert f"shares the host folder {shared} (read-write)" in out
    assert "t0ken-value" not in out


def test_unwritable_data_folder_still_shows_the_notice(proj, tmp_path, monkeypatch) -> None:
    proj.write("site.yml", "- hosts: all\n")
    proj.devfile(ANSIBLE_DEVFILE)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("DEVENV_HOME", str(blocker))
    for _ in range(2):
        r = proj.cli("validate")
        assert r.exit_code == 0, r.output
        assert "ansible-playbook runs on this host" in r.output
