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
