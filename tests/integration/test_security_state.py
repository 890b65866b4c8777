"""State is not trusted (issue #10 item 4, plus 12, 17, 18) against the real Docker engine and CLI.

Foreign containers are made by hand from a tiny local image (busybox-static imported): one
labelled for another project, one with no labels. A forged .devenv/machines/web.json points at
each (by id and by name); `up`, `exec`, `ssh` and `destroy -f` run through the real CLI and
must leave them exactly as they were. Everything made here is removed afterwards.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import uuid

import pytest

from tests.integration.conftest import assert_no_traceback

pytestmark = pytest.mark.docker

IMAGE = "devenv-test/sliceb-foreign"


@pytest.fixture(scope="module")
def tiny_image(docker_client):
    buf = io.BytesIO()
    busybox = shutil.which("busybox") or "/bin/busybox"
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        tar.add(busybox, arcname="bin/sh")
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    docker_client.api.import_image_from_data(buf.getvalue(), repository=IMAGE, tag="1")
    yield f"{IMAGE}:1"
    docker_client.images.remove(f"{IMAGE}:1", force=True)


@pytest.fixture
def foreign(docker_client, tiny_image):
    """Two running containers devenv did not make for this project."""
    tag = uuid.uuid4().hex[:8]
    made = {
        "other project": docker_client.containers.run(
            tiny_image,
            ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
            detach=True,
            name=f"sliceb-other-{tag}",
            labels={"devenv.project": f"other-{tag}", "devenv.machine": "web", "devenv.root": "/elsewhere"},
        ),
        "no labels": docker_client.containers.run(
            tiny_image,
            ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
            detach=True,
            name=f"sliceb-plain-{tag}",
        ),
    }
    yield made
    for c in made.values():
        c.remove(force=True)


def _untouched(c, docker_client) -> None:
    c.reload()
    assert c.status == "running", f"{c.name} is {c.status}"
    code, out = c.exec_run(["/bin/sh", "-c", "ls /reached /devenv 2>/dev/null; echo checked"])
    assert out.decode().strip() == "checked", f"something was written into {c.name}: {out!r}"
    assert docker_client.containers.get(c.id).id == c.id


DEVFILE = """\
    [machines.web]
    box = "docker:{image}"
    provision = [{{ type = "shell", inline = "touch /provisioned" }}]
"""


@pytest.mark.parametrize("by", ["id", "name"])
@pytest.mark.parametrize("kind", ["other project", "no labels"])
def test_forged_state_never_reaches_a_foreign_container(proj, docker_client, foreign, tiny_image, kind, by):
    proj.devfile(DEVFILE.format(image=tiny_image))
    victim = foreign[kind]
    handle = victim.id if by == "id" else victim.name
    state = proj.root / ".devenv" / "machines" / "web.json"

    def forge() -> None:
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"driver": "docker", "handle": handle, "steps": [{"fingerprint": "x"}]}))

    forge()
    r = proj.run("exec", "web", "--", "/bin/sh", "-c", "touch /reached")
    assert_no_traceback(r)
    assert r.returncode == 4 and "not created" in r.stderr, r.stderr
    assert "not this project's machine 'web'" in r.stderr
    r = proj.run("ssh", "web", "-c", "touch /reached")
    assert r.returncode == 4, r.stderr
    _untouched(victim, docker_client)

    forge()
    r = proj.run("up", check=True)
    assert r.stderr.count("not this project's machine 'web'") == 1, r.stderr
    ours = docker_client.containers.list(filters={"label": f"devenv.project={proj.project_id}"})
    assert len(ours) == 1 and ours[0].id != victim.id
    assert ours[0].exec_run(["/bin/sh", "-c", "test -e /provisioned"]).exit_code == 0, "steps ran in our machine"
    _untouched(victim, docker_client)

    forge()  # a forged file again after up: exec reaches our container only
    r = proj.run("exec", "web", "--", "/bin/sh", "-c", "touch /reached", check=True)
    assert ours[0].exec_run(["/bin/sh", "-c", "test -e /reached"]).exit_code == 0
    _untouched(victim, docker_client)

    forge()
    r = proj.run("destroy", "-f", check=True)
    assert proj.labelled()["containers"] == [], "the project's own container is removed"
    _untouched(victim, docker_client)

    r = proj.run("global-status", "--prune", check=True)
    _untouched(victim, docker_client)


def test_destroy_with_corrupt_state_removes_the_container(proj, docker_client, tiny_image):
    proj.devfile(DEVFILE.format(image=tiny_image))
    proj.run("up", check=True)
    assert len(proj.labelled()["containers"]) == 1
    state = proj.root / ".devenv" / "machines" / "web.json"
    state.write_text('{"driver": "docker", "handle": 123, "steps": 5, "box": "x"}')
    r = proj.run("status")
    assert_no_traceback(r)
    assert r.returncode == 8 and str(state) in r.stderr, r.stderr
    r = proj.run("destroy", "-f", check=True)
    assert "finding the machine by its engine labels" in r.stderr
    assert proj.labelled()["containers"] == [] and not state.exists()


def test_unassignable_host_ip_fails_before_anything_is_made(proj, tiny_image):
    proj.devfile(
        f'[machines.web]\nbox = "docker:{tiny_image}"\nports = [{{ guest = 80, host = 18099, host_ip = "192.0.2.45" }}]\n'
    )
    r = proj.run("up")
    assert_no_traceback(r)
    assert r.returncode == 2, r.stderr
    assert "machines.web.ports[0]: host_ip 192.0.2.45 is not an address of this host" in r.stderr
    assert proj.labelled()["containers"] == []
    assert not (proj.root / ".devenv").exists() and not (proj.root / "Devfile.lock").exists()


def test_options_that_open_the_host_warn(proj, docker_client, tiny_image):
    proj.devfile(f"""\
        [machines.web]
        box = "docker:{tiny_image}"
        [machines.web.docker]
        privileged = true
        cap_add = ["NET_ADMIN"]
        network = "host"
    """)
    r = proj.run("up")
    assert_no_traceback(r)
    # A nested engine (as in some CI runners) may refuse to start a privileged container: the
    # warnings come when it is created, either way.
    assert r.returncode in (0, 4), r.stderr
    assert "privileged = true" in r.stderr and "every device of the host" in r.stderr
    assert "NET_ADMIN" in r.stderr and "host's network stack" in r.stderr
    proj.run("destroy", "-f", check=True)
    assert proj.labelled()["containers"] == []
