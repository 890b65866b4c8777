"""A failing shell step's output, and the tail its error shows, keep stdout and stderr in the order
the step wrote them: against a real Docker machine (busybox) through the real CLI, and through the
SSH transport against a real sshd on 127.0.0.1.

Both ends read a command's two pipes apart (dockerd's exec attach, sshd's channel), so without
the merge at the source the lines came out "out-1 out-2 ... err-1 err-2 ..." or worse.
"""

from __future__ import annotations

import pytest

from devenv.contract import Reporter
from devenv.errors import ProvisionError
from devenv.plugins import get_provisioner
from devenv.provisioners import RunContext
from tests.integration.conftest import assert_no_traceback
from tests.integration.test_security_ssh import _close_master, _transport, sshd  # noqa: F401 - sshd: a fixture

# 20 times stdout then stderr, each line flushed at once (echo), then a failure.
ALTERNATING = "i=1; while [ $i -le 20 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done; exit 3"
WRITTEN = [f"{k}-{i}" for i in range(1, 21) for k in ("out", "err")]


def _tail(message: str) -> list[str]:
    """The lines under '--- last output ---' in an error as the CLI shows it (prefixes stripped)."""
    after = message.split("--- last output ---", 1)[1]
    return [line.strip() for line in after.splitlines() if line.strip().startswith(("out-", "err-"))]


@pytest.mark.docker
def test_docker_step_failure_shows_stdout_and_stderr_in_order(proj):
    proj.devfile(f"""\
        [machines.m]
        box = "busybox"
        provision = [{{ type = "shell", inline = "{ALTERNATING}" }}]
    """)
    r = proj.run("up")
    assert r.returncode == 5, r.stderr
    assert_no_traceback(r)
    assert "exit code 3" in r.stderr
    # The step's output as it streamed...
    streamed = [line.split(": ", 1)[1] for line in r.stderr.splitlines() if line.startswith("    m: ")]
    assert [s for s in streamed if s.startswith(("out-", "err-"))] == WRITTEN, r.stderr
    # ...and the tail of the error: the last 20 lines, in the order written.
    assert _tail(r.stderr) == WRITTEN[-20:], r.stderr


@pytest.mark.docker
def test_docker_step_failure_order_holds_run_after_run(proj):
    """The engine's reordering is a race: one lucky run proves little, so a few in a row."""
    proj.devfile(f"""\
        [machines.m]
        box = "busybox"
        provision = [{{ type = "shell", run = "always", inline = "{ALTERNATING}" }}]
    """)
    r = proj.run("up")
    assert r.returncode == 5, r.stderr
    assert _tail(r.stderr) == WRITTEN[-20:], r.stderr
    for _ in range(3):
        r = proj.run("provision")
        assert r.returncode == 5, r.stderr
        assert _tail(r.stderr) == WRITTEN[-20:], r.stderr


def test_ssh_step_failure_shows_stdout_and_stderr_in_order(sshd, tmp_path):  # noqa: F811 - the fixture
    port, keys = sshd
    t = _transport(port, keys)
    try:
        lines: list[str] = []
        assert t.run(["/bin/sh", "-c", ALTERNATING], on_output=lines.append) == 3
        assert lines == WRITTEN
        shown: list[str] = []
        ctx = RunContext(
            machine="vm",
            root=tmp_path,
            transport=t,
            reporter=Reporter(lambda e: shown.append(e.text) if e.kind == "output" else None),
        )
        with pytest.raises(ProvisionError) as info:
            get_provisioner("shell").run({"type": "shell", "inline": ALTERNATING}, ctx)
        assert shown == WRITTEN
        assert _tail(info.value.message) == WRITTEN[-20:]
        # Asked apart (`devenv ssh -c`), the streams stay apart.
        out: list[str] = []
        err: list[str] = []
        assert t.run(["/bin/sh", "-c", ALTERNATING], on_output=out.append, on_stderr=err.append) == 3
        assert out == WRITTEN[0::2] and err == WRITTEN[1::2]
    finally:
        _close_master(t)
