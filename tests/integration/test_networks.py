"""Private networks on the real Docker engine: machines reach each other by name, hostname and fixed
address; status shows the addresses; destroy removes the networks.

Traffic stays between the machines the test made, on networks devenv made (the host only talks
to 127.0.0.1 forwards and the engine's API)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.docker

WEB = """
[machines.web]
box = "debian-12"
hostname = "webhost"
provision = [
  {{ type = "shell", inline = "mkdir -p /www && echo 'page from web' > /www/index.html" }},
  {{ type = "shell", run = "always", inline = "kill -0 $(cat /run/web.pid 2>/dev/null) 2>/dev/null || {{ nohup python3 -m http.server 80 --directory /www >/dev/null 2>&1 & echo $! > /run/web.pid; }}" }},
]

[machines.proxy]
box = "debian-12"
depends_on = ["web"]
ports = [{{ guest = 8080, host = {port} }}]
provision = [
  {{ type = "shell", run = "always", inline = "mkdir -p /www-proxy && curl -fsS --retry 5 --retry-connrefused http://web/ -o /www-proxy/index.html && {{ kill -0 $(cat /run/proxy.pid 2>/dev/null) 2>/dev/null || {{ nohup python3 -m http.server 8080 --directory /www-proxy >/dev/null 2>&1 & echo $! > /run/proxy.pid; }}; }}" }},
]
"""


def _fetch(proj, machine: str, url: str) -> str:
    r = proj.run("exec", machine, "--", "curl", "-fsS", "--max-time", "5", "--retry", "3", "--retry-connrefused", url)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_two_machine_project_reaches_by_name_on_its_default_network(proj, docker_client):
    port = free_port()
    proj.devfile(WEB.format(port=port))
    proj.run("up", check=True, timeout=300)
    assert _fetch(proj, "proxy", "http://web/") == "page from web\n"  # by machine name
    assert _fetch(proj, "proxy", "http://webhost/") == "page from web\n"  # by hostname
    # Only proxy is forwarded to the host: what it fetched from web by name, on 127.0.0.1.
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode() == "page from web\n"
    st = proj.status()
    assert set(st["web"]["addresses"]) == {"default"} and set(st["proxy"]["addresses"]) == {"default"}
    [net] = proj.labelled()["networks"]
    info = docker_client.api.inspect_network(net)
    assert info["Labels"]["devenv.project"] == proj.project_id and info["Labels"]["devenv.network"] == "default"

    proj.run("destroy", "-f", check=True)
    assert proj.labelled() == {"containers": [], "volumes": [], "networks": []}


def test_fixed_addresses_on_a_declared_network(proj, docker_client):
    port = free_port()
    proj.devfile(
        '[networks.internal]\nsubnet = "10.213.57.0/24"\n'
        + WEB.format(
            port=port,
        )
        .replace(
            'hostname = "webhost"', 'hostname = "webhost"\nnetworks = [{ name = "internal", ip = "10.213.57.11" }]'
        )
        .replace('depends_on = ["web"]', 'depends_on = ["web"]\nnetworks = ["internal"]')
    )
    proj.run("up", check=True, timeout=300)
    assert _fetch(proj, "proxy", "http://10.213.57.11/") == "page from web\n"
    assert _fetch(proj, "proxy", "http://web/") == "page from web\n"
    r = proj.run("status", "--json", check=True)
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    assert rows["web"]["addresses"] == {"internal": "10.213.57.11"}
    assert rows["proxy"]["addresses"]["internal"].startswith("10.213.57.")
    text = proj.run("status", check=True).stdout
    assert "network internal: 10.213.57.11" in text
    # halt + up: the machines come back on the same network, web at its fixed address.
    proj.run("halt", check=True)
    proj.run("up", check=True, timeout=300)
    assert _fetch(proj, "proxy", "http://10.213.57.11/") == "page from web\n"

    proj.run("destroy", "-f", check=True)
    assert proj.labelled() == {"containers": [], "volumes": [], "networks": []}


def test_a_lost_state_still_finds_and_removes_the_networks(proj):
    proj.devfile(WEB.format(port=free_port()))
    proj.run("up", check=True, timeout=300)
    import shutil

    shutil.rmtree(proj.root / ".devenv")
    proj.run("destroy", "-f", check=True)
    assert proj.labelled() == {"containers": [], "volumes": [], "networks": []}


def test_machines_made_in_parallel_share_a_network_with_a_fixed_subnet(proj):
    """Two machines with no order between them make one network: the engine refuses a second
    create of an overlapping pool, so devenv makes it once."""
    proj.devfile(
        '[networks.lab]\nsubnet = "10.231.9.0/24"\n\n[defaults]\nbox = "busybox"\n\n'
        '[machines.a]\nnetworks = [{ name = "lab", ip = "10.231.9.11" }]\n'
        '[machines.b]\nnetworks = [{ name = "lab", ip = "10.231.9.12" }]\n'
        '[machines.c]\nnetworks = ["lab"]\n'
    )
    r = proj.run("up", timeout=300)
    assert r.returncode == 0, r.stderr
    st = proj.status()
    assert st["a"]["addresses"] == {"lab": "10.231.9.11"} and st["b"]["addresses"] == {"lab": "10.231.9.12"}
    assert len(proj.labelled()["networks"]) == 1
    proj.run("destroy", "-f", check=True)
    assert proj.labelled() == {"containers": [], "volumes": [], "networks": []}
