"""Services in containers: init = "systemd" boots systemd as PID 1, unprivileged, on the real engine.

A provision step enables a unit with systemctl (as real Vagrant projects do); the service answers
on its 127.0.0.1 forward, and after halt + up systemd starts it again without provisioning.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from tests.integration.conftest import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SERVICE = """\
[Unit]
Description=hello page
After=network.target

[Service]
ExecStart=/usr/bin/python3 -m http.server 8080 --bind 0.0.0.0 --directory /srv/hello
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

DEVFILE = """\
[machines.svc]
box = "debian-12"
ports = [{{ guest = 8080, host = {port} }}]
provision = [
  {{ type = "file", source = "hello.service", destination = "/tmp/hello.service" }},
  {{ type = "shell", inline = "install -m 644 /tmp/hello.service /etc/systemd/system/ && mkdir -p /srv/hello && echo 'hello from a systemd unit' > /srv/hello/index.html && systemctl enable --now hello.service" }},
]
"""  # no init key: debian-12 declares init = "systemd" (its recipe); the file goes by /tmp, as Vagrant's do


def _get(port: int, tries: int = 50) -> str:
    for _ in range(tries):
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answers on 127.0.0.1:{port}")


def test_systemd_runs_enabled_units_and_brings_them_back_after_halt(proj, docker_client):
    port = free_port()
    proj.devfile(DEVFILE.format(port=port))
    proj.write("hello.service", SERVICE)

    r = proj.run("up", check=True, timeout=900)
    assert "warning" not in r.stderr.lower(), r.stderr  # systemd is running: no "no init" warning
    assert "hello from a systemd unit" in _get(port)
    assert proj.run("exec", "svc", "--", "cat", "/proc/1/comm", check=True).stdout.strip() == "systemd"
    state = proj.run("exec", "svc", "--", "systemctl", "is-system-running").stdout.strip()
    assert state in ("running", "degraded")
    [name] = proj.labelled()["containers"]
    host = docker_client.api.inspect_container(name)["HostConfig"]
    assert host["Privileged"] is False and not host.get("CapAdd")  # unprivileged, as every machine
    assert set(host["Tmpfs"]) == {"/run", "/run/lock"}  # not /tmp: uploads there must stay visible

    # halt stops systemd cleanly (SIGRTMIN+3); up boots it again and it starts the enabled unit.
    proj.run("halt", check=True, timeout=120)
    assert proj.status()["svc"]["state"] == "stopped"
    r = proj.run("up", check=True, timeout=300)
    assert "provision" not in r.stderr.replace("provisioning is up to date", ""), r.stderr
    assert "hello from a systemd unit" in _get(port)
    assert proj.status()["svc"]["provision"] == "up to date"

    proj.run("destroy", "-f", check=True)
    assert proj.labelled() == {"containers": [], "volumes": [], "networks": []}


def test_systemd_on_a_box_without_it_is_one_clear_error_and_leaves_nothing(proj):
    proj.devfile('[machines.m]\nbox = "busybox"\n[machines.m.docker]\ninit = "systemd"\n')
    r = proj.run("up", timeout=300)
    assert r.returncode == 4, r.stderr
    assert "systemd" in r.stderr and "Traceback" not in r.stderr
    assert proj.labelled()["containers"] == []  # nothing half-created is left


def test_without_an_init_a_systemctl_step_warns_naming_init_systemd(proj):
    proj.devfile(
        '[machines.m]\nbox = "debian-12"\nprovision = [{ type = "shell", inline = "systemctl start cron || true" }]\n'
        "[machines.m.docker]\ninit = true\n"  # the machine's own init overrides what the box declares
    )
    r = proj.run("up", timeout=900)
    assert r.returncode == 0, r.stderr
    assert 'init = "systemd" in [machines.m.docker]' in r.stderr, r.stderr
    proj.run("destroy", "-f", check=True)


def test_ssh_and_exec_run_as_the_machine_user_who_has_passwordless_sudo(proj):
    """debian-12 has the login user `dev` (its baked base.sh step) with passwordless sudo, as
    Vagrant boxes have `vagrant`; `user = "dev"` makes ssh and exec run as dev (steps stay root)."""
    proj.devfile(
        '[machines.m]\nbox = "debian-12"\nuser = "dev"\n'
        'provision = [{ type = "shell", inline = "id -un > /tmp/provisioned-as" }]\n'
    )
    proj.run("up", check=True, timeout=900)
    assert proj.run("ssh", "m", "-c", "id -un", check=True).stdout.strip() == "dev"
    assert proj.run("exec", "m", "--", "whoami", check=True).stdout.strip() == "dev"
    assert proj.run("ssh", "m", "-c", "sudo -n id -u", check=True).stdout.strip() == "0"
    assert proj.run("exec", "m", "--", "cat", "/tmp/provisioned-as", check=True).stdout.strip() == "root"
    proj.run("destroy", "-f", check=True)
