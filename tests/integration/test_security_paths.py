"""Path confinement against the real Docker engine (issue #10 item 5).

A sync whose host folder is (or becomes) a symlink to a folder outside the project must never
reach the engine as a bind mount: refused by `devenv up` through the CLI, and caught at use when
the link is swapped in after the Devfile was validated.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from tests.integration.conftest import assert_no_traceback

pytestmark = pytest.mark.docker

MARK = "host-only-marker-7f3a"


@pytest.fixture(autouse=True)
def _remove_by_label(proj):
    """The shared sweep loads the Devfile, which these tests leave refused: remove by label here."""
    yield
    for c in project_containers(proj):
        c.remove(force=True, v=True)


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    (d / "marker.txt").write_text(MARK + "\n")
    return d


def project_containers(proj) -> list:
    """Containers labelled with this project, found without loading its (refused) Devfile."""
    from devenv.model.devfile import default_project_name

    root = proj.root.resolve()
    pid = f"{default_project_name(root)}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
    return proj.client.containers.list(all=True, filters={"label": f"devenv.project={pid}"})


def mounted_sources(proj) -> list[str]:
    return [m.get("Source", "") for c in project_containers(proj) for m in c.attrs.get("Mounts", [])]


def test_up_refuses_a_sync_folder_that_is_a_symlink_out(proj, outside) -> None:
    os.symlink(outside, proj.root / "data")
    proj.devfile('[machines.m]\nbox = "busybox"\nsync = [{ host = "data", guest = "/data" }]\n')
    r = proj.run("up")
    assert_no_traceback(r)
    assert r.returncode == 2, r.stderr
    assert "'data' is outside the project" in r.stderr and "symbolic link" in r.stderr
    assert project_containers(proj) == []  # nothing was made, nothing was mounted


def test_link_swapped_in_after_validation_is_caught_before_the_engine_mounts_it(proj, outside) -> None:
    from devenv.core.project import Project
    from devenv.errors import DevfileError
    from devenv.model import devfile

    (proj.root / "data").mkdir()
    (proj.root / "data" / "inside.txt").write_text("inside\n")
    proj.devfile('[machines.m]\nbox = "busybox"\nsync = [{ host = "data", guest = "/data" }]\n')
    # A positive control first: the real folder is shared and its file is visible.
    r = proj.run("up", check=True)
    assert_no_traceback(r)
    out = proj.run("exec", "m", "--", "cat", "/data/inside.txt", check=True).stdout
    assert out.strip() == "inside"
    proj.run("halt", check=True)

    project = Project(devfile.load(proj.root / "Devfile"))  # validated now ...
    shutil.rmtree(proj.root / "data")
    os.symlink(outside, proj.root / "data")  # ... and swapped before the engine starts it again
    with pytest.raises(DevfileError, match="outside the project"):
        project.up()
    (c,) = project_containers(proj)
    c.reload()
    assert c.status != "running"  # never started over the swapped link
    assert str(outside) not in mounted_sources(proj)
    r = proj.run("status", "--json")
    assert r.returncode == 2 and "outside the project" in r.stderr  # and every later command says so

    # Made from scratch after the swap (the machine destroyed): refused at load, no container.
    os.unlink(proj.root / "data")
    (proj.root / "data").mkdir()
    proj.run("destroy", "-f", check=True)
    project = Project(devfile.load(proj.root / "Devfile"))
    (proj.root / "data").rmdir()
    os.symlink(outside, proj.root / "data")
    with pytest.raises(DevfileError, match="outside the project"):
        project.up()
    assert project_containers(proj) == []
