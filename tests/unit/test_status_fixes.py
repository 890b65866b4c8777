"""Status says what to run, always steps included, and a failing step's message stays one line."""

from __future__ import annotations

from tests.unit.test_project import one_machine


def test_status_json_action_names_provision_for_a_stale_step(proj):
    proj.devfile(one_machine('{ type = "shell", inline = "echo a" }'))
    assert proj.cli("up").exit_code == 0
    assert proj.status()["dev"]["action"] is None
    proj.devfile(one_machine('{ type = "shell", inline = "echo a" }', '{ type = "shell", inline = "echo b" }'))
    st = proj.status()["dev"]
    assert st["provision"].startswith("stale: step [1]") and "devenv provision dev" in st["provision"]
    assert st["action"] == "provision"  # the text and the JSON name the same command


def test_status_json_action_names_provision_after_a_failed_step(proj):
    proj.devfile(one_machine('{ type = "shell", inline = "exit 4" }'))
    assert proj.cli("up").exit_code == 5
    st = proj.status()["dev"]
    assert st["provision"].startswith("failed at step [0]") and st["action"] == "provision"


def test_a_new_always_step_on_a_running_machine_shows_as_stale(proj):
    once = '{ type = "shell", inline = "echo once" }'
    always = '{ type = "shell", inline = "echo every-time", run = "always" }'
    proj.devfile(one_machine(once))
    assert proj.cli("up").exit_code == 0
    proj.devfile(one_machine(once, always))
    st = proj.status()["dev"]
    assert st["stale_step"] == 1 and "not applied yet" in st["provision"] and st["action"] == "provision"
    assert proj.cli("provision").exit_code == 0
    st = proj.status()["dev"]
    assert st["provision"] == "up to date" and st["action"] is None  # it ran: rerunning on up is its nature
    # Edited, it is stale again (changed), like a once step.
    proj.devfile(one_machine(once, always.replace("every-time", "each-time")))
    st = proj.status()["dev"]
    assert st["stale_step"] == 1 and "changed" in st["provision"]


def test_a_failing_inline_step_is_named_by_its_first_line_only(proj):
    script = '"""\necho starting\necho the-second-line-of-the-script\nexit 3\n"""'
    proj.devfile(one_machine(f'{{ type = "shell", inline = {script} }}'))
    r = proj.cli("up")
    assert r.exit_code == 5
    first = next(ln for ln in r.stderr.splitlines() if ln.startswith("error:"))
    assert first.endswith("shell step failed with exit code 3: echo starting ...")
    assert "the-second-line-of-the-script" not in first
    assert "--- last output ---" in r.stderr  # what the script printed still shows below


def test_a_step_that_meets_no_init_gets_a_warning_naming_init_systemd(proj):
    said = "System has not been booted with systemd as init system (PID 1). Can't operate."
    proj.devfile(one_machine(f'{{ type = "shell", inline = "echo {said}" }}'))
    r = proj.cli("up")
    assert r.exit_code == 0  # the step itself passed: the warning is what keeps it from being silent
    warning = next(ln for ln in r.stderr.splitlines() if ln.startswith("warning:"))
    assert "dev: step [0]" in warning and "runs no init system" in warning
    assert 'init = "systemd" in [machines.dev.docker]' in warning


def test_a_step_without_signs_of_a_missing_init_gets_no_warning(proj):
    proj.devfile(one_machine('{ type = "shell", inline = "echo systemd is fine here" }'))
    r = proj.cli("up")
    assert r.exit_code == 0 and "warning:" not in r.stderr
