"""Remote engines: the Docker driver through DOCKER_HOST=ssh://… and the libvirt driver through a
qemu+ssh:// URI, each against an sshd the test starts on 127.0.0.1 with keys of its own.

The "remote" host is this machine (tests talk to 127.0.0.1 only), so this proves the transport
path — the SDK's ssh client, libvirt's ssh tunnel — not a second host's storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from devenv.errors import BackendUnavailable
from tests.integration.conftest import LocalSshd, require_engine


@pytest.fixture
def local_sshd(tmp_path):
    def check():
        if not os.access("/usr/sbin/sshd", os.X_OK) or os.geteuid() != 0:
            raise BackendUnavailable(
                "the remote-engine tests need /usr/sbin/sshd and root",
                hint="apt-get install openssh-server (scripts/engines.sh --for-tests)",
            )

    require_engine(check)
    d = tmp_path / "sshd"
    d.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client")], check=True)
    server = LocalSshd(d, d / "client.pub")
    port = server.port
    (d / "known_hosts").write_text(server.known_hosts_line())
    # The client side as a user would have it in ~/.ssh/config: injected with a wrapper on PATH,
    # so the real user's ssh configuration is never touched. Host keys stay strictly checked.
    (d / "ssh_config").write_text(
        textwrap.dedent(f"""\
        Host 127.0.0.1
          Port {port}
          User root
          IdentityFile {d / "client"}
          IdentitiesOnly yes
          UserKnownHostsFile {d / "known_hosts"}
          StrictHostKeyChecking yes
          BatchMode yes
        """)
    )
    bindir = d / "bin"
    bindir.mkdir()
    (bindir / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {d / "ssh_config"} "$@"\n')
    (bindir / "ssh").chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    yield port, env
    server.stop()


def test_docker_over_ssh(proj, local_sshd):
    port, env = local_sshd
    env = {**env, "DOCKER_HOST": f"ssh://root@127.0.0.1:{port}"}
    proj.devfile('[machines.r]\nbox = "busybox"\nprovision = [{ type = "shell", inline = "echo remote > /where" }]\n')
    proj.run("box", "build", "busybox", env=env, check=True)
    proj.run("up", env=env, check=True)
    st = json.loads(proj.run("status", "--json", env=env, check=True).stdout)[0]
    assert st["state"] == "running" and st["provision"] == "up to date"
    assert proj.run("ssh", "r", "-c", "cat /where", env=env).stdout == "remote\n"
    assert proj.run("exec", "r", "--", "hostname", env=env).returncode == 0
    proj.run("destroy", "-f", env=env, check=True)
    assert proj.labelled()["containers"] == []
    # A host key that does not match is refused by ssh (strict checking stays on).
    kh = Path(env["PATH"].split(":")[0]).parent / "known_hosts"
    kh.write_text(kh.read_text().replace("AAAA", "AAAB", 1))
    r = proj.run("status", env=env)
    assert r.returncode == 3 and "cannot reach the Docker engine" in r.stderr


def test_libvirt_over_qemu_ssh(vm, tiny_box, local_sshd):
    port, env = local_sshd
    uri = f"qemu+ssh://root@127.0.0.1:{port}/system"
    vm.devfile(
        f'[machines.q]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "256MiB"\n[machines.q.libvirt]\nuri = "{uri}"\n'
    )
    vm.run("up", env=env, check=True)
    st = json.loads(vm.run("status", "--json", env=env, check=True).stdout)[0]
    assert st["state"] == "running" and st["handle"].startswith(uri)
    assert vm.run("ssh", "q", "-c", "echo via-qemu-ssh", env=env).stdout == "via-qemu-ssh\n"
    vm.run("destroy", "-f", env=env, check=True)
    assert json.loads(vm.run("status", "--json", env=env, check=True).stdout)[0]["state"] == "not created"
