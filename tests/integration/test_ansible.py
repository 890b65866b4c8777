"""The ansible provisioner end to end: ansible-playbook on the host against a container and a VM."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import assert_no_traceback

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


@pytest.fixture(scope="session", autouse=True)
def _ansible_installed():
    if not ANSIBLE_PLAYBOOK.exists() and shutil.which("ansible-playbook") is None:
        pytest.fail("ansible-playbook is missing: pip install -e '.[test]' (the test extra has ansible)")


SITE = """\
    - hosts: all
      tasks:
        - name: write the greeting
          ansible.builtin.template:
            src: greeting.j2
            dest: /etc/greeting
            mode: "0644"
        - name: role task
          ansible.builtin.import_role:
            name: motd
"""

FAILING = """\
    - hosts: all
      gather_facts: false
      tasks:
        - name: fine
          ansible.builtin.command: "true"
        - name: this one breaks
          ansible.builtin.command: /bin/sh -c "echo broken-on-purpose >&2; exit 3"
        - name: never reached
          ansible.builtin.command: "true"
"""


def write_playbook(p) -> None:
    p.write("ansible/site.yml", SITE)
    p.write("ansible/templates/greeting.j2", "{{ greeting }} on {{ ansible_distribution }} ({{ colour }})\n")
    p.write(
        "ansible/roles/motd/tasks/main.yml",
        """\
        - name: motd from the role's template
          ansible.builtin.template:
            src: motd.j2
            dest: /etc/motd
    """,
    )
    p.write("ansible/roles/motd/templates/motd.j2", "motd v1 for {{ inventory_hostname }}\n")


@pytest.mark.docker
@pytest.mark.slow
def test_playbook_in_a_container(proj):
    write_playbook(proj)
    proj.write("ansible/fail.yml", FAILING)
    proj.devfile("""\
        [machines.web]
        box = "debian-12"
        [[machines.web.provision]]
        type = "ansible"
        playbook = "ansible/site.yml"
        extra_vars = { greeting = "hello from ansible" }
        inventory_vars = { colour = "blue" }
    """)
    r = proj.run("up", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "==> web: provision [0] ansible ansible/site.yml" in r.stderr
    assert "    web: TASK [write the greeting]" in r.stderr
    assert proj.run("exec", "web", "--", "cat", "/etc/greeting", "/etc/motd", check=True).stdout == (
        "hello from ansible on Debian (blue)\nmotd v1 for web\n"
    )
    assert proj.status()["web"]["provision"] == "up to date"

    # A change to a role's template makes the step stale; provision reruns it.
    proj.write("ansible/roles/motd/templates/motd.j2", "motd v2 for {{ inventory_hostname }}\n")
    assert proj.status()["web"]["provision"].startswith("stale: step [0] ansible ansible/site.yml changed")
    proj.run("provision", check=True)
    assert proj.run("exec", "web", "--", "cat", "/etc/motd", check=True).stdout == "motd v2 for web\n"

    # A failing playbook: exit 5, the failed task and ansible's own message, the machine left running.
    proj.devfile("""\
        [machines.web]
        box = "debian-12"
        [[machines.web.provision]]
        type = "ansible"
        playbook = "ansible/site.yml"
        extra_vars = { greeting = "hello from ansible" }
        inventory_vars = { colour = "blue" }
        [[machines.web.provision]]
        type = "ansible"
        playbook = "ansible/fail.yml"
    """)
    r = proj.run("provision")
    assert r.returncode == 5, r.stdout + r.stderr
    assert_no_traceback(r)
    assert (
        "step [1] ansible ansible/fail.yml failed: ansible-playbook failed with exit code 2 "
        "at task 'this one breaks': ansible/fail.yml" in r.stderr
    )
    assert "broken-on-purpose" in r.stderr and "--- last output ---" in r.stderr
    assert "never reached" not in r.stderr
    assert "devenv provision web` resumes at this step" in r.stderr
    st = proj.status()["web"]
    assert st["state"] == "running" and st["provision"].startswith("failed at step [1]")
    proj.run("destroy", "-f", check=True)


@pytest.mark.libvirt
@pytest.mark.slow
def test_raw_playbook_in_a_vm(vm, tiny_box):  # noqa: F811 - pytest fixtures imported from test_libvirt
    """The tiny guest (busybox + dropbear) has no Python: raw tasks only, no facts, over the pinned SSH."""
    # The machine's env (libvirt passes it with each command) reaches the play as devenv_env; the raw
    # module ignores `environment:`, so the task templates it in.
    vm.write(
        "ansible/raw.yml",
        """\
        - hosts: all
          gather_facts: false
          tasks:
            - name: write a file with raw
              ansible.builtin.raw: echo "{{ greeting }} from {{ inventory_hostname }} {{ devenv_env.GREETING }}" > /data/ansible.txt
            - name: read it back
              ansible.builtin.raw: cat /data/ansible.txt
              register: out
            - ansible.builtin.debug:
                msg: "guest said: {{ out.stdout | trim }}"
    """,
    )
    vm.devfile("""\
        [machines.box1]
        driver = "libvirt"
        box = "tiny-vm"
        memory = "256MiB"
        env = { GREETING = "env-via-devenv_env" }
        provision = [
          { type = "ansible", playbook = "ansible/raw.yml", extra_vars = { greeting = "raw hello" } },
        ]
    """)
    r = vm.run("up", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "guest said: raw hello from box1 env-via-devenv_env" in r.stderr
    assert vm.run("ssh", "box1", "-c", "cat /data/ansible.txt", check=True).stdout == (
        "raw hello from box1 env-via-devenv_env\n"
    )

    # A failing raw task on the VM: exit 5 with the task named.
    vm.write(
        "ansible/raw.yml",
        """\
        - hosts: all
          gather_facts: false
          tasks:
            - name: raw failure
              ansible.builtin.raw: echo vm-broken >&2; exit 4
    """,
    )
    r = vm.run("provision")
    assert r.returncode == 5, r.stdout + r.stderr
    assert "at task 'raw failure'" in r.stderr and "vm-broken" in r.stderr
    assert_no_traceback(r)
    vm.run("destroy", "-f", check=True)
