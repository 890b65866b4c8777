"""Devfile fuzzing: mutated valid Devfiles and random TOML never crash validation.

Every outcome is either a model or problems that each carry a location (line, or a key path
with the file). The default run is small; a larger one:
    DEVENV_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/unit/test_devfile_fuzz.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devenv.model import devfile

EXAMPLES = int(os.environ.get("DEVENV_FUZZ_EXAMPLES", "300"))
REPO = Path(__file__).resolve().parents[2]
VALID = (REPO / "Devfile.example").read_text()
LINES = VALID.splitlines()

_settings = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _check(text: str) -> None:
    path = REPO / "Devfile.fuzz"  # never written: check_text reads only the text given
    model, problems = devfile.check_text(text, path)
    assert (model is None) == bool(problems)
    for p in problems:
        assert p.file and (p.line is not None or p.key), p
        assert str(p).startswith(p.file)


toml_scalar = st.one_of(
    st.integers(-(2**40), 2**40), st.booleans(), st.text(max_size=12), st.floats(allow_nan=False, allow_infinity=False)
)
toml_value = st.recursive(
    toml_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                ["box", "driver", "guest", "host", "type", "script", "inline", "ports", "sync", "env", "x"]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


def _toml_literal(v) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_literal(x) for x in v) + "]"
    return "{ " + ", ".join(f"{k} = {_toml_literal(x)}" for k, x in v.items()) + " }"


@_settings
@given(line=st.integers(0, len(LINES) - 1), replacement=st.text(max_size=40))
def test_mutated_line_never_crashes(line, replacement):
    lines = list(LINES)
    lines[line] = replacement
    _check("\n".join(lines))


@_settings
@given(
    key=st.sampled_from(
        [
            "box",
            "driver",
            "cpus",
            "memory",
            "hostname",
            "env",
            "ports",
            "sync",
            "provision",
            "depends_on",
            "docker",
            "libvirt",
            "bogus",
        ]
    ),
    value=toml_value,
    machine=st.sampled_from(["web", "app"]),
)
def test_random_values_for_machine_keys(key, value, machine):
    text = VALID + f"\n[machines.extra_{machine}]\n{key} = {_toml_literal(value)}\n"
    _check(text)


@_settings
@given(st.text(max_size=200))
def test_random_text(text):
    _check(text)


@_settings
@given(data=st.binary(max_size=60), at=st.integers(0, len(VALID)))
def test_random_bytes_spliced_in(data, at):
    _check(VALID[:at] + data.decode("utf-8", "replace") + VALID[at:])
