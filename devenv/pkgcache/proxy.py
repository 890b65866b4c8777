"""apt-cacher-ng as devenv runs it: one proxy per cache folder, shared by every machine.

A devenv command that provisions holds the folder's use lock shared while it needs the proxy;
the last one to let go stops the proxy, drops incomplete entries and prunes the cache to its cap.
The proxy listens on 127.0.0.1 (VMs reach it through user-mode networking's host alias) and on
the addresses drivers ask for (the Docker bridge's gateway), never on every interface. It runs as
the package's own unprivileged user when devenv runs as root, with a configuration devenv writes:
Debian and Ubuntu mirrors only (ForceManaged), no CONNECT tunnels, no web report page.

Settings (the environment; one cache per user): DEVENV_PACKAGE_CACHE=off turns it off,
DEVENV_PACKAGE_CACHE_DIR moves it, DEVENV_PACKAGE_CACHE_PORT fixes the port (default: a free one),
DEVENV_PACKAGE_CACHE_MAX caps its size (default 10G).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUPPORT_DIR = Path("/usr/lib/apt-cacher-ng")
DEFAULT_MAX = 10 * 1024**3
START_WAIT = 5.0  # s: apt-cacher-ng listens within milliseconds; a slow disk may take longer
SERVICE_USER = "apt-cacher-ng"  # made by Debian's package; the proxy drops to it when devenv is root

# Debian's own security remap (as the package's acng.conf has it): every name of the security archive is one cache.
_SECURITY = (
    "security.debian.org security.debian.org/debian-security deb.debian.org/debian-security /debian-security "
    "cdn-fastly.deb.debian.org/debian-security ; deb.debian.org/debian-security security.debian.org "
    "cdn-fastly.deb.debian.org/debian-security"
)
_OFF = {"0", "off", "false", "no"}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


class CacheUnavailable(Exception):
    """The proxy cannot run; the message says why and what to do (provisioning goes on without it)."""


def parse_size(text: str) -> int:
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a size: {text!r} (write e.g. 10G or 500M)")
    return int(float(m.group(1)) * 1024 ** "_KMGT".index((m.group(2) or "_").upper()))


@dataclass(frozen=True)
class CacheSettings:
    folder: Path
    enabled: bool = True
    port: int | None = None  # None: a free port, kept while it stays free
    max_bytes: int = DEFAULT_MAX

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CacheSettings:
        env = dict(os.environ if env is None else env)
        folder = env.get("DEVENV_PACKAGE_CACHE_DIR")
        if not folder:
            if env.get("DEVENV_HOME"):
                folder = str(Path(env["DEVENV_HOME"]) / "package-cache")
            else:
                from platformdirs import user_cache_dir

                folder = str(Path(user_cache_dir("devenv", appauthor=False)) / "packages")
        port = env.get("DEVENV_PACKAGE_CACHE_PORT")
        size = env.get("DEVENV_PACKAGE_CACHE_MAX")
        return cls(
            folder=Path(folder),
            enabled=env.get("DEVENV_PACKAGE_CACHE", "on").strip().lower() not in _OFF,
            port=int(port) if port and port.isdigit() and 0 < int(port) < 65536 else None,
            max_bytes=parse_size(size) if size else DEFAULT_MAX,
        )


def human_size(n: float) -> str:
    """Binary units, as the cap is written (10G is 10 GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class CacheProxy:
    """The proxy of one cache folder (see the module's doc)."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self.folder = settings.folder
        self.data = self.folder / "data"
        self.logs = self.folder / "log"
        self.run_dir = self.folder / "run"
        self.conf_dir = self.folder / "conf"
        self.record = self.folder / "proxy.json"
        self._use_fd: int | None = None

    # -- finding apt-cacher-ng ---------------------------------------------------------------
    @staticmethod
    def binary() -> str:
        found = shutil.which("apt-cacher-ng", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
        if not found:
            raise CacheUnavailable("apt-cacher-ng is not installed (apt-get install apt-cacher-ng)")
        return found

    # -- the use lock ------------------------------------------------------------------------
    def _prepare_folder(self) -> None:
        try:
            for d in (self.folder, self.data, self.logs, self.run_dir, self.conf_dir):
                d.mkdir(parents=True, exist_ok=True)
                if d.is_symlink():
                    raise CacheUnavailable(f"{d} is a symbolic link; devenv keeps its cache in a real folder")
            probe = self.data / ".devenv-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CacheUnavailable(
                f"the cache folder {self.folder} is not writable ({exc.strerror or exc}); "
                "fix its permissions or set DEVENV_PACKAGE_CACHE_DIR"
            ) from exc

    def acquire(self) -> None:
        """Hold the folder shared for this command (the proxy stays up while any command holds it)."""
        if self._use_fd is not None:
            return
        self._prepare_folder()
        fd = os.open(self.folder / "use.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a stop or clean in progress (a few seconds)
        self._use_fd = fd

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        fd = os.open(self.folder / "start.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def release(self) -> str | None:
        """Let go of the folder; the last user stops the proxy and prunes. Returns what pruning did."""
        fd, self._use_fd = self._use_fd, None
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another devenv command still uses the proxy
            with self._start_lock():
                self.stop()
                self.drop_incomplete()
                return self.prune()
        finally:
            os.close(fd)

    # -- running -----------------------------------------------------------------------------
    def _read_record(self) -> dict:
        try:
            raw = json.loads(self.record.read_text())
            return raw if isinstance(raw, dict) else {}
        except (OSError, ValueError):
            return {}

    def _ours(self, rec: dict) -> bool:
        """The recorded pid is still this folder's apt-cacher-ng (not a reused pid)."""
        pid = rec.get("pid")
        if not isinstance(pid, int):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return any(b"apt-cacher-ng" in part for part in cmdline[:1]) and str(self.conf_dir).encode() in cmdline

    def _alive(self, rec: dict) -> bool:
        port = rec.get("port")
        return isinstance(port, int) and self._ours(rec) and _answers("127.0.0.1", port)

    def running(self) -> dict | None:
        rec = self._read_record()
        return rec if self._alive(rec) else None

    def ensure(self, binds: set[str]) -> int:
        """The proxy's port, started (or restarted to listen on more addresses) as needed."""
        with self._start_lock():
            rec = self._read_record()
            wanted = {"127.0.0.1", *binds}
            if self._alive(rec) and wanted <= set(rec.get("binds") or []):
                return int(rec["port"])
            if self._ours(rec):  # up but not listening where wanted, or not answering: replaced
                wanted |= set(rec.get("binds") or [])
                self.stop()
            return self._start(sorted(wanted), rec.get("port"))

    def _start(self, binds: list[str], last_port: object) -> int:
        binary = self.binary()
        fixed = self.settings.port
        if fixed and fixed not in range(1, 32768):
            raise CacheUnavailable(
                f"DEVENV_PACKAGE_CACHE_PORT={fixed}: apt-cacher-ng listens only on ports below 32768"
            )
        tries = [fixed] if fixed else [p for p in (last_port,) if isinstance(p, int) and _free(p, binds)] + [None, None]
        failure = ""
        tried: set[int] = set()
        for want in tries:
            port = want or _free_port(binds, tried)
            tried.add(port)
            if not _free(port, binds):  # another program answers there: never take it for ours
                if fixed:
                    raise CacheUnavailable(
                        f"port {port} (DEVENV_PACKAGE_CACHE_PORT) is taken by another program on "
                        f"{' or '.join(binds)}; unset DEVENV_PACKAGE_CACHE_PORT to let devenv pick a free one"
                    )
                continue
            self._write_conf(port, binds)
            proc = self._spawn(binary)
            deadline = time.monotonic() + START_WAIT
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if _answers("127.0.0.1", port) and all(_answers(b, port) for b in binds):
                    self.record.write_text(json.dumps({"pid": proc.pid, "port": port, "binds": binds}))
                    return port
                time.sleep(0.02)
            failure = self._failure(proc)
            _kill(proc.pid)
            if fixed and "in use" in failure:
                raise CacheUnavailable(
                    f"port {port} (DEVENV_PACKAGE_CACHE_PORT) is taken by another program on {' or '.join(binds)}; "
                    "unset DEVENV_PACKAGE_CACHE_PORT to let devenv pick a free one"
                )
        raise CacheUnavailable(f"apt-cacher-ng did not start: {failure or 'no answer within 5 s'}")

    def _spawn(self, binary: str) -> subprocess.Popen:
        out = open(self.logs / "daemon.log", "ab")  # noqa: SIM115 -- the child keeps it
        kwargs: dict = {}
        if os.geteuid() == 0:
            uid = _service_uid()
            # Its own user only where that user can reach the folder (not under root's 0700 home).
            if uid is not None and _reachable(self.folder, *uid):
                for d in (self.data, self.logs, self.run_dir):
                    _chown_tree(d, *uid)
                kwargs.update(user=uid[0], group=uid[1], extra_groups=[])
        try:
            return subprocess.Popen(
                [binary, "-c", str(self.conf_dir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command; the last user stops it
                cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
                **kwargs,
            )
        except OSError as exc:
            raise CacheUnavailable(f"apt-cacher-ng did not start: {exc.strerror or exc}") from exc
        finally:
            out.close()

    def _failure(self, proc: subprocess.Popen) -> str:
        time.sleep(0.05)
        text = ""
        for name in ("daemon.log", "apt-cacher.err"):
            with contextlib.suppress(OSError):
                text += (self.logs / name).read_text(errors="replace")[-2000:]
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if any("in use" in ln or "EADDRINUSE" in ln for ln in lines[-5:]):
            return "the port is in use by another program"
        if any("No space" in ln for ln in lines[-5:]):
            return "no space left in the cache folder"
        return lines[-1][:200] if lines else f"exit {proc.poll()}"

    def _write_conf(self, port: int, binds: list[str]) -> None:
        mirror = _host_mirror()
        lines = [
            "# Written by devenv at every start of its package cache; changes here are overwritten.",
            f"CacheDir: {self.data}",
            f"LogDir: {self.logs}",
            f"SupportDir: {SUPPORT_DIR}",
            f"Port: {port}",
            f"BindAddress: {' '.join(binds)}",
            f"PidFile: {self.run_dir / 'pid'}",
            f"SocketPath: {self.run_dir / 'socket'}",
            "ForeGround: 1",
            # Only the distributions' mirrors: a machine cannot make the host fetch anything else.
            "ForceManaged: 1",
            # ForceManaged needs a backend per archive: the host's own mirror for Debian.
            f"Remap-debrep: file:deb_mirror*.gz /debian {mirror or ''} ; {mirror or 'http://deb.debian.org/debian'}/",
            "Remap-uburep: file:ubuntu_mirrors /ubuntu ; http://archive.ubuntu.com/ubuntu/",
            f"Remap-secdeb: {_SECURITY}",
            "PassThroughPattern: ^$",  # no CONNECT tunnels: HTTPS sources go straight out
            "ExThreshold: 4",
            "VerboseLog: 1",
            "UnbufferLogs: 1",
        ]
        (self.conf_dir / "acng.conf").write_text("\n".join(lines) + "\n")
        (self.conf_dir / "hosts.txt").write_text("\n".join(sorted(mirror_hosts(mirror))) + "\n")

    def stop(self) -> None:
        rec = self._read_record()
        if self._ours(rec):  # answering or not (a busy proxy is stopped all the same)
            _kill(int(rec["pid"]))
        with contextlib.suppress(OSError):
            self.record.unlink()

    # -- the cache's contents ----------------------------------------------------------------
    def _entries(self) -> Iterator[tuple[Path, os.stat_result]]:
        for dirpath, _dirnames, filenames in os.walk(self.data, followlinks=False):
            for name in filenames:
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    st = p.lstat()
                    if p.is_file() and not p.is_symlink():
                        yield p, st

    def size(self) -> tuple[int, int]:
        total = files = 0
        for p, st in self._entries():
            total += st.st_size
            files += not p.name.endswith(".head")
        return total, files

    def drop_incomplete(self) -> int:
        """Entries whose size is not what their header promised (a download cut off by a killed
        proxy or a full disk): removed, so nothing half-written is ever served again."""
        dropped = 0
        for p, _st in list(self._entries()):
            if not p.name.endswith(".head"):
                continue
            body = p.with_name(p.name[: -len(".head")])
            try:
                head = p.read_text(errors="replace")
                size = body.lstat().st_size
            except OSError:
                continue
            m = re.search(r"^Content-Length:\s*(\d+)", head, re.MULTILINE | re.IGNORECASE)
            if m and int(m.group(1)) != size:
                for f in (body, p):
                    with contextlib.suppress(OSError):
                        f.unlink()
                dropped += 1
        return dropped

    def purge(self, names: set[str]) -> int:
        """Drop the entries with these file names (apt found them corrupt): the next fetch refetches."""
        gone = 0
        for p, _ in list(self._entries()):
            base = p.name[: -len(".head")] if p.name.endswith(".head") else p.name
            if base in names:
                with contextlib.suppress(OSError):
                    p.unlink()
                    gone += not p.name.endswith(".head")
        return gone

    def prune(self) -> str | None:
        """Oldest downloads first, down to 90% of the cap, when the cache is over it."""
        entries = [(p, st) for p, st in self._entries() if not p.name.endswith(".head")]
        total = sum(st.st_size for _, st in self._entries())
        cap = self.settings.max_bytes
        if total <= cap:
            return None
        freed = removed = 0
        for p, _st in sorted(entries, key=lambda e: e[1].st_mtime):
            if total - freed <= cap * 0.9:
                break
            head = p.with_name(p.name + ".head")
            for f in (p, head):
                with contextlib.suppress(OSError):
                    freed += f.lstat().st_size
                    f.unlink()
            removed += 1
        return (
            f"package cache over its cap ({human_size(cap)}): "
            f"removed the {removed} oldest downloads ({human_size(freed)})"
        )

    def clean(self) -> int:
        """Everything cached goes (the proxy is stopped first); refused while a command uses it."""
        self._prepare_folder()
        fd = os.open(self.folder / "use.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                from devenv.errors import LockTimeout

                raise LockTimeout(
                    f"the package cache {self.folder} is in use by another devenv command",
                    hint="run `devenv cache clean` again when that command is done",
                ) from None
            with self._start_lock():
                self.stop()
                total, _ = self.size()
                for child in self.data.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                for name in ("apt-cacher.log", "apt-cacher.err", "apt-cacher.dbg", "daemon.log"):
                    with contextlib.suppress(OSError):
                        (self.logs / name).unlink()
                return total
        finally:
            os.close(fd)

    def stats(self) -> dict:
        """Bytes served to machines and fetched from mirrors, from the proxy's transfer log."""
        served = fetched = requests = 0
        with contextlib.suppress(OSError), open(self.logs / "apt-cacher.log", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split("|")
                if len(parts) >= 5 and parts[2].isdigit():
                    if parts[1] == "O":
                        served += int(parts[2])
                        requests += 1
                    elif parts[1] == "I":
                        fetched += int(parts[2])
        hit = max(0.0, 1 - fetched / served) if served else None
        return {"served_bytes": served, "fetched_bytes": fetched, "requests": requests, "hit_rate": hit}

    def status(self) -> dict:
        rec = self.running()
        total, files = self.size() if self.data.is_dir() else (0, 0)
        return {
            "folder": str(self.folder),
            "enabled": self.settings.enabled,
            "running": bool(rec),
            "port": rec.get("port") if rec else None,
            "listens_on": rec.get("binds") if rec else [],
            "size_bytes": total,
            "files": files,
            "max_bytes": self.settings.max_bytes,
            **self.stats(),
        }


# -- helpers ----------------------------------------------------------------------------------
def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free(port: int, binds: list[str]) -> bool:
    for host in binds:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds: TIME_WAIT is free
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


# apt-cacher-ng 3.7 cannot bind a port above 32767 ("Error resolving address for binding"), so
# the port is one of these rather than a kernel-chosen ephemeral one (which start at 32768 here).
PORTS = range(13142, 13342)


def _free_port(binds: list[str], skip: set[int]) -> int:
    for port in PORTS:
        if port not in skip and _free(port, binds):
            return port
    raise CacheUnavailable(f"no free port for the package cache in {PORTS.start}-{PORTS.stop - 1}")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            time.sleep(0.02)
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return
            except ChildProcessError:  # not our child (another command started it)
                if not Path(f"/proc/{pid}").exists():
                    return
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _service_uid() -> tuple[int, int] | None:
    import pwd

    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _reachable(folder: Path, uid: int, gid: int) -> bool:
    import stat

    for d in [folder, *folder.parents]:
        try:
            st = d.stat()
        except OSError:
            return False
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    """Our own folder only, links never followed (lchown)."""
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in [*dirnames, *filenames]:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(dirpath, name), uid, gid)
    os.lchown(top, uid, gid)


def _host_mirror() -> str | None:
    """The Debian mirror the host's apt sources name (devenv's boxes use it), when it is plain HTTP."""
    try:
        from devenv.boxes.rootfs import host_debian_mirror

        url = host_debian_mirror()
    except Exception:  # noqa: BLE001 -- no usable mirror line: the stock mirror lists still apply
        return None
    return url.rstrip("/") if url.startswith("http://") else None


def _urls_in(path: Path) -> list[str]:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile):
        return []
    return raw.decode(errors="replace").split()


def mirror_hosts(extra: str | None = None) -> set[str]:
    """Host names the proxy serves (ForceManaged): apt in a machine sends only these to it."""
    hosts = {"deb.debian.org", "security.debian.org", "cdn-fastly.deb.debian.org", "archive.ubuntu.com"}
    urls = [u for f in ("deb_mirrors.gz", "ubuntu_mirrors") for u in _urls_in(SUPPORT_DIR / f)]
    for url in [*urls, *([extra] if extra else [])]:
        m = re.match(r"http://([A-Za-z0-9.-]+)(?::80)?/", url + "/")
        if m:
            hosts.add(m.group(1).lower())
    return hosts
