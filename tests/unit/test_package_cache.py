"""The package cache on the host: the proxy devenv runs (real apt-cacher-ng on 127.0.0.1), its
folder's life (prune, incomplete entries, clean), and the detector apt runs in a machine (run
here with the host's sh against real sockets)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from devenv.errors import LockTimeout
from devenv.pkgcache import guest
from devenv.pkgcache.proxy import CacheProxy, CacheSettings, CacheUnavailable, parse_size
from tests.support import listening_addresses as _listening
from tests.support import require_tool


@pytest.fixture
def proxy(tmp_path):
    require_tool("apt-cacher-ng", "apt-get install apt-cacher-ng")
    p = CacheProxy(CacheSettings(folder=tmp_path / "cache"))
    yield p
    p.stop()
    p.release()


# -- settings ------------------------------------------------------------------------------------
def test_settings_come_from_the_environment(tmp_path):
    s = CacheSettings.from_env({"DEVENV_HOME": str(tmp_path)})
    assert s.folder == tmp_path / "package-cache" and s.enabled and s.port is None and s.max_bytes == 10 * 1024**3
    s = CacheSettings.from_env(
        {
            "DEVENV_PACKAGE_CACHE": "off",
            "DEVENV_PACKAGE_CACHE_DIR": "/x",
            "DEVENV_PACKAGE_CACHE_PORT": "3150",
            "DEVENV_PACKAGE_CACHE_MAX": "500M",
        }
    )
    assert (s.folder, s.enabled, s.port, s.max_bytes) == (Path("/x"), False, 3150, 500 * 1024**2)
    assert parse_size("1.5G") == int(1.5 * 1024**3) and parse_size("10GiB") == 10 * 1024**3
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


# -- the proxy -----------------------------------------------------------------------------------
def test_the_proxy_listens_on_loopback_only_and_the_last_user_stops_it(proxy):
    proxy.acquire()
    port = proxy.ensure(set())
    rec = proxy.running()
    assert rec and rec["port"] == port and port < 32768
    assert _listening(port) == ["127.0.0.1"]  # never 0.0.0.0 or another interface
    conf = (proxy.conf_dir / "acng.conf").read_text()
    assert "ForceManaged: 1" in conf and "PassThroughPattern: ^$" in conf and "ReportPage" not in conf
    # A second command shares it; the proxy stays up until the last one lets go.
    other = CacheProxy(proxy.settings)
    other.acquire()
    assert other.ensure(set()) == port
    assert proxy.release() is None and proxy.running()
    other.release()
    assert proxy.running() is None and not proxy.record.exists()
    assert _listening(port) == []


def test_a_machine_cannot_make_the_proxy_fetch_from_other_hosts(proxy):
    """ForceManaged: only the distributions' mirrors; the host's own services stay out of reach."""
    proxy.acquire()
    port = proxy.ensure(set())
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET http://127.0.0.1:22/pool/x.deb HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
        head = s.recv(200).decode(errors="replace")
    assert head.startswith("HTTP/1.1 403"), head
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
        head = s.recv(200).decode(errors="replace")
    assert " 200 " not in head.splitlines()[0], head  # no tunnels


def test_a_fixed_port_that_is_taken_is_a_clear_error(tmp_path):
    require_tool("apt-cacher-ng", "apt-get install apt-cacher-ng")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        if taken >= 32768:  # apt-cacher-ng's own limit: a taken low port is what this checks
            busy.close()
            busy = socket.socket()
            busy.bind(("127.0.0.1", 13399))
            busy.listen()
            taken = 13399
        p = CacheProxy(CacheSettings(folder=tmp_path / "c", port=taken))
        p.acquire()
        with pytest.raises(CacheUnavailable, match=rf"port {taken} .*taken by another program"):
            p.ensure(set())
        p.release()
    # A free port is picked when none is fixed, even with the default one taken.
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 13142))
        busy.listen()
        p = CacheProxy(CacheSettings(folder=tmp_path / "d"))
        p.acquire()
        assert p.ensure(set()) != 13142
        p.release()


def test_a_port_apt_cacher_ng_cannot_use_is_refused_up_front(tmp_path):
    require_tool("apt-cacher-ng", "apt-get install apt-cacher-ng")
    p = CacheProxy(CacheSettings(folder=tmp_path / "c", port=40000))
    p.acquire()
    with pytest.raises(CacheUnavailable, match="below 32768"):
        p.ensure(set())
    p.release()


def test_a_folder_that_cannot_be_written_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        p = CacheProxy(CacheSettings(folder=ro / "cache"))
        with pytest.raises(CacheUnavailable, match=r"not writable .*DEVENV_PACKAGE_CACHE_DIR"):
            p.acquire()
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_link_for_the_cache_folder_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "data").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CacheUnavailable, match="symbolic link"):
        CacheProxy(CacheSettings(folder=tmp_path / "cache")).acquire()


# -- the folder's contents -----------------------------------------------------------------------
def _entry(data: Path, rel: str, body: bytes, length: int | None = None, age: float = 0) -> Path:
    p = data / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(body)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body) if length is None else length}\r\n"
    p.with_name(p.name + ".head").write_text(head)
    if age:
        t = time.time() - age
        os.utime(p, (t, t))
    return p


def test_pruning_removes_the_oldest_downloads_down_to_the_cap(tmp_path):
    p = CacheProxy(CacheSettings(folder=tmp_path / "c", max_bytes=3000))
    p.data.mkdir(parents=True)
    old = _entry(p.data, "debrep/pool/a.deb", b"a" * 1000, age=300)
    mid = _entry(p.data, "debrep/pool/b.deb", b"b" * 1000, age=200)
    new = _entry(p.data, "debrep/pool/c.deb", b"c" * 1000, age=100)
    outside = tmp_path / "keep.deb"
    outside.write_bytes(b"x" * 5000)
    (p.data / "link.deb").symlink_to(outside)  # a link is never followed, counted or removed through
    said = p.prune()
    assert said and "removed the 1 oldest" in said
    assert not old.exists() and not old.with_name("a.deb.head").exists()
    assert mid.exists() and new.exists() and outside.exists()
    assert p.prune() is None  # under the cap now


def test_incomplete_entries_are_dropped_and_corrupt_ones_purged(tmp_path):
    p = CacheProxy(CacheSettings(folder=tmp_path / "c"))
    p.data.mkdir(parents=True)
    whole = _entry(p.data, "debrep/pool/whole.deb", b"w" * 100)
    cut = _entry(p.data, "debrep/pool/cut.deb", b"c" * 40, length=100)  # a download cut off
    assert p.drop_incomplete() == 1
    assert whole.exists() and not cut.exists() and not cut.with_name("cut.deb.head").exists()
    assert p.purge({"whole.deb"}) == 1 and not whole.exists()


def test_clean_empties_the_cache_and_is_refused_while_in_use(proxy):
    proxy.acquire()
    proxy.ensure(set())
    _entry(proxy.data, "debrep/pool/a.deb", b"a" * 1000)
    other = CacheProxy(proxy.settings)
    with pytest.raises(LockTimeout, match="in use by another devenv command"):
        other.clean()
    proxy.release()
    assert other.clean() >= 1000
    assert list(proxy.data.iterdir()) == [] and other.running() is None


def test_status_counts_what_the_log_says(tmp_path):
    p = CacheProxy(CacheSettings(folder=tmp_path / "c"))
    p.logs.mkdir(parents=True)
    (p.logs / "apt-cacher.log").write_text(
        "1|I|1000|172.17.0.2|debrep/pool/a.deb\n1|O|1000|172.17.0.2|debrep/pool/a.deb\n"
        "2|O|1000|172.17.0.3|debrep/pool/a.deb\nnot a line\n"
    )
    st = p.status()
    assert (st["served_bytes"], st["fetched_bytes"], st["requests"]) == (2000, 1000, 2)
    assert st["hit_rate"] == 0.5 and st["running"] is False
    json.dumps(st)


# -- what a machine runs -------------------------------------------------------------------------
def _detect(tmp_path: Path, port: int, uri: str) -> str:
    script = tmp_path / "detect"
    script.write_text(guest.detector("127.0.0.1", port, {"deb.debian.org", "mirror.example.net"}))
    script.chmod(0o755)
    return subprocess.run([str(script), uri], capture_output=True, text=True, check=True).stdout.strip()


def test_the_detector_sends_mirrors_to_the_cache_only_while_it_answers(tmp_path):
    require_tool("bash", "apt-get install bash")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert _detect(tmp_path, port, "http://deb.debian.org/debian/dists/x") == f"http://127.0.0.1:{port}/"
        assert _detect(tmp_path, port, "http://mirror.example.net:80/debian") == f"http://127.0.0.1:{port}/"
        # Third-party repositories, other ports, addresses, local names: straight out.
        for uri in (
            "http://apt.postgresql.org/pub/repos/apt/dists/x",
            "http://deb.debian.org:8080/debian",
            "http://10.0.0.5/debian",
            "http://[::1]/debian",
            "http://localhost/debian",
            "http://user@deb.debian.org.evil.example/debian",
        ):
            assert _detect(tmp_path, port, uri) == "DIRECT", uri
    # Nothing listens any more: DIRECT for the mirror too (apt never depends on the cache).
    assert _detect(tmp_path, port, "http://deb.debian.org/debian/dists/x") == "DIRECT"


def test_the_detector_refuses_values_that_are_not_an_address():
    with pytest.raises(ValueError):
        guest.detector("10.0.2.2; rm -rf /", 3142, set())
    with pytest.raises(ValueError):
        guest.detector("10.0.2.2", 0, set())
    text = guest.detector("10.0.2.2", 3142, {"deb.debian.org", "bad host;reboot"})
    assert "reboot" not in text


def test_corrupt_files_are_read_from_apts_errors():
    lines = [
        "E: Failed to fetch http://deb.debian.org/debian/pool/main/n/nginx/nginx-light_1.22_all.deb  Hash Sum mismatch",
        "E: Failed to fetch http://deb.debian.org/debian/pool/main/c/curl/curl_7.88_amd64.deb  File has unexpected size",
        "E: Failed to fetch http://x/../  Hash Sum mismatch",
        "E: Failed to fetch http://deb.debian.org/debian/pool/main/n/nginx/nginx_1.22.1-9%2bdeb12u9_all.deb  Hash Sum mismatch",
    ]
    assert guest.corrupt_files(lines) == {
        "nginx-light_1.22_all.deb",
        "curl_7.88_amd64.deb",
        "nginx_1.22.1-9+deb12u9_all.deb",
    }
    assert guest.corrupt_files(["E: Unable to fetch some archives"]) == set()
