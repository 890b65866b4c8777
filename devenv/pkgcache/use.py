"""One command's use of the package cache: shared by its machine threads, released at its end.

The cache only ever speeds provisioning up. When the proxy cannot start the command says so
once and provisions without it; when a step fails fetching packages through it, the step runs
again -- through the cache after dropping entries apt found corrupt (they are fetched anew), or
without the cache when the proxy is what failed.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from devenv.contract import Event, HostAccess, Reporter, Transport, role
from devenv.pkgcache import guest
from devenv.pkgcache.proxy import CacheProxy, CacheSettings, CacheUnavailable


class FetchSigns:
    """Keeps the apt fetch failures a step prints (what decides a second run)."""

    def __init__(self, reporter: Reporter) -> None:
        self.outer = reporter
        self.lines: list[str] = []
        self.reporter = Reporter(self._see, debug=reporter.debug_enabled)

    def _see(self, event: Event) -> None:
        if event.kind == "output" and guest.FETCH_FAILED.search(event.text) and len(self.lines) < 200:
            self.lines.append(event.text)
        self.outer.emit(event)

    @property
    def failed_fetch(self) -> bool:
        return bool(self.lines)


class CacheUse:
    def __init__(self, reporter: Reporter, *, enabled: bool = True, settings: CacheSettings | None = None) -> None:
        self.reporter = reporter
        self._settings = settings
        self._enabled = enabled
        self._proxy: CacheProxy | None = None
        self._guard = threading.Lock()
        self._failed: str | None = None
        self._hosts: set[str] | None = None

    @property
    def enabled(self) -> bool:
        if self._enabled and self._settings is None:
            self._settings = CacheSettings.from_env()
        return bool(self._enabled and self._settings and self._settings.enabled)

    def _unavailable(self, why: str) -> None:
        if self._failed is None:
            self._failed = why
            self.reporter.warn(f"package cache: {why}; provisioning goes on without it")

    def _port(self, bind: str) -> int | None:
        with self._guard:
            if self._failed is not None:
                return None
            try:
                if self._proxy is None:
                    assert self._settings is not None
                    self._proxy = CacheProxy(self._settings)
                self._proxy.acquire()
                port = self._proxy.ensure({bind})
                if self._hosts is None:
                    self._hosts = set((self._proxy.conf_dir / "hosts.txt").read_text().split())
                return port
            except CacheUnavailable as exc:
                self._unavailable(str(exc))
            except OSError as exc:
                self._unavailable(f"the cache folder cannot be used ({exc.strerror or exc})")
            return None

    def configure(self, name: str, driver: Any, handle: str, transport: Transport) -> bool:
        """Point apt in the machine at the cache (before its first step); False when it is not used."""
        if not self.enabled:
            return False
        access = role(driver, HostAccess)
        endpoint = access.host_endpoint(handle) if access is not None else None
        if endpoint is None:
            self.reporter.debug(f"package cache: the {driver.name} driver gives this machine no way to the host", name)
            return False
        # Machines without apt (busybox, Alpine) never start the proxy, nor hear about it.
        probe: list[str] = []
        if transport.run(["/bin/sh", "-c", guest.PROBE], user="root", on_output=probe.append) != 0 or (
            "devenv:apt" not in probe
        ):
            return False
        port = self._port(endpoint.bind)
        if port is None:
            return False
        lines: list[str] = []
        code = transport.run(
            guest.install_argv(endpoint.address, port, self._hosts or set()), user="root", on_output=lines.append
        )
        if code != 0 or "devenv:configured" not in lines:
            if "devenv:no-apt" not in lines:
                self.reporter.debug(f"package cache: not set up in the machine (exit {code}): {lines[-3:]}", name)
            return False
        self.reporter.info(name, f"apt goes through the package cache on the host ({endpoint.address}:{port})")
        return True

    def unconfigure(self, transport: Transport) -> None:
        transport.run(guest.remove_argv(), user="root")

    def healthy(self) -> bool:
        with self._guard:
            return self._proxy is not None and self._proxy.running() is not None

    def retry_plan(self, name: str, step: str, signs: FetchSigns, attempt: int = 0) -> str | None:
        """After a step failed with fetch errors through the cache: "cache" to run it again through
        the cache (the entries apt found corrupt dropped, so they are fetched anew), "direct" to run
        it again without the cache, None to let the failure stand (it was not the cache's)."""
        if not signs.failed_fetch or attempt >= 2:
            return None
        alive = self.healthy()
        corrupt = guest.corrupt_files(signs.lines)
        gone = 0
        if corrupt and alive and attempt == 0:
            with self._guard:
                assert self._proxy is not None
                gone = self._proxy.purge(corrupt)
        if gone:
            self.reporter.warn(
                f"{name}: step {step}: apt found {len(corrupt)} package file(s) from the cache corrupt "
                f"({', '.join(sorted(corrupt)[:3])}); dropped {gone} from the cache, running the step again "
                "(they are fetched anew)"
            )
            return "cache"
        why = "fetching through the package cache failed" if alive else "the package cache stopped answering"
        tail = next((ln for ln in reversed(signs.lines) if ln.strip()), "")
        with self._guard:
            self._failed = self._failed or why  # the rest of this command provisions without it
        self.reporter.warn(f"{name}: step {step}: {why} ({_short(tail)}); running the step again without the cache")
        return "direct"

    def close(self) -> None:
        """The end of the command: the last user of the proxy stops it and prunes the cache."""
        with self._guard:
            proxy, self._proxy = self._proxy, None
        if proxy is None:
            return
        try:
            pruned = proxy.release()
        except OSError as exc:
            self.reporter.debug(f"package cache: releasing it failed: {exc}")
            return
        if pruned:
            self.reporter.info(None, pruned)


def _short(line: str) -> str:
    return re.sub(r"\s+", " ", line).strip()[:160]
