"""The Docker driver end to end against the real engine, through the real CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import DEVENV, REPO, assert_no_traceback, free_port, run_image

pytestmark = pytest.mark.docker


def listeners(port: int) -> set[str]:
    """Local addresses listening on TCP `port`, read from /proc (no traffic sent anywhere)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                if len(addr) == 8:
                    out.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                else:
                    out.add(addr)
    return out


LIFECYCLE = """\
    [project]
    name = "itest"

    [machines.web]
    box = "busybox"
    hostname = "webhost"
    env = {{ GREETING = "hello from env" }}
    ports = [{{ guest = 80, host = {port} }}]
    sync = [{{ host = "src", guest = "/src" }}]
    provision = [
      {{ type = "shell", inline = "echo a >> /steps.log" }},
      {{ type = "shell", script = "setup.sh", args = ["one arg"] }},
      {{ type = "file", source = "conf", destination = "/etc/app" }},
      {{ type = "shell", run = "always", inline = "pidof httpd >/dev/null || httpd -p 80 -h /src" }},
    ]
"""


def test_lifecycle_end_to_end(proj):
    port = free_port()
    proj.devfile(LIFECYCLE.format(port=port))
    proj.write("setup.sh", '#!/bin/sh\necho "b $1" >> /steps.log\necho provisioning-output-line\n', 0o755)
    proj.write("conf/app.env", "MODE=dev\n")
    proj.write("conf/nested/x.txt", "nested\n")
    proj.write("src/index.html", "<h1>synced page</h1>\n")

    r = proj.run("up", check=True)
    assert "==> web: creating from busybox@1" in r.stderr
    assert "    web: provisioning-output-line" in r.stderr
    st = proj.status()["web"]
    assert st["state"] == "running" and st["driver"] == "docker"
    assert st["provision"] == "up to date" and st["stale_step"] is None

    # ssh -c streams output and propagates the exit code; env and hostname are applied.
    r = proj.run("ssh", "web", "-c", 'echo "$GREETING"; hostname; exit 3')
    assert r.returncode == 3
    assert r.stdout.splitlines() == ["hello from env", "webhost"]  # busybox: no bash, sh runs it
    r = proj.run("exec", "web", "--", "cat", "/etc/app/app.env", "/etc/app/nested/x.txt")
    assert r.returncode == 0 and r.stdout == "MODE=dev\nnested\n"
    assert proj.run("exec", "web", "--", "/bin/sh", "-c", "exit 9").returncode == 9

    # The forwarded port answers on 127.0.0.1 and listens nowhere else.
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10).read().decode()
    assert "synced page" in body
    assert listeners(port) == {"127.0.0.1"}
    assert proj.run("port", "web", check=True).stdout.strip() == f"80/tcp -> 127.0.0.1:{port}"

    # Sync folder both ways.
    (proj.root / "src" / "from-host.txt").write_text("host wrote this\n")
    assert proj.run("exec", "web", "--", "cat", "/src/from-host.txt").stdout == "host wrote this\n"
    proj.run("exec", "web", "--", "/bin/sh", "-c", "echo guest wrote this > /src/from-guest.txt", check=True)
    assert (proj.root / "src" / "from-guest.txt").read_text() == "guest wrote this\n"

    # Change the script: status names the stale step; provision reruns it and the later ones only.
    proj.write("setup.sh", '#!/bin/sh\necho "b2 $1" >> /steps.log\n', 0o755)
    st = proj.status()["web"]
    assert st["stale_step"] == 1
    assert st["provision"].startswith("stale: step [1] shell setup.sh changed")
    assert "devenv provision web" in st["provision"]
    r = proj.run("provision", check=True)
    assert "provision [0]" not in r.stderr and "provision [1]" in r.stderr and "provision [2]" in r.stderr
    assert proj.run("exec", "web", "--", "cat", "/steps.log").stdout == "a\nb one arg\nb2 one arg\n"
    assert proj.status()["web"]["provision"] == "up to date"

    # halt -> stopped; up -> running again, once-steps not rerun, always-step rerun.
    proj.run("halt", check=True)
    assert proj.status()["web"]["state"] == "stopped"
    r = proj.run("up", check=True)
    assert "starting" in r.stderr and "provision [3]" in r.stderr and "provision [1]" not in r.stderr
    assert proj.status()["web"]["state"] == "running"
    assert "synced page" in urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10).read().decode()

    proj.run("destroy", "-f", check=True)
    assert proj.status()["web"]["state"] == "not created"
    assert proj.labelled() == {"containers": [], "volumes": [], "networks": []}
    assert not (proj.root / ".devenv" / "machines" / "web.json").exists()


def test_container_settings_and_volumes(proj, docker_client):
    """cpus/memory limits, never privileged, and destroy takes the image's anonymous volumes along."""
    tag = "devenv-test/withvolume:1"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(shutil.which("busybox") or "/bin/busybox", arcname="bin/busybox")
        tar.add(shutil.which("busybox") or "/bin/busybox", arcname="bin/sh")
    docker_client.api.import_image_from_data(
        buf.getvalue(), repository=tag.split(":")[0], tag="1", changes=["VOLUME /data"]
    )
    try:
        proj.devfile(f"""\
            [machines.v]
            box = "docker:{tag}"
            cpus = 0.5
            memory = "64MiB"
            ports = [{{ guest = 8080 }}]
        """)
        proj.run("up", check=True)
        c = docker_client.containers.list(all=True, filters={"label": f"devenv.project={proj.project_id}"})[0]
        hc = c.attrs["HostConfig"]
        assert hc["NanoCpus"] == 500_000_000 and hc["Memory"] == 64 * 1024**2
        assert hc["Privileged"] is False and hc["Init"] is True
        assert c.labels["devenv.machine"] == "v" and c.name == f"devenv-{proj.project_id}-v"
        volumes = [m["Name"] for m in c.attrs["Mounts"] if m["Type"] == "volume"]
        assert len(volumes) == 1
        # No host port given: the engine picks a free one, still on 127.0.0.1.
        (binding,) = json.loads(proj.run("port", "v", "--json", check=True).stdout)
        assert binding["host_ip"] == "127.0.0.1" and binding["host"] > 0 and binding["guest"] == 8080
        proj.run("destroy", "-f", check=True)
        assert [v for v in volumes if v in {x.name for x in docker_client.volumes.list()}] == []
    finally:
        proj.sweep()
        docker_client.images.remove(tag, force=True)


def test_vanished_container_is_recreated(proj, docker_client):
    proj.devfile('[machines.m]\nbox = "busybox"\nprovision = [{ type = "shell", inline = "touch /made" }]\n')
    proj.run("up", check=True)
    for c in docker_client.containers.list(all=True, filters={"label": f"devenv.project={proj.project_id}"}):
        c.remove(force=True)
    assert proj.status()["m"]["state"] == "not created"
    r = proj.run("up", check=True)
    assert "provision [0]" in r.stderr
    assert proj.run("exec", "m", "--", "ls", "/made").returncode == 0


def test_failed_step_keeps_machine_and_resumes(proj):
    proj.devfile("""\
        [machines.m]
        box = "busybox"
        provision = [
          { type = "shell", inline = "echo first >> /log" },
          { type = "shell", script = "step.sh" },
          { type = "shell", inline = "echo third >> /log" },
        ]
    """)
    proj.write("step.sh", "echo line-before-failure\nls /does-not-exist\nexit 4\n")
    r = proj.run("up")
    assert r.returncode == 5, r.stderr
    assert_no_traceback(r)
    assert "step [1] shell step.sh failed" in r.stderr and "exit code 4" in r.stderr
    assert "line-before-failure" in r.stderr and "does-not-exist" in r.stderr
    st = proj.status()["m"]
    assert st["state"] == "running" and st["stale_step"] == 1 and st["provision"].startswith("failed at step [1]")
    proj.write("step.sh", "echo second >> /log\n")
    r = proj.run("provision", check=True)
    assert "provision [0]" not in r.stderr
    assert proj.run("exec", "m", "--", "cat", "/log").stdout == "first\nsecond\nthird\n"


def test_port_in_use_fails_cleanly(proj):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proj.devfile(f'[machines.m]\nbox = "busybox"\nports = [{{ guest = 80, host = {port} }}]\n')
        r = proj.run("up")
        assert r.returncode == 11, r.stderr
        assert f"host port 127.0.0.1:{port}/tcp (for guest port 80) is already in use" in r.stderr
        assert_no_traceback(r)
        assert proj.labelled()["containers"] == []
        # auto_correct picks the next free port instead.
        proj.devfile(f'[machines.m]\nbox = "busybox"\nports = [{{ guest = 80, host = {port}, auto_correct = true }}]\n')
        r = proj.run("up", check=True)
        assert "is in use: forwarding" in r.stderr
        bound = proj.run("port", "m", "--json", check=True).stdout
        assert f'"host": {port}' not in bound


def test_engine_unreachable_is_one_clear_message(proj):
    proj.devfile('[machines.m]\nbox = "busybox"\n')
    r = proj.run("status", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert r.returncode == 3
    assert_no_traceback(r)
    assert "cannot reach the Docker engine" in r.stderr or "not running" in r.stderr
    assert "hint:" in r.stderr
    r = proj.run("--debug", "status", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert "Traceback" in r.stderr


def _scratch_image(client, tag: str) -> None:
    """An image with one static binary and nothing else: no shell, no sleep, no PATH tools."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(shutil.which("busybox") or "/bin/busybox", arcname="bin/busybox")
    client.api.import_image_from_data(buf.getvalue(), repository=tag.split(":")[0], tag=tag.split(":")[1])


def test_minimal_image_stays_up(proj, docker_client):
    tag = "devenv-test/scratch:1"
    _scratch_image(docker_client, tag)
    try:
        proj.devfile(f'[machines.tiny]\nbox = "docker:{tag}"\n')
        proj.run("up", check=True)
        time.sleep(0.5)
        assert proj.status()["tiny"]["state"] == "running"
        r = proj.run("exec", "tiny", "--", "/bin/busybox", "echo", "alive")
        assert r.stdout == "alive\n"
        t0 = time.monotonic()
        proj.run("halt", check=True)
        assert time.monotonic() - t0 < 8, "the keep-alive must stop on SIGTERM, not wait for the kill timeout"
        proj.run("destroy", "-f", check=True)
    finally:
        proj.sweep()
        docker_client.images.remove(tag, force=True)


def test_interactive_ssh_has_a_tty(proj):
    proj.devfile('[machines.m]\nbox = "busybox"\n')
    proj.run("up", check=True)
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(proj.root)
        os.execv(DEVENV[0], [*DEVENV, "ssh", "m"])
    out = b""
    try:
        os.write(fd, b"echo tty=$(tty) answer=$((6*7)); exit 5\n")
        deadline = time.time() + 30
        while time.time() < deadline:
            r, _, _ = select.select([fd], [], [], 1)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert "answer=42" in text and "tty=/dev/pts/" in text
    assert os.waitstatus_to_exitcode(status) == 5


def test_concurrent_ups_make_one_machine(proj):
    proj.devfile(
        '[machines.m]\nbox = "busybox"\nprovision = [{ type = "shell", inline = "sleep 1; echo x >> /count" }]\n'
    )
    proj.run("up", "--no-provision", check=True)  # box built; now race two full ups
    proj.run("destroy", "-f", check=True)
    procs = [
        subprocess.Popen([*DEVENV, "up"], cwd=proj.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert any("waiting for" in err for _, err in results)
    assert len(proj.labelled()["containers"]) == 1
    assert proj.run("exec", "m", "--", "cat", "/count").stdout == "x\n"


def test_example_devfile_comes_up(tmp_path, docker_client):
    """The README's main job: Devfile.example on the Docker engine (builds the debian-12 box if needed)."""
    root = tmp_path / "example"
    root.mkdir()
    # Same file, but on a free host port: the user's own example may be running on 18080.
    port = free_port()
    text = (REPO / "Devfile.example").read_text()
    assert "host = 18080" in text
    (root / "Devfile").write_text(text.replace("host = 18080", f"host = {port}"))
    shutil.copytree(REPO / "provisioners", root / "provisioners")
    from tests.integration.conftest import Proj

    p = Proj(root, docker_client)
    try:
        r = p.run("up", check=True, timeout=900)
        st = p.status()
        assert st["web"]["state"] == "running" and st["app"]["state"] == "running"
        assert st["app"]["provision"] == "up to date"
        assert st["app"]["baked_steps"] == [0], "the box baked the same base.sh step: dev/prod parity"
        assert r.stderr.index("==> web: creating") < r.stderr.index("==> app: creating"), "depends_on order"
        assert "hello from devenv" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert p.run("exec", "app", "--", "id", "dev").returncode == 0
        assert p.run("ssh", "app", "-c", "cat /etc/debian_version").stdout.startswith("12")
        # ssh -c runs bash where the box has it (Vagrant scripts use bash features), sh otherwise.
        r = p.run("ssh", "app", "-c", 'echo "${BASH_VERSION:-no bash}"; [[ -n "$BASH" ]] && exit 7')
        assert r.returncode == 7 and r.stdout.strip()[:1].isdigit(), r.stdout
        assert p.run("exec", "app", "--", "ls", "/src/Devfile").returncode == 0
        p.run("destroy", "-f", check=True)
        assert p.labelled()["containers"] == []
    finally:
        p.sweep()


def test_box_commands(proj):
    with contextlib.suppress(Exception):  # left by an earlier run that failed half-way
        proj.client.images.remove("devenv-box/tiny:0.1", force=True)
    proj.devfile('[machines.m]\nbox = "tiny"\n')
    # A project's own recipe, found before devenv's bundled ones.
    proj.write(
        "boxes/tiny.toml", 'name = "tiny"\nversion = "0.1"\ndescription = "test box"\n\n[[sources]]\ntype = "busybox"\n'
    )
    r = proj.run("box", "build", "tiny", check=True)
    assert "building box tiny@0.1 (busybox)" in r.stderr
    r = proj.run("box", "build", "tiny", check=True)
    assert "exists" in r.stderr
    listed = proj.run("box", "list", "--json", check=True).stdout
    data = json.loads(listed)
    assert any(b["name"] == "tiny" and b["version"] == "0.1" for b in data["built"])
    assert {"tiny", "busybox", "debian-12"} <= {r["name"] for r in data["recipes"]}
    # The box carries devenv's keep-alive (so `up` copies nothing in), labelled with its digest.
    from devenv.drivers.docker import keepalive

    img = proj.client.images.get("devenv-box/tiny:0.1")
    assert img.labels["devenv.keepalive"] == keepalive.digest()
    # ... yet runs like any image in production: `docker run BOX CMD` runs CMD and ends.
    assert run_image(proj.client, "devenv-box/tiny:0.1", ["echo", "from the box"]) == b"from the box\n"
    proj.run("up", check=True)
    assert proj.status()["m"]["box"] == "tiny@0.1"
    # The image's copy is what keeps the machine up: it runs under Docker's init.
    r = proj.run("ssh", "m", "-c", "tr '\\0' ' ' < /proc/1/cmdline", check=True)
    assert "/.devenv/keepalive" in r.stdout
    r = proj.run("box", "remove", "tiny")
    assert r.returncode == 7 and "in use" in r.stderr
    proj.run("destroy", "-f", check=True)
    r = proj.run("box", "remove", "tiny", check=True)
    assert "removed devenv-box/tiny:0.1" in r.stderr
    r = proj.run("box", "remove", "tiny")
    assert r.returncode == 7 and "no built box named tiny" in r.stderr


def test_unbuildable_box_is_a_clear_error(proj):
    proj.devfile('[machines.m]\nbox = "broken"\n')
    proj.write(
        "boxes/broken.toml",
        'name = "broken"\nversion = "1"\n\n[[sources]]\ntype = "image"\nimage = "devenv-test/absent:never"\n',
    )
    r = proj.run("up")
    assert r.returncode == 7
    assert_no_traceback(r)
    assert "could not be built from any of its sources" in r.stderr and "--pull" in r.stderr
    assert proj.labelled()["containers"] == []
    r = proj.run("up", "m2")
    assert r.returncode == 2 and "no machine named 'm2'" in r.stderr


def test_reload_recreates_a_container_with_new_settings(proj, docker_client):
    proj.devfile(
        '[machines.m]\nbox = "busybox"\nmemory = "64MiB"\nprovision = [{ type = "shell", inline = "touch /p" }]\n'
    )
    proj.run("up", check=True)
    proj.devfile(
        '[machines.m]\nbox = "busybox"\nmemory = "96MiB"\nprovision = [{ type = "shell", inline = "touch /p" }]\n'
    )
    st = proj.status()["m"]
    assert st["action"] == "reload"
    r = proj.run("reload", check=True)
    assert "recreating" in r.stderr and "provision [0]" in r.stderr
    (c,) = docker_client.containers.list(all=True, filters={"label": f"devenv.project={proj.project_id}"})
    assert c.attrs["HostConfig"]["Memory"] == 96 * 1024**2
    assert proj.status()["m"]["action"] is None


def test_doctor_reports_what_the_devfile_needs(proj):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proj.devfile(f'[machines.m]\nbox = "busybox"\nports = [{{ guest = 80, host = {port} }}]\n')
        r = proj.run("doctor", "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
        assert checks["docker"]["status"] == "ok" and checks["docker"]["needed"] is True
        assert checks[f"port 127.0.0.1:{port}/tcp"]["status"] == "missing"
        assert "auto_correct" in checks[f"port 127.0.0.1:{port}/tcp"]["fix"]
        assert checks["hardware virtualisation"]["status"] in ("ok", "warn")
    r = proj.run("doctor")
    assert r.returncode == 0 and f"port 127.0.0.1:{port}/tcp" in r.stdout
    # Tools are looked for where devenv will run them: ansible-playbook beside devenv's Python
    # (its venv, which CI installs with ansible) counts even when that venv is not on PATH.
    r = proj.run("doctor", "--json", env={"PATH": "/usr/bin:/bin"})
    ansible = {c["name"]: c for c in json.loads(r.stdout)["checks"]}["ansible-playbook"]
    assert ansible["status"] == "ok" and ansible["detail"].startswith(str(Path(sys.executable).parent)), ansible
    # A Devfile that needs VirtualBox on a machine without it: non-zero, with the fix.
    proj.devfile('[machines.v]\ndriver = "virtualbox"\nbox = "x"\n')
    r = proj.run("doctor", env={"PATH": "/usr/bin:/bin", "VBOXMANAGE": "/nonexistent/VBoxManage"})
    assert r.returncode == 1 and "VBoxManage" in r.stdout and "fix:" in r.stdout
    assert_no_traceback(r)
