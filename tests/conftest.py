"""Shared test set-up: keep devenv's global index out of the real user folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _devenv_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path_factory.mktemp("devenv-home")))
    monkeypatch.setenv("NO_COLOR", "1")
