"""The command line, in-process with typer's CliRunner, against the fake driver: output and exit codes."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from devenv.cli.app import app

DEVFILE = """
    [defaults]
    driver = "fake"
    box = "fake-box"

    [machines.db]
    provision = [{ type = "shell", inline = "echo db-step" }]

    [machines.web]
    depends_on = ["db"]
    provision = [
        { type = "shell", inline = "echo web-zero" },
        { type = "shell", script = "setup.sh" },
        { type = "shell", inline = "echo web-two" },
    ]
"""


def setup(proj, script: str = "echo setup-v1\n"):
    proj.write("setup.sh", script)
    proj.devfile(DEVFILE)


def count(proj, name: str, text: str) -> int:
    return sum(text in r and "rm -f" not in r for r in proj.driver.runs(name))


def test_up_then_status_json(proj):
    setup(proj)
    r = proj.cli("up")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # progress goes to stderr
    rows = json.loads(proj.cli("status", "--json").stdout)
    assert isinstance(rows, list) and [row["name"] for row in rows] == ["db", "web"]
    for row in rows:
        assert row["driver"] == "fake"
        assert row["state"] == "running"
        assert row["provision"] == "up to date"
        assert row["stale_step"] is None


def test_second_up_says_already_running_and_does_not_reprovision(proj):
    setup(proj)
    assert proj.cli("up").exit_code == 0
    r = proj.cli("up")
    assert r.exit_code == 0, r.output
    assert "==> web: already running" in r.stderr
    assert "provisioning is up to date" in r.stderr
    assert count(proj, "web", "echo web-zero") == 1
    assert count(proj, "db", "echo db-step") == 1


def test_changed_script_is_stale_and_provision_reruns_from_it(proj):
    setup(proj)
    proj.cli("up")
    proj.write("setup.sh", "echo setup-v2\n")
    web = proj.status()["web"]
    assert web["provision"].startswith("stale: step [1]")
    assert web["stale_step"] == 1
    assert proj.status()["db"]["provision"] == "up to date"

    r = proj.cli("provision")
    assert r.exit_code == 0, r.output
    assert count(proj, "web", "echo web-zero") == 1
    assert count(proj, "web", "setup.sh") == 2
    assert count(proj, "web", "echo web-two") == 2
    assert count(proj, "db", "echo db-step") == 1
    assert proj.status()["web"]["provision"] == "up to date"


def test_failing_step_exits_5_and_provision_resumes_at_it(proj):
    setup(proj, "echo preparing\necho broken-thing happened\nexit 3\n")
    r = proj.cli("up")
    assert r.exit_code == 5, r.output
    error = r.stderr.split("error: ", 1)[1]
    assert "setup.sh" in error and "exit code 3" in error
    assert "broken-thing happened" in error.split("--- last output ---", 1)[1]
    assert "devenv provision web" in error  # the hint says how to resume
    assert count(proj, "web", "echo web-two") == 0
    web = proj.status()["web"]
    assert web["state"] == "running"
    assert web["stale_step"] == 1

    proj.write("setup.sh", "echo fixed\n")
    r = proj.cli("provision", "web")
    assert r.exit_code == 0, r.output
    assert count(proj, "web", "echo web-zero") == 1
    assert count(proj, "web", "setup.sh") == 2
    assert count(proj, "web", "echo web-two") == 1
    assert proj.status()["web"]["provision"] == "up to date"


def test_halt_up_destroy_without_tty(proj):
    setup(proj)
    proj.cli("up")
    r = proj.cli("halt")
    assert r.exit_code == 0, r.output
    assert {m["state"] for m in proj.status().values()} == {"stopped"}
    r = proj.cli("up")
    assert r.exit_code == 0, r.output
    assert {m["state"] for m in proj.status().values()} == {"running"}

    r = proj.cli("destroy")  # stdin is not a TTY: no question asked
    assert r.exit_code == 0, r.output
    rows = proj.status()
    assert {m["state"] for m in rows.values()} == {"not created"}
    assert {m["provision"] for m in rows.values()} == {"not created"}
    assert not proj.state_file("web").exists() and not proj.state_file("db").exists()
    assert proj.driver.machines == {}


def test_unknown_machine_exits_2_with_suggestion(proj):
    setup(proj)
    r = proj.cli("status", "wbe")
    assert r.exit_code == 2
    assert "did you mean 'web'" in r.stderr


def test_ssh_command_exit_code_and_output(proj):
    setup(proj)
    proj.cli("up")
    r = proj.cli("ssh", "web", "-c", "exit 7")
    assert r.exit_code == 7
    r = proj.cli("ssh", "web", "-c", "echo hello from web")
    assert r.exit_code == 0 and r.stdout == "hello from web\n"


def test_exec(proj):
    setup(proj)
    proj.cli("up")
    r = proj.cli("exec", "web", "--", "true")
    assert r.exit_code == 0, r.output
    assert proj.driver.runs("web")[-1] == "true"
    assert proj.cli("exec", "web", "--", "false").exit_code == 1
    r = proj.cli("exec", "web", "--", "echo", "-n", "x")
    assert r.stdout == "-n x\n"


def test_exec_on_a_stopped_machine_exits_4(proj):
    setup(proj)
    proj.cli("up")
    proj.cli("halt", "web")
    r = proj.cli("exec", "web", "--", "true")
    assert r.exit_code == 4
    assert "devenv up web" in r.stderr


def test_interrupt_during_start_exits_130_and_removes_the_machine(proj):
    setup(proj)
    proj.driver.fail_on("start", "interrupt")
    r = proj.cli("up", "db")
    assert r.exit_code == 130, r.output
    assert "interrupted" in r.stderr
    assert proj.driver.machines == {}
    assert not proj.state_file("db").exists()
    assert proj.status()["db"]["state"] == "not created"


def test_failed_create_leaves_nothing(proj):
    setup(proj)
    proj.driver.fail_on("create", "error")
    r = proj.cli("up", "db")
    assert r.exit_code == 7, r.output  # BoxError
    assert "removing the machine that failed to come up" in r.stderr
    assert proj.driver.machines == {}
    assert not proj.state_file("db").exists()
    assert json.loads(proj.cli("global-status", "--json").stdout) == []


def test_global_status_lists_and_prunes_deleted_projects(proj):
    setup(proj)
    proj.cli("up", "db")
    r = proj.cli("global-status", "--json")
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.stdout)
    assert row["machine"] == "db" and row["driver"] == "fake" and row["state"] == "running"
    assert row["root"] == str(proj.root)

    r = proj.cli("global-status", "--json", "--prune")  # nothing gone yet: nothing pruned
    assert len(json.loads(r.stdout)) == 1

    devfile = proj.root / "Devfile"
    shutil.rmtree(proj.root)
    # The project folder is gone, so no -f Devfile: global-status does not need one.
    r = CliRunner().invoke(app, ["global-status", "--json", "--prune"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == []
    assert "project folder gone" in r.stderr
    r = CliRunner().invoke(app, ["global-status", "--json"])
    assert json.loads(r.stdout) == []
    assert not devfile.exists()


def test_corrupt_state_file_fails_status_but_not_destroy(proj):
    setup(proj)
    proj.cli("up", "db")
    bad = proj.state_file("db")
    bad.write_text("{ not json")
    r = proj.cli("status")
    assert r.exit_code == 8
    assert str(bad) in r.stderr

    r = proj.cli("destroy", "-f")
    assert r.exit_code == 0, r.output
    assert proj.driver.machines == {}
    assert not bad.exists()
    assert proj.status()["db"]["state"] == "not created"


def test_ssh_and_port_name_is_optional_only_with_one_machine(proj):
    setup(proj)
    assert proj.cli("up").exit_code == 0
    r = proj.cli("ssh", "-c", "echo hi")
    assert r.exit_code == 2
    assert "which machine? this project has 2: db, web" in r.stderr
    proj.devfile('[machines.solo]\ndriver = "fake"\nbox = "fake-box"\n')
    assert proj.cli("up").exit_code == 0
    r = proj.cli("ssh", "-c", "exit 4")
    assert r.exit_code == 4, r.output
    assert proj.cli("port").exit_code == 0


def _names(typer_app) -> set[str]:
    import typer

    cmd = typer.main.get_command(typer_app)
    return set(cmd.commands)


def test_app_for_builds_only_the_command_that_runs():
    from devenv.cli.app import app_for

    every = _names(app)
    assert {"up", "status", "exec", "global-status", "ssh-config", "box", "snapshot"} <= every
    for name in every:
        # Every command and group is found by the name users type, global options before it or not.
        assert _names(app_for([name])) == {name}
        assert _names(app_for(["-f", "Devfile", "--debug", name, "--json"])) == {name}
        assert _names(app_for(["--file", "x", "-q", name])) == {name}
    # Help, version, typos and nothing at all: the full app, so help and suggestions stay whole.
    for argv in ([], ["--help"], ["-h"], ["--version"], ["stauts"], ["-f", "Devfile"], ["--", "up"]):
        assert app_for(argv) is app


def test_slim_app_reads_like_the_full_one(proj):
    from devenv.cli.app import app_for

    setup(proj)
    for argv in (["status", "--help"], ["box", "--help"], ["box", "list", "--help"], ["up", "--nope"]):
        full = CliRunner().invoke(app, argv)
        slim = CliRunner().invoke(app_for(argv), argv)
        assert (slim.exit_code, slim.output) == (full.exit_code, full.output)
    r = CliRunner().invoke(app, ["stauts"])
    assert r.exit_code == 2 and r.output.count("Did you mean 'status'?") == 1


def test_reader_gone_stops_quietly(tmp_path):
    """`devenv schema | head -1`: a closed pipe is no internal error, just exit 141 like SIGPIPE."""
    import os
    import subprocess
    import sys

    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # the reader has gone before devenv writes
    try:
        p = subprocess.run(
            [sys.executable, "-m", "devenv", "schema"], stdout=w_fd, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )
    finally:
        os.close(w_fd)
    assert (p.returncode, p.stderr) == (141, "")
