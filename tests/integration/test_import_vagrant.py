"""`devenv import-vagrant`, end to end: projects of tests/vagrantfiles/ are imported into native
Devfiles (without Vagrant), brought up with `devenv up`, and serve what their Vagrantfiles make
them serve. Three on Docker, one on libvirt (one small VM: no KVM here, the VM is emulated).

Traffic: the host fetches only from 127.0.0.1 forwards; the machines talk on the private
network devenv made for them and fetch packages from the host's Debian mirror.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

CORPUS = Path(__file__).resolve().parents[1] / "vagrantfiles"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _ruby():
    from tests.support import require_tool

    require_tool("ruby", "apt-get install ruby")


def imported(project, case: str, *args: str, env: dict | None = None) -> str:
    shutil.copytree(CORPUS / case, project.root, dirs_exist_ok=True)
    r = project.run("import-vagrant", "-o", "Devfile", *args, env=env, check=True)
    assert "wrote Devfile" in r.stderr
    assert not (project.root / ".vagrant").exists()
    return (project.root / "Devfile").read_text()


def fetch(port: int, path: str = "/", attempts: int = 60) -> str:
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read().decode()
        except OSError as exc:  # the service may still be starting
            last = exc
            time.sleep(1)
    raise AssertionError(f"no answer on 127.0.0.1:{port}{path}: {last}")


def free_pair() -> int:
    """A port p with p + 1 free too (yaml-servers forwards base_port + i)."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise AssertionError("no two free consecutive ports")


def up(project, timeout: float = 900) -> float:
    t0 = time.monotonic()
    r = project.run("up", timeout=timeout)
    assert r.returncode == 0, r.stderr
    return time.monotonic() - t0


def no_leftovers(project) -> None:
    project.run("destroy", "-f", check=True, timeout=300)
    left = project.labelled()
    assert all(v == [] for v in left.values()), left


@pytest.mark.docker
def test_python_web_serves_the_synced_folder_on_docker(proj):
    port = free_port()
    text = imported(proj, "python-web", env={"SITE_PORT": str(port)})
    assert f"host = {port}" in text
    took = up(proj)
    print(f"\nimport-vagrant python-web on docker: up {took:.1f}s")
    assert fetch(port) == "<h1>served from /vagrant/public</h1>\n"
    # /vagrant is the project folder, live (a bind mount), as Vagrant's share was.
    (proj.root / "public" / "index.html").write_text("<h1>edited on the host</h1>\n")
    assert fetch(port) == "<h1>edited on the host</h1>\n"
    st = proj.status()["default"]
    assert st["state"] == "running" and st["box"].startswith("debian-12")
    no_leftovers(proj)


@pytest.mark.docker
def test_multi_machine_loop_web_reaches_api_on_the_private_network(proj):
    port = free_port()
    imported(proj, "multi-loop", env={"WEB_PORT": str(port)})
    took = up(proj, timeout=1200)
    print(f"\nimport-vagrant multi-loop on docker (2 machines, nginx from the mirror): up {took:.1f}s")
    assert fetch(port) == "web on web\n"
    # nginx in web proxies to api at its fixed private address (192.168.56.21), as in Vagrant.
    assert json.loads(fetch(port, "/api/status.json")) == {"service": "api", "ok": True}
    st = proj.status()
    assert st["api"]["addresses"] == {"private": "192.168.56.21"}
    assert st["web"]["addresses"] == {"private": "192.168.56.20"}
    no_leftovers(proj)


@pytest.mark.docker
def test_yaml_servers_each_serve_the_shared_folder(proj):
    base = free_pair()
    imported(proj, "yaml-servers", env={"BASE_PORT": str(base)})
    took = up(proj)
    print(f"\nimport-vagrant yaml-servers on docker (2 machines from servers.yml): up {took:.1f}s")
    assert fetch(base) == "alpha: hello from the shared folder\n"
    assert fetch(base + 1) == "beta: hello from the shared folder\n"
    # run: "always": the step runs again on the next `up`, and the page is served again.
    proj.run("halt", check=True, timeout=300)
    up(proj)
    assert fetch(base + 1) == "beta: hello from the shared folder\n"
    no_leftovers(proj)


@pytest.mark.libvirt
def test_python_web_on_a_libvirt_vm(vm, debian_vm_box):
    port = free_port()
    text = imported(vm, "python-web", "--driver", "libvirt", env={"SITE_PORT": str(port)})
    assert 'driver = "libvirt"' in text
    took = up(vm, timeout=1800)
    print(f"\nimport-vagrant python-web on libvirt (emulated VM): up {took:.1f}s")
    assert fetch(port, attempts=120) == "<h1>served from /vagrant/public</h1>\n"
    assert vm.status()["default"]["state"] == "running"
    vm.run("destroy", "-f", check=True, timeout=300)
    assert vm.status()["default"]["state"] == "not created"
