"""Project verbs against the fake driver: lifecycle, provisioning plans, failures and cleanup."""

from __future__ import annotations

import shutil

import pytest

from devenv.contract import MachineState
from devenv.errors import BoxError, ProvisionError
from devenv.state import GlobalIndex
from tests.unit.fakes import FakeDriver

THREE_MACHINES = """
    [defaults]
    driver = "fake"
    box = "fake-box"

    [machines.web]
    depends_on = ["db"]
    provision = [{ type = "shell", inline = "echo web-step" }]

    [machines.db]
    provision = [{ type = "shell", inline = "echo db-step" }]

    [machines.cache]
    depends_on = ["db"]
"""


def one_machine(*steps: str) -> str:
    body = ",\n        ".join(steps)
    return f"""
    [machines.dev]
    driver = "fake"
    box = "fake-box"
    provision = [
        {body}
    ]
    """


def ran(driver: FakeDriver, name: str, text: str) -> int:
    """How many commands run in machine ``name`` mention ``text`` (not counting script clean-ups)."""
    return sum(text in r and "rm -f" not in r for r in driver.runs(name))


def test_up_creates_starts_and_provisions_dependencies_first(proj):
    proj.devfile(THREE_MACHINES)
    proj.project().up()

    log = proj.driver.log
    assert [e for e in log if e[0] == "create"][0] == ["create", "db"]
    pos = {tuple(e[:2]): i for i, e in enumerate(log)}
    db_provisioned = next(i for i, e in enumerate(log) if e[:2] == ["run", "db"])
    for dependent in ("web", "cache"):
        assert pos[("create", dependent)] > db_provisioned, log
    for name in ("db", "web", "cache"):
        assert proj.driver.by_name(name)["state"] == "running"
        assert proj.state_file(name).is_file()
    assert ran(proj.driver, "web", "echo web-step") == 1
    assert ran(proj.driver, "db", "echo db-step") == 1


def test_up_only_named_machine_brings_its_dependencies(proj):
    proj.devfile(THREE_MACHINES)
    proj.project().up(["web"])
    assert proj.driver.by_name("web") is not None
    assert proj.driver.by_name("db") is not None
    assert proj.driver.by_name("cache") is None


def test_second_up_is_already_running_and_reruns_only_always_steps(proj, capsys):
    proj.devfile(
        one_machine(
            '{ type = "shell", inline = "echo always-step", run = "always" }',
            '{ type = "shell", inline = "echo once-step" }',
        )
    )
    proj.project().up()
    capsys.readouterr()
    proj.project().up()
    err = capsys.readouterr().err
    assert "already running" in err
    assert ran(proj.driver, "dev", "echo always-step") == 2
    assert ran(proj.driver, "dev", "echo once-step") == 1
    # The always step must not make the once step after it look unapplied for the next up.
    proj.project().up()
    assert ran(proj.driver, "dev", "echo always-step") == 3
    assert ran(proj.driver, "dev", "echo once-step") == 1
    assert [e[0] for e in proj.driver.log].count("create") == 1


def test_changed_script_makes_step_stale_and_provision_reruns_it_and_later_steps(proj):
    proj.write("two.sh", "echo two-v1\n")
    proj.devfile(
        one_machine(
            '{ type = "shell", inline = "echo step-zero" }',
            '{ type = "shell", script = "two.sh" }',
            '{ type = "shell", inline = "echo step-two" }',
        )
    )
    proj.project().up()
    [st] = proj.project().status()
    assert st.provision == "up to date" and st.stale_step is None

    proj.write("two.sh", "echo two-v2\n")
    [st] = proj.project().status()
    assert st.provision == "stale" and st.stale is not None and st.stale.label.startswith("[1]")
    assert st.stale_step == 1

    proj.project().provision()
    assert ran(proj.driver, "dev", "echo step-zero") == 1
    assert ran(proj.driver, "dev", "two.sh") == 2
    assert ran(proj.driver, "dev", "echo step-two") == 2
    [st] = proj.project().status()
    assert st.provision == "up to date"


def test_changed_step_config_in_devfile_is_stale(proj):
    proj.write("s.sh", "echo s\n")
    proj.devfile(one_machine('{ type = "shell", script = "s.sh", args = ["a"] }'))
    proj.project().up()
    proj.devfile(one_machine('{ type = "shell", script = "s.sh", args = ["b"] }'))
    [st] = proj.project().status()
    assert st.stale_step == 0 and st.provision == "stale" and st.stale is not None and st.stale.changed
    proj.devfile(one_machine('{ type = "shell", script = "s.sh", args = ["a"], name = "renamed" }'))
    [st] = proj.project().status()
    assert st.provision == "up to date"


def test_failing_step_stops_keeps_machine_running_and_provision_resumes_there(proj):
    lines = "".join(f"echo line-{i:02d}\n" for i in range(30))
    proj.write("flaky.sh", lines + "exit 3\n")
    proj.devfile(
        one_machine(
            '{ type = "shell", inline = "echo step-zero" }',
            '{ type = "shell", script = "flaky.sh" }',
            '{ type = "shell", inline = "echo step-two" }',
        )
    )
    with pytest.raises(ProvisionError) as info:
        proj.project().up()
    exc = info.value
    assert exc.exit_code == 5
    assert "flaky.sh" in exc.message and "exit code 3" in exc.message
    tail = exc.message.split("--- last output ---", 1)[1]
    assert "line-29" in tail and "line-00" not in tail  # the tail, not all of it
    assert ran(proj.driver, "dev", "echo step-two") == 0
    assert proj.driver.by_name("dev")["state"] == "running"
    [st] = proj.project().status()
    assert st.state is MachineState.RUNNING
    assert st.stale_step == 1 and st.provision == "failed"

    proj.write("flaky.sh", "echo fixed\n")
    proj.project().provision()
    assert ran(proj.driver, "dev", "echo step-zero") == 1
    assert ran(proj.driver, "dev", "flaky.sh") == 2
    assert ran(proj.driver, "dev", "echo step-two") == 1
    [st] = proj.project().status()
    assert st.provision == "up to date" and st.stale_step is None


def test_provision_with_runs_only_the_named_step(proj):
    proj.devfile(
        one_machine(
            '{ type = "shell", inline = "echo step-zero" }',
            '{ type = "shell", inline = "echo step-one", name = "one", run = "never" }',
        )
    )
    proj.project().up()
    assert ran(proj.driver, "dev", "echo step-one") == 0
    proj.project().provision(only=["one"])
    assert ran(proj.driver, "dev", "echo step-one") == 1
    assert ran(proj.driver, "dev", "echo step-zero") == 1


def test_file_step_copies_a_folder_and_shell_script_is_cleaned_up(proj):
    proj.write("conf/a.txt", "A\n")
    proj.write("conf/sub/b.txt", "B\n")
    proj.write("s.sh", "echo s\n")
    proj.devfile(
        one_machine(
            '{ type = "file", source = "conf", destination = "/etc/app" }',
            '{ type = "shell", script = "s.sh" }',
        )
    )
    proj.project().up()
    files = proj.driver.by_name("dev")["files"]
    assert files == {"/etc/app/a.txt": "A\n", "/etc/app/sub/b.txt": "B\n"}


def test_halt_up_destroy(proj, capsys):
    proj.devfile(one_machine('{ type = "shell", inline = "echo once" }'))
    proj.project().up()
    proj.project().halt()
    [st] = proj.project().status()
    assert st.state is MachineState.STOPPED
    capsys.readouterr()

    proj.project().up()
    assert "starting" in capsys.readouterr().err
    [st] = proj.project().status()
    assert st.state is MachineState.RUNNING
    assert ran(proj.driver, "dev", "echo once") == 1
    assert len(GlobalIndex().entries()) == 1

    proj.project().destroy()
    [st] = proj.project().status()
    assert st.state is MachineState.NOT_CREATED
    assert not proj.state_file("dev").exists()
    assert proj.driver.machines == {}
    assert GlobalIndex().entries() == []


def test_machine_found_by_labels_when_devenv_folder_is_lost(proj, capsys):
    proj.devfile(one_machine('{ type = "shell", inline = "echo once" }'))
    proj.project().up()
    handle = proj.project().status()[0].handle
    shutil.rmtree(proj.root / ".devenv")
    capsys.readouterr()
    proj.project().up()
    assert "already running" in capsys.readouterr().err
    assert list(proj.driver.machines) == [handle]


@pytest.mark.parametrize("op", ["create", "start"])
def test_failed_create_or_start_leaves_nothing_behind(proj, op):
    proj.devfile(one_machine('{ type = "shell", inline = "echo once" }'))
    proj.driver.fail_on(op, "error")
    with pytest.raises(BoxError):
        proj.project().up()
    assert ["create", "dev"] in proj.driver.log  # it did exist for a moment
    assert proj.driver.machines == {}
    assert not proj.state_file("dev").exists()
    assert GlobalIndex().entries() == []
    # ... and the next up starts from scratch.
    proj.project().up()
    assert proj.driver.by_name("dev")["state"] == "running"


@pytest.mark.parametrize("op", ["create", "start"])
def test_interrupt_while_creating_removes_the_machine(proj, op):
    proj.devfile(one_machine('{ type = "shell", inline = "echo once" }'))
    proj.driver.fail_on(op, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        proj.project().up()
    assert proj.driver.machines == {}
    assert not proj.state_file("dev").exists()
    assert GlobalIndex().entries() == []


def test_fake_engine_state_outlives_the_driver_instance(proj):
    proj.devfile(one_machine('{ type = "shell", inline = "echo once" }'))
    proj.project().up()
    other = FakeDriver(proj.driver.path)  # what another process would see
    assert other.by_name("dev")["state"] == "running"
    assert other.runs("dev") == proj.driver.runs("dev")


def test_failed_copy_is_a_failed_step(proj):
    proj.write("conf.txt", "x\n")
    proj.devfile(
        one_machine(
            '{ type = "shell", inline = "echo step-zero" }',
            '{ type = "file", source = "conf.txt", destination = "/proc/conf.txt" }',
        )
    )
    with pytest.raises(ProvisionError, match="read-only file system") as info:
        proj.project().up()
    assert info.value.exit_code == 5
    [st] = proj.project().status()
    assert st.state is MachineState.RUNNING
    assert st.stale_step == 1 and st.provision == "failed"
