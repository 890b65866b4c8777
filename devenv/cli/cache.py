"""`devenv cache status|clean`: the package cache every machine on this host shares."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from devenv.cli import ui
from devenv.cli.common import handle_errors

cache_app = typer.Typer(
    help="The host's package cache (apt, shared by every machine).", no_args_is_help=True, suggest_commands=False
)


def _proxy():
    from devenv.errors import StateError
    from devenv.pkgcache.proxy import CacheProxy, CacheSettings

    try:
        return CacheProxy(CacheSettings.from_env())
    except ValueError as exc:  # DEVENV_PACKAGE_CACHE_MAX is not a size
        raise StateError(f"DEVENV_PACKAGE_CACHE_MAX: {exc}", hint="write a size like 10G or 500M") from exc


@cache_app.command("status")
@handle_errors
def cache_status(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Where the cache is, its size, whether the proxy runs, and how much it served."""
    from devenv.pkgcache.proxy import human_size

    st = _proxy().status()
    if json_out:
        print(json.dumps(st, indent=2))
        return
    ui.say(f"package cache: {st['folder']}{'' if st['enabled'] else ' (off: DEVENV_PACKAGE_CACHE)'}")
    ui.say(f"  size: {human_size(st['size_bytes'])} in {st['files']} files (cap {human_size(st['max_bytes'])})")
    if st["running"]:
        ui.say(f"  proxy: running on port {st['port']} ({', '.join(st['listens_on'])})")
    else:
        ui.say("  proxy: not running (devenv starts it while it provisions)")
    if st["served_bytes"]:
        ui.say(
            f"  served {human_size(st['served_bytes'])} in {st['requests']} requests, "
            f"{human_size(st['fetched_bytes'])} fetched from mirrors: hit rate {st['hit_rate']:.0%}"
        )
    else:
        ui.say("  nothing served yet")


@cache_app.command("clean")
@handle_errors
def cache_clean() -> None:
    """Empty the cache (refused while another devenv command uses it)."""
    from devenv.errors import StateError
    from devenv.pkgcache.proxy import CacheUnavailable, human_size

    proxy = _proxy()
    try:
        freed = proxy.clean()
    except CacheUnavailable as exc:
        raise StateError(f"package cache: {exc}") from exc
    ui.say(f"package cache emptied: {human_size(freed)} freed ({proxy.folder})")
