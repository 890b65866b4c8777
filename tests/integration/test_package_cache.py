"""The package cache with real machines on Docker (debian-12 containers, apt-cacher-ng on the
host, packages from the host's Debian mirror): a second machine's install comes from the cache,
the machines and the boxes built through it keep no trace of it, and every fault falls back to
the mirror without failing a step or leaving a broken entry behind.

Traffic: machines fetch from the host's Debian mirror through the proxy on the Docker bridge's
host address (or straight, when the cache is off); the test itself talks to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from devenv.pkgcache import guest
from devenv.pkgcache.proxy import CacheProxy, CacheSettings
from tests.support import require_tool

pytestmark = [pytest.mark.docker]

INSTALL = (
    "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; "
    "apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; echo installed"
)

TWO = """\
[defaults]
box = "debian-12"
driver = "docker"
{project}

[machines.one]
provision = [{{ type = "shell", inline = "{install}" }}]

[machines.two]
depends_on = ["one"]
provision = [{{ type = "shell", inline = "{install}" }}]
"""

ONE = """\
[defaults]
box = "debian-12"
driver = "docker"

[machines.one]
provision = [{ type = "shell", script = "install.sh" }]
"""


@pytest.fixture(autouse=True)
def _needs_apt_cacher_ng():
    require_tool("apt-cacher-ng", "apt-get install apt-cacher-ng (scripts/engines.sh installs it)")


def _cache(env: dict | None = None) -> CacheProxy:
    return CacheProxy(CacheSettings.from_env({**os.environ, **(env or {})}))


def _log(cache: CacheProxy) -> list[list[str]]:
    try:
        text = (cache.logs / "apt-cacher.log").read_text()
    except FileNotFoundError:
        return []
    return [ln.split("|") for ln in text.splitlines() if ln.count("|") >= 4]


def _container(proj, name: str):
    f = {"label": [f"devenv.project={proj.project_id}", f"devenv.machine={name}"]}
    [c] = proj.client.containers.list(all=True, filters=f)
    return c


def _traces(proj, name: str) -> list[str]:
    """The cache's files that are still in the machine (none, after provisioning)."""
    c = _container(proj, name)
    return [p for p in guest.PATHS if c.exec_run(["test", "-e", p]).exit_code == 0]


def _installed(proj, name: str) -> bool:
    return _container(proj, name).exec_run(["dpkg", "-s", "nginx-light"]).exit_code == 0


def _complete(cache: CacheProxy) -> list[str]:
    """Entries whose size is not what their header says (there must be none)."""
    bad = []
    for head in cache.data.rglob("*.head"):
        body = head.with_name(head.name[: -len(".head")])
        text = head.read_text(errors="replace")
        length = next(
            (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.lower().startswith("content-length")), None
        )
        if length is not None and body.exists() and body.stat().st_size != int(length):
            bad.append(str(body))
    return bad


def test_a_second_machine_installs_from_the_cache_and_keeps_no_trace_of_it(proj):
    show = "apt-config dump | grep -i proxy | sed 's/^/apt: /'; " + INSTALL
    proj.devfile(TWO.format(project="", install=INSTALL).replace(INSTALL, show, 1))
    r = proj.run("up", timeout=900)
    assert r.returncode == 0, r.stderr
    # While provisioning apt asks the detector for HTTP sources only: HTTPS keeps going straight out.
    apt = [ln.split("one: apt: ", 1)[1] for ln in r.stderr.splitlines() if "one: apt: " in ln]
    assert apt == [f'Acquire::http::Proxy-Auto-Detect "{guest.DETECT}";'], apt
    assert r.stderr.count("apt goes through the package cache on the host") == 2
    assert "warning" not in r.stderr.lower(), r.stderr
    assert _installed(proj, "one") and _installed(proj, "two")

    cache = _cache()
    rows = [row for row in _log(cache) if row[4].endswith(".deb") and "/nginx-light_" in row[4]]
    fetched = [row for row in rows if row[1] == "I"]
    served = [row for row in rows if row[1] == "O"]
    # Fetched from the mirror once (for one), served twice: the second time from the cache.
    assert len(fetched) == 1 and len(served) == 2, rows
    assert served[0][3] != served[1][3]  # to two machines (their bridge addresses)
    # apt is back to the mirror in both machines; the proxy stopped with the command.
    assert _traces(proj, "one") == [] and _traces(proj, "two") == []
    st = json.loads(proj.run("cache", "status", "--json", check=True).stdout)
    assert st["running"] is False and st["size_bytes"] > 0 and st["hit_rate"] > 0.3
    text = proj.run("cache", "status", check=True).stdout
    assert "hit rate" in text and str(cache.folder) in text

    r = proj.run("cache", "clean", check=True)
    assert "freed" in r.stdout
    assert json.loads(proj.run("cache", "status", "--json", check=True).stdout)["size_bytes"] == 0


def test_a_project_can_opt_out(proj):
    proj.devfile(TWO.format(project="[project]\npackage_cache = false", install=INSTALL))
    r = proj.run("up", "one", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "package cache" not in r.stderr
    assert _log(_cache()) == [] and _installed(proj, "one")


def test_environment_switch_turns_it_off_for_every_project(proj):
    proj.devfile(TWO.format(project="", install=INSTALL))
    r = proj.run("up", "one", timeout=600, env={"DEVENV_PACKAGE_CACHE": "off"})
    assert r.returncode == 0, r.stderr
    assert "package cache" not in r.stderr and _log(_cache()) == []


# -- faults: provisioning never fails because of the cache ---------------------------------------
def test_a_taken_port_means_one_warning_and_an_uncached_install(proj):
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 13390))
        busy.listen()
        proj.devfile(TWO.format(project="", install=INSTALL))
        r = proj.run("up", timeout=900, env={"DEVENV_PACKAGE_CACHE_PORT": "13390"})
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "package cache" in ln]
    assert len(warnings) == 1, r.stderr  # said once for the command, not per machine
    assert "port 13390" in warnings[0] and "taken by another program" in warnings[0]
    assert "provisioning goes on without it" in warnings[0]
    assert _installed(proj, "one") and _installed(proj, "two")


def test_a_cache_folder_that_cannot_be_written_is_said_once(proj, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        proj.devfile(TWO.format(project="", install=INSTALL))
        r = proj.run("up", "one", timeout=600, env={"DEVENV_PACKAGE_CACHE_DIR": str(ro / "cache")})
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert r.returncode == 0, r.stderr
    [warning] = [ln for ln in r.stderr.splitlines() if "package cache" in ln]
    assert "not writable" in warning and "DEVENV_PACKAGE_CACHE_DIR" in warning
    assert _installed(proj, "one")


def test_a_full_cache_disk_falls_back_and_leaves_nothing_half_written(proj, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    # Room for the proxy's files but not for the package lists apt-get update fetches (~15 MB).
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    try:
        env = {"DEVENV_PACKAGE_CACHE_DIR": str(small / "cache")}
        proj.devfile(TWO.format(project="", install=INSTALL))
        r = proj.run("up", "one", timeout=600, env=env)
        assert r.returncode == 0, r.stderr
        assert "running the step again without the cache" in r.stderr, r.stderr
        assert _installed(proj, "one") and _traces(proj, "one") == []
        assert _complete(_cache(env)) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)


def test_the_proxy_killed_during_an_install_falls_back(proj):
    # apt fetches slowly (Dl-Limit) so the proxy dies with downloads in flight.
    proj.write(
        "install.sh",
        """\
        #!/bin/sh
        set -e
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        touch /tmp/installing
        apt-get install -y -qq -o Acquire::http::Dl-Limit=60 --no-install-recommends nginx-light >/dev/null
        echo installed
        """,
        mode=0o755,
    )
    proj.devfile(ONE)
    cache = _cache()
    killed: list[int] = []

    def kill_when_installing() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                c = _container(proj, "one")
                if c.status == "running" and c.exec_run(["test", "-e", "/tmp/installing"]).exit_code == 0:
                    time.sleep(1.5)  # the first package file is on its way
                    rec = json.loads(cache.record.read_text())
                    os.kill(rec["pid"], 9)
                    killed.append(rec["pid"])
                    return
            except Exception:  # noqa: BLE001 -- not made yet, or between states: look again
                pass
            time.sleep(0.2)

    t = threading.Thread(target=kill_when_installing, daemon=True)
    t.start()
    r = proj.run("up", timeout=600)
    t.join(timeout=5)
    assert killed, f"the proxy was never seen running\n{r.stderr}"
    assert r.returncode == 0, r.stderr
    assert "the package cache stopped answering" in r.stderr and "running the step again without the cache" in r.stderr
    assert _installed(proj, "one") and _traces(proj, "one") == []
    assert _complete(cache) == []  # the cut-off download is not left in the cache


def test_a_corrupt_cache_entry_is_fetched_again(proj):
    proj.devfile(TWO.format(project="", install=INSTALL))
    assert proj.run("up", "one", timeout=600).returncode == 0
    cache = _cache()
    [deb] = list(cache.data.rglob("nginx-light_*.deb"))
    good = deb.read_bytes()
    bad = bytearray(good)
    for i in range(len(bad) // 2, len(bad) // 2 + 64):
        bad[i] ^= 0xFF  # same size, other bytes: only apt's hash check can tell
    deb.write_bytes(bytes(bad))

    r = proj.run("up", "two", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "corrupt" in r.stderr and "fetched anew" in r.stderr, r.stderr
    assert _installed(proj, "two")
    [again] = list(cache.data.rglob("nginx-light_*.deb"))
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(good).digest(), r.stderr


# -- boxes never point at the laptop -------------------------------------------------------------
RECIPE = """\
name = "cachebox"
version = "1.0.0"
packages = ["less"]
provision = [{ type = "shell", inline = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null" }]
outputs = ["docker"]

[[sources]]
type = "image"
image = "IMAGE"
"""


def test_a_box_built_through_the_cache_carries_no_cache_setting(proj, docker_client):
    # The engine's debian-12 image is the base; building it first is a no-op when it is there.
    base = "devenv-box/debian-12:2026.12.3"
    proj.run("box", "build", "debian-12", "--output", "docker", check=True, timeout=1200)
    proj.write("boxes/cachebox.toml", RECIPE.replace("IMAGE", base))
    proj.devfile('[machines.m]\nbox = "cachebox"\ndriver = "docker"\n')
    try:
        r = proj.run("box", "build", "cachebox", timeout=900)
        assert r.returncode == 0, r.stderr
        assert "apt goes through the package cache" in r.stderr  # the build used it
        assert any(row[1] == "O" and "nginx-light_" in row[4] for row in _log(_cache()))
        script = "; ".join(f"test ! -e {p}" for p in guest.PATHS) + "; test ! -e /var/lib/devenv"
        out = docker_client.containers.run(
            "devenv-box/cachebox:1.0.0", ["/bin/sh", "-c", script + " && echo clean"], remove=True
        )
        assert out.strip() == b"clean"

        # A machine packaged into a box after provisioning through the cache: no trace either.
        proj.devfile(TWO.format(project="", install=INSTALL))
        assert proj.run("up", "one", timeout=600).returncode == 0
        r = proj.run("package", "one", "--box", "packed", "--version", "1.0.0", timeout=600)
        assert r.returncode == 0, r.stderr
        out = docker_client.containers.run(
            "devenv-box/packed:1.0.0", ["/bin/sh", "-c", script + " && echo clean"], remove=True
        )
        assert out.strip() == b"clean"
    finally:
        for tag in ("devenv-box/cachebox:1.0.0", "devenv-box/packed:1.0.0"):
            try:
                docker_client.images.remove(tag, force=True)
            except Exception:  # noqa: BLE001 -- not made when the test failed early
                pass


def test_the_proxy_listens_on_loopback_and_the_bridge_address_containers_use(proj, docker_driver):
    """Never on every interface: 127.0.0.1 for VMs (10.0.2.2) and the bridge gateway for containers."""
    from tests.support import listening_addresses

    proj.devfile('[machines.m]\nbox = "debian-12"\ndriver = "docker"\n')
    proj.run("up", check=True, timeout=600)
    handle = _container(proj, "m").id
    endpoint = docker_driver.host_endpoint(handle)
    assert endpoint is not None and endpoint.bind == endpoint.address and endpoint.bind != "0.0.0.0"
    gateway = proj.client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    assert endpoint.bind == gateway
    cache = _cache()
    cache.acquire()
    try:
        port = cache.ensure({endpoint.bind})
        assert sorted(listening_addresses(port)) == sorted(["127.0.0.1", gateway])
    finally:
        cache.release()


def test_a_machine_without_apt_never_starts_the_proxy(proj):
    proj.devfile(
        '[machines.m]\nbox = "busybox"\ndriver = "docker"\nprovision = [{ type = "shell", inline = "echo hi" }]\n'
    )
    r = proj.run("up", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "package cache" not in r.stderr
    cache = _cache()
    assert not (cache.logs / "apt-cacher.log").exists() and not cache.record.exists()


THIRD_PARTY = """\
#!/bin/bash
# A team's own apt repository on port 80 of a host that is not a Debian mirror (served from the
# machine itself here): apt must reach it directly while the cache is in use.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
mkdir -p /srv/repo /tmp/pkg/DEBIAN /tmp/pkg/usr/share/team-tool
printf 'Package: team-tool\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: Team <team@example.test>\\nDescription: x\\n' \\
  > /tmp/pkg/DEBIAN/control
echo v1 > /tmp/pkg/usr/share/team-tool/VERSION
dpkg-deb --build /tmp/pkg /srv/repo/team-tool_1.0_all.deb >/dev/null
cd /srv/repo
{ printf 'Package: team-tool\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: Team <team@example.test>\\n'
  printf 'Filename: ./team-tool_1.0_all.deb\\nSize: %s\\nSHA256: %s\\nDescription: x\\n\\n' \\
    "$(stat -c %s team-tool_1.0_all.deb)" "$(sha256sum team-tool_1.0_all.deb | cut -d' ' -f1)"; } > Packages
echo "127.0.0.1 apt.team.example.test" >> /etc/hosts
python3 -m http.server 80 --bind 127.0.0.1 >/dev/null 2>&1 &
sleep 1
echo "deb [trusted=yes] http://apt.team.example.test/ ./" > /etc/apt/sources.list.d/team.list
apt-get update -qq
apt-get install -y -qq team-tool >/dev/null
cat /usr/share/team-tool/VERSION
kill %1
"""


def test_a_third_party_repository_keeps_working_beside_the_cache(proj):
    proj.write("install.sh", THIRD_PARTY, mode=0o755)
    proj.devfile(ONE)
    r = proj.run("up", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "apt goes through the package cache" in r.stderr and "warning" not in r.stderr.lower(), r.stderr
    assert "one: v1" in r.stderr
    # The Debian indexes came through the cache; the team's repository never did.
    paths = [row[4] for row in _log(_cache())]
    assert any(p.startswith("debrep/") for p in paths) and not any("team" in p for p in paths), paths
