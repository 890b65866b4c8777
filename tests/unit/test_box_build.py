"""Box building drives a driver through the contract only (devenv.boxes.builders).

The fake engine below is tests.unit.fakes.FakeDriver plus the two roles a build uses: Package
(it records what it was asked to store) and BoxSources (base images by name). Whatever a step
or the engine does, the build machine goes, and only a machine whose every step passed is stored.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from devenv.boxes import builders
from devenv.boxes.builders import docker as docker_builder
from devenv.contract import BoxArtifact, BuildTarget, Event, Features, MachineState, Reporter, supports
from devenv.errors import BoxError
from devenv.model.recipe import load_recipe
from devenv.pkgcache import guest
from tests.unit.fakes import FakeDriver

STEPS = """\
provision = [
  { type = "shell", inline = "echo one" },
  { type = "shell", inline = "echo two" },
]
"""


class BuildingFake(FakeDriver):
    """A fake engine that can store a build machine as a box and has base images."""

    features = Features(package=True, box_sources=True)

    def __init__(self, images=(), name: str = "fake") -> None:
        super().__init__()
        self.name = name
        self.images = set(images)
        self.packaged: list[dict] = []
        self.image_calls: list[tuple[str, str]] = []

    def package(self, handle, target, name, version, baked, *, record=None) -> dict:
        m = self.machines[handle]
        self.packaged.append(
            {
                "target": target,
                "name": name,
                "version": version,
                "baked": baked,
                "record": dict(record or {}),
                "state": m["state"],
                "labels": m["labels"],
                "box": m["box"],
            }
        )
        self.images.add(f"devenv-box/{name}:{version}")
        return {"provider": "fake", "ref": f"devenv-box/{name}:{version}", "digest": "sha256:" + "f" * 64}

    def has_image(self, ref: str) -> bool:
        return ref in self.images

    def pull_image(self, ref: str, machine=None) -> None:
        self.image_calls.append(("pull", ref))
        self.images.add(ref)

    def import_rootfs(self, tar: Path, ref: str) -> None:
        self.image_calls.append(("import", ref))
        self.images.add(ref)

    def remove_image(self, ref: str) -> None:
        self.image_calls.append(("remove", ref))
        self.images.discard(ref)


def recipe(root: Path, *, sources: str = '[{ type = "image", image = "base:1" }]', steps: str = STEPS):
    (root / "boxes").mkdir(parents=True, exist_ok=True)
    path = root / "boxes" / "t.toml"
    path.write_text(f'name = "t"\nversion = "1"\nsources = {sources}\n' + steps)
    return load_recipe(path)


def bake(driver, r, tmp_path, events, **kw):
    return builders.bake(
        driver,
        r,
        BoxArtifact("base:1", None, "base:1"),
        target=builders.build_target(r, driver.name, tmp_path / "build"),
        label="box t",
        reporter=Reporter(events.append),
        **kw,
    )


def kinds(events: list[Event]) -> list[tuple[str, str | None]]:
    return [(e.kind, e.phase) for e in events]


def test_the_steps_run_in_order_in_a_build_machine_that_package_stores_and_then_goes(tmp_path):
    d, events, r = BuildingFake(), [], recipe(tmp_path)
    assert supports(d, "package") and supports(d, "box_sources")

    result = bake(d, r, tmp_path, events, record={"origin": r.origin})

    assert result["ref"] == "devenv-box/t:1"
    [stored] = d.packaged
    assert stored["name"] == "t" and stored["version"] == "1"
    assert stored["baked"] == builders.baked_fingerprints(r) and len(stored["baked"]) == 2
    assert stored["record"] == {"origin": r.origin}
    assert stored["state"] == str(MachineState.STOPPED)  # stopped before it is stored
    assert isinstance(stored["target"], BuildTarget) and stored["labels"] == {}  # nothing of the build leaks
    assert stored["box"] == "base:1"
    # The lifecycle in order, each step once and in recipe order, then the machine is gone.
    ops = [entry[0] for entry in d.log]
    # The last run takes the package cache's apt setting out of the machine (always, before the stop).
    assert ops == ["create", "start", "run", "run", "run", "stop", "destroy"]
    runs = [entry[2] for entry in d.log if entry[0] == "run"]
    assert "echo one" in runs[0] and "echo two" in runs[1]
    assert guest.REMOVE in runs[2]
    assert d.machines == {}
    # Reported, not printed: one bake phase per step (in order), the steps' output lines.
    bakes = [e for e in events if e.kind == "phase"]
    assert [(e.phase, e.data["step"], e.machine) for e in bakes] == [("bake", 0, "box t"), ("bake", 1, "box t")]
    assert [e.text for e in events if e.kind == "output"] == ["one", "two"]


def test_a_failing_step_stores_nothing_and_the_build_machine_still_goes(tmp_path):
    steps = 'provision = [\n  { type = "shell", inline = "echo one" },\n  { type = "shell", inline = "exit 3" },\n'
    steps += '  { type = "shell", inline = "echo never" },\n]\n'
    d, events, r = BuildingFake(), [], recipe(tmp_path, steps=steps)
    with pytest.raises(BoxError, match=r"baked step \[1\] .* failed; nothing was stored"):
        bake(d, r, tmp_path, events)
    assert d.packaged == []
    assert d.machines == {} and d.log[-1][0] == "destroy"
    assert not any("echo never" in entry[-1] for entry in d.log if entry[0] == "run")
    assert [e.data["step"] for e in events if (e.kind, e.phase) == ("phase", "bake")] == [0, 1]


@pytest.mark.parametrize("op", ["create", "start"])
def test_an_engine_failure_while_making_the_build_machine_leaves_none(tmp_path, op):
    d, events, r = BuildingFake(), [], recipe(tmp_path)
    d.fail_on(op)  # create fails after the machine exists on the fake engine: found by name, removed
    with pytest.raises(BoxError, match=f"fake engine: {op} failed"):
        bake(d, r, tmp_path, events)
    assert d.packaged == [] and d.machines == {}


def test_an_interrupt_mid_bake_removes_the_build_machine(tmp_path, monkeypatch):
    d, events, r = BuildingFake(), [], recipe(tmp_path)

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr("devenv.provisioners.run_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bake(d, r, tmp_path, events)
    assert d.packaged == [] and d.machines == {}


def test_slow_boots_are_progress_and_a_finish_command_runs_after_the_steps(tmp_path):
    d, events, r = BuildingFake(), [], recipe(tmp_path)
    bake(d, r, tmp_path, events, boot="booting", finish=["/bin/sh", "-c", "echo scrub"])
    assert kinds(events)[:2] == [("begin", "build"), ("end", "build")]  # create + start, as progress
    runs = [entry[2] for entry in d.log if entry[0] == "run"]
    assert len(runs) == 4 and guest.REMOVE in runs[2] and "echo scrub" in runs[-1]


def test_a_driver_without_package_cannot_bake(tmp_path):
    d = FakeDriver()
    with pytest.raises(BoxError, match="no package role"):
        bake(d, recipe(tmp_path), tmp_path, [])
    assert d.machines == {}


# -- the docker builder: a base image through BoxSources, then the same bake ----------------------


def test_the_first_source_on_the_engine_is_the_base(tmp_path):
    sources = '[{ type = "image", image = "absent:1" }, { type = "image", image = "base:1" }]'
    d, events, r = BuildingFake(images={"base:1"}), [], recipe(tmp_path, sources=sources)
    result = docker_builder.build(r, d, reporter=Reporter(events.append))
    assert result["ref"] == "devenv-box/t:1"
    [stored] = d.packaged
    assert stored["box"] == "base:1" and stored["record"] == {"origin": r.origin}
    assert d.image_calls == []  # nothing pulled without --pull, nothing temporary to remove
    assert d.machines == {}


def test_a_base_image_is_pulled_only_when_allowed(tmp_path):
    d, r = BuildingFake(), recipe(tmp_path)
    with pytest.raises(BoxError, match="could not be built from any of its sources") as exc:
        docker_builder.build(r, d)
    assert "pull with --pull" in exc.value.message and d.packaged == [] and d.log == []
    docker_builder.build(r, d, pull=True)
    assert d.image_calls == [("pull", "base:1")] and len(d.packaged) == 1


def test_a_rootfs_source_is_imported_as_a_temporary_base_that_goes(tmp_path, monkeypatch):
    from devenv.boxes import rootfs

    monkeypatch.setattr(rootfs, "build_busybox_rootfs", lambda root: (root / "bin").mkdir())
    monkeypatch.setattr(rootfs, "make_tar", lambda root, tar: tar.write_bytes(b"tar"))
    d, events = BuildingFake(), []
    r = recipe(tmp_path, sources='[{ type = "busybox" }]')
    docker_builder.build(r, d, reporter=Reporter(events.append))
    temp = "devenv-box/t:1-base"
    assert d.image_calls == [("import", temp), ("remove", temp)]
    assert d.packaged[0]["box"] == temp and temp not in d.images
    assert kinds(events)[:2] == [("begin", "build"), ("end", "build")]


def test_the_temporary_base_goes_when_a_step_fails(tmp_path, monkeypatch):
    from devenv.boxes import rootfs

    monkeypatch.setattr(rootfs, "build_busybox_rootfs", lambda root: None)
    monkeypatch.setattr(rootfs, "make_tar", lambda root, tar: tar.write_bytes(b"tar"))
    d = BuildingFake()
    r = recipe(tmp_path, sources='[{ type = "busybox" }]', steps='provision = [{ type = "shell", inline = "false" }]\n')
    with pytest.raises(BoxError, match="nothing was stored"):
        docker_builder.build(r, d)
    assert d.image_calls[-1] == ("remove", "devenv-box/t:1-base") and d.machines == {} and d.packaged == []


# -- ensure_built: `up` asks the box subsystem before the driver looks the box up ----------------


def _target(tmp_path: Path, box: str):
    from devenv.contract import Target
    from devenv.model.devfile import Machine

    m = Machine(name="web", driver="docker", box=box, cpus=None, memory=None, hostname="web", env={})
    return Target("p1", tmp_path, m)


def test_ensure_built_builds_a_missing_box_once(tmp_path):
    d, events = BuildingFake(images={"base:1"}, name="docker"), []
    recipe(tmp_path)
    target = _target(tmp_path, "t")
    builders.ensure_built("t", d, target, Reporter(events.append))
    assert len(d.packaged) == 1
    assert {e.machine for e in events if e.phase == "bake"} == {"web"}  # reported under the machine
    builders.ensure_built("t", d, target, Reporter(events.append))  # built now: nothing to do
    builders.ensure_built("t@1", d, target)
    assert len(d.packaged) == 1


@pytest.mark.parametrize("box", ["docker:base:1", "t@2", "unknown-box"])
def test_ensure_built_leaves_what_it_has_no_recipe_for_to_prepare_box(tmp_path, box):
    d = BuildingFake(images={"base:1"}, name="docker")
    recipe(tmp_path)
    builders.ensure_built(box, d, _target(tmp_path, box))
    assert d.packaged == [] and d.log == []


def test_ensure_built_does_nothing_for_a_driver_no_builder_serves(tmp_path):
    d = BuildingFake(images={"base:1"})  # named "fake"
    recipe(tmp_path)
    builders.ensure_built("t", d, _target(tmp_path, "t"))
    assert d.log == []


def test_box_build_reports_the_notice_before_it_checks_the_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "home"))
    steps = textwrap.dedent(
        """\
        provision = [{ type = "ansible", playbook = "site.yml" }]
        """
    )
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    recipe(tmp_path, steps=steps)
    events: list[Event] = []
    from devenv.errors import UsageError

    with pytest.raises(UsageError, match="has no 'vagrant' output"):
        builders.build_box("t", tmp_path, outputs=["vagrant"], reporter=Reporter(events.append))
    assert [e.kind for e in events] == ["warning"]
