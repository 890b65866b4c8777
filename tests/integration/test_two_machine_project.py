"""The classic two-machine project, as real Vagrant projects write it, on Docker and on libvirt:
`web` installs nginx and enables it with systemctl; `proxy` runs nginx proxying to http://web/
by name over the project's private network; only `proxy` has a port on 127.0.0.1.

One `devenv up` brings it up; the page comes back through the proxy, again after `halt` + `up`
(services started by systemd at boot, nothing provisioned again); `status --json` shows the
addresses; `destroy` leaves nothing behind. Traffic: the host fetches only from 127.0.0.1; the
machines talk on the network devenv made (Docker bridge / isolated libvirt network) and fetch
packages from the host's Debian mirror.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from tests.integration.conftest import free_port

WEB_SH = """\
#!/bin/bash
# web: nginx serving a static page, started now and at every boot.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx >/dev/null
echo "<h1>hello from $(hostname)</h1>" > /var/www/html/index.html
systemctl enable --now nginx
"""

PROXY_SH = """\
#!/bin/bash
# proxy: nginx in front of web, found by its name on the private network.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx >/dev/null
cat > /etc/nginx/sites-available/default <<'EOF'
server {
    listen 80 default_server;
    location / {
        proxy_pass http://web/;
        proxy_set_header Host $host;
    }
}
EOF
nginx -t
systemctl enable nginx
systemctl restart nginx
"""

DEVFILE = """\
[defaults]
box = "debian-12"
{driver}

[machines.web]
hostname = "web-1"
provision = [{{ type = "shell", script = "scripts/web.sh" }}]

[machines.proxy]
depends_on = ["web"]
ports = [{{ guest = 80, host = {port} }}]
provision = [{{ type = "shell", script = "scripts/proxy.sh" }}]
"""

DRIVERS = {
    "docker": 'driver = "docker"',
    "libvirt": 'driver = "libvirt"\nmemory = "512MiB"',
}


def _page(port: int, attempts: int = 30) -> str:
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        except OSError as exc:  # nginx in the proxy may still be starting after a boot
            last = exc
            time.sleep(1)
    raise AssertionError(f"no answer on 127.0.0.1:{port}: {last}")


def _cache_log() -> list[list[str]]:
    from devenv.pkgcache.proxy import CacheProxy, CacheSettings

    log = CacheProxy(CacheSettings.from_env()).logs / "apt-cacher.log"
    return [ln.split("|") for ln in log.read_text().splitlines() if ln.count("|") >= 4]


def _leftovers(project, driver: str, libvirt_driver=None) -> dict:
    left = project.labelled()
    if driver == "libvirt":
        from devenv.drivers.libvirt import networks as nets

        conn = libvirt_driver.conn()
        left["domains"] = project.domains(libvirt_driver)
        left["libvirt_networks"] = [
            n.name() for n in conn.listAllNetworks(0) if (nets._meta(n) or {}).get("project") == project.project_id
        ]
    return left


@pytest.mark.slow
@pytest.mark.parametrize(
    "driver", [pytest.param("docker", marks=pytest.mark.docker), pytest.param("libvirt", marks=pytest.mark.libvirt)]
)
def test_proxy_reaches_web_by_name_and_comes_back_after_halt(driver, request):
    libvirt_driver = None
    if driver == "libvirt":
        request.getfixturevalue("debian_vm_box")
        libvirt_driver = request.getfixturevalue("libvirt_driver")
        vm = request.getfixturevalue("vm")
    else:
        vm = request.getfixturevalue("proj")
    port = free_port()
    vm.write("scripts/web.sh", WEB_SH, mode=0o755)
    vm.write("scripts/proxy.sh", PROXY_SH, mode=0o755)
    vm.devfile(DEVFILE.format(driver=DRIVERS[driver], port=port))

    t0 = time.monotonic()
    r = vm.run("up", timeout=1500)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    print(f"\ntwo-machine nginx project on {driver}: up {took:.1f}s")
    assert "init system" not in r.stderr  # the boxes boot systemd: no no-init warning
    assert _page(port) == "<h1>hello from web-1</h1>\n"
    # The host's package cache: nginx came from the mirror once (for web), then from the cache.
    assert r.stderr.count("apt goes through the package cache on the host") == 2, r.stderr
    nginx = [row for row in _cache_log() if "/nginx_" in row[4] and row[4].endswith(".deb")]
    assert [row[1] for row in nginx].count("I") == 1 and [row[1] for row in nginx].count("O") == 2, nginx

    st = vm.status()
    assert set(st["web"]["addresses"]) == {"default"} and set(st["proxy"]["addresses"]) == {"default"}
    assert st["web"]["addresses"]["default"] != st["proxy"]["addresses"]["default"]
    # Only the proxy is reachable from the host (a VM's own SSH forward aside).
    assert [p for p in st["web"]["ports"] if not p.endswith("-> 22/tcp")] == []
    assert any(p.startswith(f"127.0.0.1:{port} ") for p in st["proxy"]["ports"])

    vm.run("halt", check=True, timeout=300)
    r = vm.run("up", timeout=900)
    assert r.returncode == 0, r.stderr
    assert "provision [" not in r.stderr.replace("up to date", "")  # nothing provisioned again
    assert _page(port) == "<h1>hello from web-1</h1>\n"  # nginx on both came back with systemd

    vm.run("destroy", "-f", check=True, timeout=300)
    left = _leftovers(vm, driver, libvirt_driver)
    assert all(v == [] for v in left.values()), left
