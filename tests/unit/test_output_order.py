"""A failing shell step's output tail keeps stdout and stderr in the order the step wrote them.

The fake transport hands a command's two pipes on as an engine reading them apart may (all of
stdout, then stderr), so only a step whose streams are merged at the source shows the real
interleaving; tests/integration/test_output_order.py checks the same against Docker and sshd.
"""

from __future__ import annotations

import os
import struct
import textwrap

import pytest

from devenv.contract import Reporter, Transport
from devenv.errors import ProvisionError
from devenv.plugins import get_provisioner
from devenv.provisioners import RunContext
from devenv.transports.docker import DockerTransport
from devenv.transports.dockerapi import SdkEngine, demux, exec_config
from devenv.transports.ssh import SshTransport
from tests.unit.fakes import FakeTransport

ALTERNATING = "echo one; echo two >&2; echo three; exit 3"
WANT = ["one", "two", "three"]


def tail_of(exc: ProvisionError) -> list[str]:
    return exc.message.split("--- last output ---\n", 1)[1].splitlines()


@pytest.fixture
def transport(fake) -> FakeTransport:
    handle = fake.plant({}, name="m")
    fake.start(handle)
    return fake.transport(handle)


def run_shell(transport: Transport, config: dict, root) -> tuple[list[str], ProvisionError]:
    """Run a failing shell step; the output lines the user was shown, and the step's error."""
    shown: list[str] = []
    reporter = Reporter(lambda e: shown.append(e.text) if e.kind == "output" else None)
    ctx = RunContext(machine="m", root=root, transport=transport, reporter=reporter)
    with pytest.raises(ProvisionError) as info:
        get_provisioner("shell").run({"type": "shell", **config}, ctx)
    return shown, info.value


def test_the_fake_reorders_two_pipes_like_an_engine(transport):
    """The fault the fix is about: without a merge at the source, stderr comes after stdout."""
    lines: list[str] = []
    assert transport.run(["/bin/sh", "-c", ALTERNATING], on_output=lines.append) == 3
    assert lines == ["one", "three", "two"]
    lines.clear()
    assert transport.run(["/bin/sh", "-c", "exec 2>&1; " + ALTERNATING], on_output=lines.append) == 3
    assert lines == WANT


def test_inline_step_tail_keeps_the_interleaving(transport, tmp_path):
    shown, exc = run_shell(transport, {"inline": ALTERNATING}, tmp_path)
    assert shown == WANT
    assert tail_of(exc) == WANT
    assert "exit code 3" in exc.message


@pytest.mark.parametrize("shebang", ["", "#!/bin/sh\n"])
def test_script_step_tail_keeps_the_interleaving(transport, tmp_path, shebang):
    lines = "".join(f"echo out-{i}\necho err-{i} >&2\n" for i in range(20))
    (tmp_path / "step.sh").write_text(shebang + lines + "exit 4\n")
    shown, exc = run_shell(transport, {"script": "step.sh"}, tmp_path)
    want = [f"{k}-{i}" for i in range(20) for k in ("out", "err")]
    assert shown == want
    assert tail_of(exc) == want[-20:]  # the last 20 lines, in the order written


def test_devenv_ssh_c_still_keeps_stderr_apart(transport):
    """`devenv ssh -c` asks for stderr on its own (on_stderr): it is not merged into stdout."""
    out: list[str] = []
    err: list[str] = []
    assert transport.run(["/bin/sh", "-c", ALTERNATING], on_output=out.append, on_stderr=err.append) == 3
    assert out == ["one", "three"] and err == ["two"]


# -- the transports hand on what they get in the order they get it ---------------------------------


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(data)) + data


# Frames as the engine sends them: lines of both streams interleaved, and half lines of each.
WIRE = (
    frame(1, b"one\n")
    + frame(2, b"two\n")
    + frame(1, b"thr")
    + frame(2, b"half of an err")
    + frame(1, b"ee\n")
    + frame(2, b"or line\n")
    + frame(1, b"last, no newline")
)


def test_demux_hands_frames_on_in_stream_order():
    got: list[tuple[str, bytes]] = []
    chunks = [WIRE[i : i + 5] for i in range(0, len(WIRE), 5)]  # frames split across reads
    demux(iter(chunks), lambda b: got.append(("out", b)), lambda b: got.append(("err", b)))
    assert got == [
        ("out", b"one\n"),
        ("err", b"two\n"),
        ("out", b"thr"),
        ("err", b"half of an err"),
        ("out", b"ee\n"),
        ("err", b"or line\n"),
        ("out", b"last, no newline"),
    ]


class WireEngine:
    """A Docker engine whose exec sends WIRE, through the real demultiplexer, and exits 3."""

    def exec_run(self, container, config, on_stdout, on_stderr):
        demux(iter([WIRE[i : i + 3] for i in range(0, len(WIRE), 3)]), on_stdout, on_stderr)
        return 3


def test_docker_transport_keeps_frame_order_and_never_glues_half_lines():
    lines: list[str] = []
    t = DockerTransport(WireEngine(), "c0ffee", "m")
    assert t.run(["/bin/sh", "-c", "x"], on_output=lines.append) == 3
    # Whole lines in the order their last byte came; a half line is never joined to the other stream's.
    assert lines == ["one", "two", "three", "half of an error line", "last, no newline"]
    out: list[str] = []
    err: list[str] = []
    assert t.run(["/bin/sh", "-c", "x"], on_output=out.append, on_stderr=err.append) == 3
    assert out == ["one", "three", "last, no newline"] and err == ["two", "half of an error line"]


def test_sdk_engine_hands_frames_on_in_stream_order():
    class Api:
        def exec_create(self, *args, **kwargs):
            return {"Id": "e1"}

        def exec_start(self, exec_id, stream, demux):
            assert stream and demux
            yield from [(b"one\n", None), (None, b"two\n"), (b"three\n", None), (None, b"four\n")]

        def exec_inspect(self, exec_id):
            return {"ExitCode": 0}

    got: list[bytes] = []
    assert SdkEngine(Api()).exec_run("c", exec_config(["x"], None, None, None), got.append, got.append) == 0
    assert got == [b"one\n", b"two\n", b"three\n", b"four\n"]


@pytest.fixture
def ssh_two_pipes(tmp_path, monkeypatch):
    """`ssh` on PATH that runs the remote command in a local /bin/sh and, like a far end that reads
    the two pipes apart, sends all of its stderr after all of its stdout."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ssh").write_text(
        textwrap.dedent("""\
        #!/bin/sh
        while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done
        shift
        err=$(mktemp)
        /bin/sh -c "$1" 2>"$err"; rc=$?
        cat "$err" >&2; rm -f "$err"
        exit $rc
        """)
    )
    (bindir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(SshTransport, "options", lambda self: [])  # the shim takes no options
    return SshTransport(
        machine="vm", host="127.0.0.1", port=22, user="root", key=tmp_path / "key", known_hosts=tmp_path / "kh"
    )


def test_ssh_transport_merges_the_streams_in_the_machine_when_one_is_asked_for(ssh_two_pipes):
    lines: list[str] = []
    assert ssh_two_pipes.run(["/bin/sh", "-c", ALTERNATING], on_output=lines.append) == 3
    assert lines == WANT
    out: list[str] = []
    err: list[str] = []
    assert ssh_two_pipes.run(["/bin/sh", "-c", ALTERNATING], on_output=out.append, on_stderr=err.append) == 3
    assert out == ["one", "three"] and err == ["two"]  # asked apart: kept apart


def test_shell_step_over_ssh_keeps_the_interleaving(ssh_two_pipes, tmp_path):
    shown, exc = run_shell(ssh_two_pipes, {"inline": ALTERNATING}, tmp_path)
    assert shown == WANT and tail_of(exc) == WANT
