"""One rule for missing engines and tools: skip locally with the reason, FAIL in CI (CI=true)."""

from __future__ import annotations

import os

import pytest

from devenv.errors import DevenvError


def require_engine(check) -> None:
    """Run devenv's own availability check; its message (and fix) is the skip or failure reason."""
    try:
        check()
    except DevenvError as exc:
        missing(f"{exc.message} ({exc.hint})" if exc.hint else exc.message)


def missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"missing in CI: {reason}")
    pytest.skip(reason)


def require_tool(name: str, install: str) -> None:
    """A command the test drives (vagrant, …) must be on PATH."""
    import shutil

    if shutil.which(name) is None:
        missing(f"{name} is not installed ({install})")


def require_module(name: str, install: str):
    """A Python module the test needs (libvirt-python, ...): imported, or missing() says how to get it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name} is not installed ({install})")


def listening_addresses(port: int) -> list[str]:
    """The local addresses something listens on at TCP ``port`` (from /proc, as ss reads it)."""
    import socket
    from pathlib import Path

    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if state == "0A" and int(p, 16) == port:
            out.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            out.append("v6:" + local.split(":")[0])
    return out
