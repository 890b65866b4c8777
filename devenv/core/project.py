"""A Project is a Devfile plus its .devenv/ state and lock; the verbs live here.

Verbs talk to drivers only through the Driver protocol and to machines only through
transports; the CLI only parses arguments and prints.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.contract import (
    QUIET,
    ApplySettings,
    BoxArtifact,
    CopySync,
    Driver,
    Event,
    MachineState,
    Networks,
    OutputFn,
    Ownership,
    Package,
    Reporter,
    Snapshots,
    Suspend,
    Target,
    role,
)
from devenv.core.plan import StepPlan, identity_hash, plan_steps, settings_hash
from devenv.errors import (
    BoxError,
    DevenvError,
    MachineStateError,
    ProvisionError,
    UnsupportedOperation,
    UsageError,
)
from devenv.masking import add_secret
from devenv.model.devfile import Devfile, Machine, Secret, check_sync_at_use
from devenv.model.schema import did_you_mean
from devenv.plugins import get_driver
from devenv.provisioners import run_step
from devenv.state import GlobalIndex, ProjectState

if TYPE_CHECKING:
    from devenv.core.status import MachineStatus, StaleStep


# `devenv ssh -c CMD` runs CMD with bash where the box has it (as `vagrant ssh -c` does: scripts
# use /dev/tcp, [[ ]], arrays), else with sh. CMD is $0 of the wrapper, never spliced into it.
SSH_C_SHELL = 'if command -v bash >/dev/null 2>&1; then exec bash -c "$0"; fi; exec /bin/sh -c "$0"'


# What a step prints when the machine runs no init system: services it installs or enables do
# not run (and Debian's invoke-rc.d says so without failing the step).
_NO_INIT = re.compile(
    r"systemctl: (command )?not found|System has not been booted with systemd|invoke-rc\.d: No init system"
    r"|Failed to find required executable systemctl|Failed to connect to bus: Host is down"
    r"|Running in chroot, ignoring (command|request)"
)


class NoInitSigns:
    """Watches a step's output for signs that the machine has no init, to say so after the step
    (never a silent success: a step that only installs a daemon passes, and nothing runs it)."""

    def __init__(self, reporter: Reporter) -> None:
        self.outer = reporter
        self.seen: str | None = None
        self.reporter = Reporter(self._see, debug=reporter.debug_enabled)

    def _see(self, event: Event) -> None:
        if self.seen is None and event.kind == "output" and _NO_INIT.search(event.text):
            self.seen = event.text.strip()
        self.outer.emit(event)

    def warn(self, machine: str, step: str) -> None:
        if self.seen is not None:
            self.outer.warn(
                f"{machine}: step {step}: the machine runs no init system, so services it installs or "
                f"enables are not running (it said: {self.seen[:160]}); a container boots systemd with "
                f'init = "systemd" in [machines.{machine}.docker], on a box that has systemd (debian-12)'
            )


@dataclass(frozen=True)
class BoxChoice:
    """How one `up` picks boxes: `--box REF` for the machines it names, and `--frozen`."""

    override: str | None = None
    names: frozenset[str] = frozenset()
    frozen: bool = False

    def box_for(self, name: str) -> str | None:
        return self.override if self.override and name in self.names else None


NO_CHOICE = BoxChoice()


def resolve_env(machine: Machine, root: Path) -> dict[str, str]:
    """The machine's environment with secrets read from the host (and masked in all output)."""
    out: dict[str, str] = {}
    for k, v in machine.env.items():
        if isinstance(v, Secret):
            try:
                value = v.read(root)
            except KeyError:
                raise UsageError(
                    f"machine '{machine.name}': env {k} comes from the host variable {v.from_env}, which is not set",
                    hint=f"export {v.from_env}=... before running devenv",
                ) from None
            except OSError as exc:
                raise UsageError(
                    f"machine '{machine.name}': env {k} comes from {v.from_file}, which cannot be read: {exc.strerror}"
                ) from exc
            add_secret(value)
            out[k] = value
        else:
            out[k] = v
    return out


def boxes_differ(name: str, version: str | None, ref: str) -> bool:
    from devenv.boxes.store import parse_ref

    r = parse_ref(ref)
    wanted = str(r) if r.kind == "image" else r.name
    return wanted != name or (r.version is not None and r.version != version)


class Project:
    def __init__(self, devfile: Devfile, reporter: Reporter = QUIET) -> None:
        self.devfile = devfile
        self.reporter = reporter  # every part this project uses reports through it; the CLI renders
        self.root = devfile.root
        self.state = ProjectState(self.root, reporter)
        self.index = GlobalIndex(reporter=reporter)
        self._box_locks: dict[str, threading.Lock] = {}
        self._box_locks_guard = threading.Lock()
        self._created_now: dict[str, str] = {}  # machines this command created: name -> handle
        self._distrusted: set[str] = set()  # machines whose recorded handle was refused (warned once)
        self._created_guard = threading.Lock()
        self._cancel = threading.Event()  # set on Ctrl-C: workers stop at the next safe point
        from devenv.boxes.lockfile import Lockfile

        self.lock = Lockfile(devfile.path)
        from devenv.pkgcache.use import CacheUse

        self.cache = CacheUse(reporter, enabled=devfile.package_cache)
        self._mask_secrets()

    def _mask_secrets(self) -> None:
        """Know every secret value up front, so no command prints one (the machine's output included)."""
        for m in self.devfile.machines.values():
            for v in m.env.values():
                if isinstance(v, Secret):
                    try:
                        add_secret(v.read(self.root))
                    except (KeyError, OSError):
                        pass  # reported by the command that needs the value

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise KeyboardInterrupt

    # -- helpers -------------------------------------------------------------------------------
    def names(self, names: list[str] | None) -> list[str]:
        for n in names or []:
            if n not in self.devfile.machines:
                raise UsageError(
                    f"no machine named '{n}' in {self.devfile.path.name}{did_you_mean(n, self.devfile.machines)}",
                    hint=f"machines: {', '.join(self.devfile.machines) or '(none)'}",
                )
        return list(names) if names else list(self.devfile.machines)

    def only_machine(self, name: str | None, verb: str) -> str:
        """The named machine, or the only one; like `vagrant ssh` in a single-machine project."""
        if name is not None:
            self.names([name])
            return name
        if len(self.devfile.machines) == 1:
            return next(iter(self.devfile.machines))
        raise UsageError(
            f"which machine? this project has {len(self.devfile.machines)}: {', '.join(self.devfile.machines)}",
            hint=f"devenv {verb} NAME",
        )

    def machine(self, name: str) -> Machine:
        self.names([name])
        return self.devfile.machines[name]

    def target(self, name: str, box: str | None = None) -> Target:
        """The machine as its driver sees it; ``box`` replaces the Devfile's (`up --box`)."""
        m = self.devfile.machines[name]
        if box:
            import dataclasses

            m = dataclasses.replace(m, box=box)
        return Target(self.devfile.project_id, self.root, m)

    def driver(self, name: str) -> Driver:
        driver = get_driver(self.devfile.machines[name].driver)
        driver.reporter = self.reporter
        return driver

    def handle(self, name: str, *, tolerant: bool = False) -> str | None:
        """The machine's engine handle: from state when the engine confirms it, else by its labels.

        .devenv/ is not trusted (a repository may commit one, a stale one may name a machine
        that was replaced): a recorded handle is used only when the driver says the engine
        object carries this project's id and this machine's name. Every verb resolves its
        machine here, so nothing else ever reaches, changes or removes a foreign object."""
        st = self.state.load_or_none(name) if tolerant else self.state.load(name)
        driver = self.driver(name)
        target = self.target(name)
        recorded = st.get("handle") if st and st.get("driver") == driver.name else None
        if recorded:
            owner = driver.owns(recorded, target)
            if owner is Ownership.OURS:
                return recorded
            if owner is Ownership.FOREIGN and name not in self._distrusted:
                self._distrusted.add(name)
                self.reporter.warn(
                    f"{name}: {self.state.machine_file(name)} names {json.dumps(recorded[:100])}, which is not this "
                    f"project's machine '{name}' (it lacks this project's labels): ignoring it and finding "
                    "the machine by its labels"
                )
        return driver.find(target)

    def live_state(self, name: str) -> tuple[str | None, MachineState]:
        h = self.handle(name)
        if h is None:
            return None, MachineState.NOT_CREATED
        return h, self.driver(name).state(h)

    def require_running(self, name: str) -> str:
        h, st = self.live_state(name)
        if st is MachineState.NOT_CREATED:
            raise MachineStateError(f"machine '{name}' is not created", hint=f"run `devenv up {name}`")
        if st is not MachineState.RUNNING:
            raise MachineStateError(f"machine '{name}' is {st}", hint=f"run `devenv up {name}`")
        assert h is not None
        return h

    def _run_levels(self, levels: list[list[str]], fn: Callable[[str], None]) -> None:
        """Run fn per machine, level by level; machines within a level in parallel."""
        for level in levels:
            if len(level) == 1:
                fn(level[0])
                continue
            from concurrent.futures import ThreadPoolExecutor  # here: it imports logging, ~3 ms

            errors: list[BaseException] = []
            with ThreadPoolExecutor(max_workers=min(8, len(level))) as pool:
                futures = [pool.submit(fn, n) for n in level]
                try:
                    for f in futures:
                        exc = f.exception()
                        if exc is not None:
                            errors.append(exc)
                except KeyboardInterrupt:
                    # Only the main thread sees Ctrl-C: tell the workers, let them clean up, re-raise.
                    self._cancel.set()
                    raise
            if errors:
                for e in errors[1:]:
                    if isinstance(e, DevenvError):
                        # The first error is raised; the others would be lost: report them as well.
                        self.reporter.error(e.message, e.hint)
                raise errors[0]

    def _box_lock(self, box: str) -> threading.Lock:
        with self._box_locks_guard:
            return self._box_locks.setdefault(box, threading.Lock())

    # -- up --------------------------------------------------------------------------------------
    def up(
        self, names: list[str] | None = None, *, provision: bool = True, box: str | None = None, frozen: bool = False
    ) -> None:
        wanted = self.names(names)
        # `up --box REF`: boot exactly this artifact (e.g. the production box) for these machines.
        choice = BoxChoice(box, frozenset(wanted) if box else frozenset(), frozen)
        self._preflight(self.devfile.levels(wanted))
        with self.state.lock("up"):
            try:
                self._run_levels(
                    self.devfile.levels(wanted), lambda n: self._up_one(n, provision=provision, choice=choice)
                )
            except KeyboardInterrupt:
                self._undo_created()
                raise
            finally:
                self.cache.close()

    def _preflight(self, levels: list[list[str]]) -> None:
        """Host checks that change nothing, for every machine, before the lock or any file is written."""
        for level in levels:
            for n in level:
                driver = self.driver(n)
                driver.check_available(self.devfile.machines[n])
                driver.preflight(self.target(n))

    def _undo_created(self) -> None:
        with self._created_guard:
            created = dict(self._created_now)
        for name, handle in created.items():
            self.reporter.info(name, "interrupted: removing the machine being created")
            try:
                self.driver(name).destroy(handle)
            finally:
                self.state.remove(name)
                self.index.forget(self.devfile.project_id, name)

    def _up_one(self, name: str, *, provision: bool, choice: BoxChoice = NO_CHOICE) -> None:
        driver = self.driver(name)
        driver.check_available(self.devfile.machines[name])
        override = choice.box_for(name)
        target = self.target(name, override)
        check_sync_at_use(target.machine, self.root)  # the engine follows links when it mounts at start
        st = self.state.load(name) or {}
        handle = self.handle(name)
        live = driver.state(handle) if handle else MachineState.NOT_CREATED
        if override and live is not MachineState.NOT_CREATED:
            made_from = (st.get("box") or {}).get("name")
            if made_from and boxes_differ(made_from, (st.get("box") or {}).get("version"), override):
                raise MachineStateError(
                    f"machine '{name}' already exists (from box {made_from}); --box applies when a machine is made",
                    hint=f"`devenv destroy {name}` first, then `devenv up {name} --box {override}`",
                )
        if live is MachineState.NOT_CREATED:
            if st.get("handle") and name not in self._distrusted:
                self.reporter.info(name, "the machine is gone from the engine: creating it again")
                st = {}
            handle = self._create(name, target, driver, choice)
            st = self.state.load(name) or {}
        elif handle is None:  # not reached: a live state other than NOT_CREATED comes with a handle
            raise MachineStateError(f"machine '{name}' has no handle")
        elif live is MachineState.STOPPED:
            self.reporter.phase(name, "start", "starting")
            driver.start(handle)
            self.reporter.phase(name, "started", "")
        elif live is MachineState.SUSPENDED:
            if (sus := role(driver, Suspend)) is None:
                raise UnsupportedOperation(f"machine '{name}' is suspended and {driver.name} cannot resume it")
            self.reporter.info(name, "resuming")
            sus.resume(handle)
        else:
            self.reporter.info(name, "already running")
        if st.get("handle") != handle:
            # Another machine than the one the state describes (found by its labels after a crash
            # or a lost .devenv/): nothing recorded about the old one holds for it, so every step runs.
            if st.get("handle"):
                self.reporter.info(name, "state described another machine: provisioning this one from the start")
            st = {"driver": driver.name, "handle": handle, "steps": []}
            self.state.save(name, st)
        if self.drift(name, st):
            self.reporter.warn(
                f"{name}: the Devfile's settings changed since the machine was created; "
                f"run `devenv reload {name}` to apply them"
            )
        for b in driver.ports(handle):
            self.reporter.info(name, f"port {b}")
        if live is not MachineState.RUNNING:
            self._push_sync(name, handle)
        try:
            if provision:
                self._provision(name, handle)
        except ProvisionError:
            # A failed step leaves the machine for inspection (Ctrl-C still removes a new one).
            with self._created_guard:
                self._created_now.pop(name, None)
            raise
        # Made and provisioned: from now on an interruption elsewhere does not remove it.
        with self._created_guard:
            self._created_now.pop(name, None)
        self.reporter.phase(name, "ready", "")

    def _resolve_box(self, name: str, target: Target, driver: Driver, choice: BoxChoice) -> BoxArtifact:
        """Prepare the machine's box, pinned by Devfile.lock; record it there (unless --frozen).

        A box the engine or the store lacks is built from its recipe first (the box subsystem's
        ensure_built); the driver's prepare_box then only looks it up."""
        from devenv.boxes.builders import ensure_built
        from devenv.boxes.lockfile import LockEntry
        from devenv.model.recipe import parse_ref

        m = target.machine
        override = choice.box_for(name)
        if override:
            self.reporter.info(name, f"using box {override} (--box; Devfile.lock is not changed)")
            with self._box_lock(override):
                ensure_built(override, driver, target, self.reporter, box_registry=self.devfile.box_registry)
                return driver.prepare_box(target, override)
        ref = parse_ref(m.box or "")
        entry = self.lock.get(name)
        wanted = m.box or ""
        # The lock entry that pins this machine's box, if it is for this box and driver.
        locked = entry if entry is not None and entry.box == ref.name and entry.provider == driver.name else None
        if locked and ref.kind == "recipe" and not ref.version and locked.version:
            wanted = f"{ref.name}@{locked.version}"
        elif choice.frozen and not locked:
            raise UsageError(
                f"--frozen: Devfile.lock has no {driver.name} box for machine '{name}' ({m.box})",
                hint="run `devenv up` without --frozen (or `devenv box update`) and commit Devfile.lock",
            )
        with self._box_lock(wanted):
            try:
                ensure_built(
                    wanted, driver, target, self.reporter, frozen=choice.frozen, box_registry=self.devfile.box_registry
                )
                box = driver.prepare_box(target, wanted)
            except DevenvError as exc:
                if locked and wanted != (m.box or ""):
                    raise type(exc)(
                        f"{exc.message} (Devfile.lock pins {locked.describe()})",
                        hint="`devenv box update` moves the lock to the version available here",
                    ) from exc
                raise
        new = LockEntry(box.name, box.version, driver.name, box.digest)
        if locked and locked.digest and box.digest != locked.digest:
            here = f"{name}: box {box.name}@{box.version} here has digest {box.digest}"
            msg = f"{here}, Devfile.lock says {locked.digest}"
            pulled = box.extra.get("pulled_from")
            if pulled:
                # A team box is the artifact the lock names, byte for byte: a registry whose tag
                # now holds another one is not followed silently.
                raise BoxError(
                    f"{here} (pulled from {pulled}), Devfile.lock says {locked.digest}: refused",
                    hint="the registry's tag moved: `devenv box update` accepts the new artifact (then commit "
                    "Devfile.lock), or remove the pulled box and pull the locked one by digest",
                )
            if choice.frozen:
                raise UsageError(
                    f"--frozen: {msg}",
                    hint="get the locked artifact (`devenv box add`), or accept this one with `devenv box update`",
                )
            self.reporter.warn(msg + " (a local build differs from the locked one; the lock is unchanged)")
        elif entry != new and not locked:
            self.lock.set(name, new)
        return box

    def _create(self, name: str, target: Target, driver: Driver, choice: BoxChoice) -> str:
        m = target.machine
        box = self._resolve_box(name, target, driver, choice)
        env = resolve_env(m, self.root)
        self.reporter.phase(
            name, "create", f"creating from {box.name}{'@' + box.version if box.version else ''}", box=box.name
        )
        handle = None
        try:
            self._check_cancel()
            check_sync_at_use(m, self.root)  # again now: a link may have been swapped in since load
            handle = driver.create(target, box, env=env)
            self.reporter.phase(name, "created", "", driver=driver.name)
            with self._created_guard:
                self._created_now[name] = handle
            self._check_cancel()
            # Recorded before start: a crash after this point leaves a findable record too.
            self.state.save(
                name,
                {
                    "driver": driver.name,
                    "handle": handle,
                    "box": {
                        "name": box.name,
                        "version": box.version,
                        "ref": box.ref,
                        "digest": box.digest,
                        "baked": list(box.extra.get("baked", [])),
                    },
                    "settings": settings_hash(m),
                    "identity": identity_hash(m),
                    "steps": [],
                    "created": int(time.time()),
                },
            )
            self.reporter.phase(name, "start", "starting")
            driver.start(handle)
            self.reporter.phase(name, "started", "")
            self._check_cancel()
        except BaseException:
            # Nothing half-created is left behind: remove what this call made, by handle or by label.
            leftover = handle or driver.find(target)
            if leftover:
                self.reporter.info(name, "removing the machine that failed to come up")
                try:
                    driver.destroy(leftover)
                except Exception as exc:  # noqa: BLE001 - report the original failure, not the cleanup's
                    self.reporter.warn(f"{name}: cleanup failed too: {exc}")
            self.state.remove(name)
            with self._created_guard:
                self._created_now.pop(name, None)
            raise
        self.index.record(
            {
                "project_id": self.devfile.project_id,
                "project": self.devfile.project_name,
                "root": str(self.root),
                "devfile": str(self.devfile.path),
                "machine": name,
                "driver": driver.name,
                "handle": handle,
            }
        )
        return handle

    # -- provisioning ----------------------------------------------------------------------------
    def plan(self, name: str, st: dict | None, *, force: bool = False, only: list[str] | None = None) -> list[StepPlan]:
        return plan_steps(self.devfile.machines[name], st, self.root, force=force, only=only)

    def _provision(self, name: str, handle: str, *, force: bool = False, only: list[str] | None = None) -> None:
        st = self.state.load(name) or {}
        plans = self.plan(name, st, force=force, only=only)
        todo = [p for p in plans if p.action == "run"]
        from_box = [p for p in plans if p.action == "box"]
        recorded = {i for i, a in enumerate(st.get("steps", [])) if isinstance(a, dict) and a.get("from_box")}
        if from_box and {p.step.index for p in from_box} != recorded:
            for p in from_box:
                self.reporter.info(name, f"provision {p.step.label}: {p.reason}, skipped")
            steps = list(st.get("steps", []))
            for p in from_box:
                while len(steps) <= p.step.index:
                    steps.append(None)
                steps[p.step.index] = {"fingerprint": p.fingerprint, "label": p.step.label, "from_box": True}
            st = {**st, "steps": steps}
            self.state.save(name, st)
        for p in plans:
            if p.action == "skip":
                self.reporter.phase(
                    name, "step-skipped", "", index=p.step.index, step=p.step.label, fingerprint=p.fingerprint
                )
        if not todo:
            if plans:
                self.reporter.info(name, "provisioning is up to date")
            return
        transport = self._transport(name, handle)
        # apt through the host's package cache from the first step on; gone again after the last.
        cached = self.cache.configure(name, self.driver(name), handle, transport)
        try:
            self._run_steps(name, plans, todo, st, transport, only=only, cached=cached)
        finally:
            if cached:
                self.cache.unconfigure(transport)

    def _run_steps(
        self, name: str, plans: list[StepPlan], todo: list[StepPlan], st: dict, transport, *, only, cached: bool
    ) -> None:
        from devenv.pkgcache.use import FetchSigns

        applied: list = list(st.get("steps", []))
        stale = [p.step.index for p in todo if p.step.run != "always"]
        if only is None and stale:
            # A step that reruns invalidates itself and every later step until each succeeds again
            # (a run = always step invalidates nothing: the once steps after it stay applied).
            applied = applied[: stale[0]]
        for p in plans:
            if p.action != "run":
                continue
            step = p.step
            self._check_cancel()
            info = {"index": step.index, "step": step.label, "fingerprint": p.fingerprint}
            self.reporter.phase(name, "step", f"provision {step.label} ({p.reason})", **info, reason=p.reason)
            attempt = 0
            while True:
                fetch = FetchSigns(self.reporter)
                signs = NoInitSigns(fetch.reporter)
                try:
                    run_step(step, name, self.root, transport, signs.reporter)
                except ProvisionError as exc:
                    again = self.cache.retry_plan(name, step.label, fetch, attempt) if cached else None
                    if again is not None:
                        attempt += 1
                        if again == "direct":
                            self.cache.unconfigure(transport)
                            cached = False
                        continue  # the cache never fails a step: once more, as retry_plan said
                    self.state.save(name, {**st, "steps": applied, "failed_step": step.index})
                    self.reporter.phase(name, "step-failed", "", **info)
                    signs.warn(name, step.label)
                    raise ProvisionError(f"{name}: step {step.label} failed: {exc.message}", hint=exc.hint) from exc
                break
            signs.warn(name, step.label)
            self.reporter.phase(name, "step-done", "", **info)
            while len(applied) <= step.index:
                applied.append(None)
            applied[step.index] = {"fingerprint": p.fingerprint, "label": step.label, "at": int(time.time())}
            self.state.save(name, {**st, "steps": applied, "failed_step": None})
            st = {**st, "steps": applied}

    def provision(self, names: list[str] | None = None, *, force: bool = False, only: list[str] | None = None) -> None:
        wanted = self.names(names)
        with self.state.lock("provision"):
            try:
                for n in wanted:
                    self.driver(n).check_available(self.devfile.machines[n])
                    handle = self.require_running(n)
                    self._provision(n, handle, force=force, only=only)
            finally:
                self.cache.close()

    # -- other verbs -----------------------------------------------------------------------------
    def halt(self, names: list[str] | None = None, *, force: bool = False) -> None:
        wanted = self.names(names)
        with self.state.lock("halt"):
            for n in reversed(self.devfile.order(wanted) if not names else wanted):
                self.driver(n).check_available(self.devfile.machines[n])
                h, st = self.live_state(n)
                if st is MachineState.NOT_CREATED:
                    self.reporter.info(n, "not created")
                elif st is MachineState.STOPPED:
                    self.reporter.info(n, "already stopped")
                else:
                    self.reporter.phase(n, "stop", "stopping" + (" (forced)" if force else ""))
                    assert h is not None  # created: it has a handle
                    if st is MachineState.SUSPENDED and (sus := role(self.driver(n), Suspend)) is not None:
                        sus.resume(h)
                    self.driver(n).stop(h, force=force)

    def _tolerant_lock(self, command: str):
        """The project lock, or none when .devenv/ cannot hold one: destroy must work whatever is there."""
        import contextlib

        from devenv.errors import StateError

        stack = contextlib.ExitStack()
        try:
            stack.enter_context(self.state.lock(command))
        except StateError as exc:
            self.reporter.warn(f"{exc.message}; carrying on without the project lock")
        return stack

    def destroy(self, names: list[str] | None = None) -> None:
        wanted = self.names(names)
        with self._tolerant_lock("destroy"):
            for n in reversed(self.devfile.order(wanted) if not names else wanted):
                driver = self.driver(n)
                driver.check_available(self.devfile.machines[n])
                h = self.handle(n, tolerant=True)
                if h is None:
                    self.reporter.info(n, "not created")
                else:
                    self.reporter.phase(n, "destroy", "destroying")
                    driver.destroy(h)
                self.state.remove(n)
                self.index.forget(self.devfile.project_id, n)
            if not names:
                # Machines renamed or removed from the Devfile still carry the project's label.
                for dname in sorted({m.driver for m in self.devfile.machines.values()}):
                    # The root too: the short id alone can collide with another folder's.
                    for gone in get_driver(dname).sweep(self.devfile.project_id, self.devfile.root):
                        self.reporter.info(None, f"removed leftover {dname} machine {gone}")
                for n in self.state.names():
                    self.state.remove(n)
                self.index.forget(self.devfile.project_id)

    def box_update(self, names: list[str] | None = None) -> list[tuple[str, str | None, str]]:
        """Move Devfile.lock to the newest box version available for each machine."""
        from devenv.boxes.lockfile import LockEntry

        changes = []
        with self.state.lock("box update"):
            for n in self.names(names):
                m = self.devfile.machines[n]
                if not m.box:
                    continue
                driver = self.driver(n)
                driver.check_available(self.devfile.machines[n])
                old = self.lock.get(n)
                with self._box_lock(m.box):
                    from devenv.boxes.builders import ensure_built

                    ensure_built(m.box, driver, self.target(n), self.reporter, box_registry=self.devfile.box_registry)
                    box = driver.prepare_box(self.target(n), m.box)
                new = LockEntry(box.name, box.version, driver.name, box.digest)
                if old != new:
                    self.lock.set(n, new)
                    changes.append((n, old.describe() if old else None, new.describe()))
        return changes

    def package(self, name: str, box_name: str, version: str) -> dict:
        """Turn a machine into a box (Vagrant's `package`); its applied steps become the box's baked prefix."""
        self.machine(name)
        driver = self.driver(name)
        if (packer := role(driver, Package)) is None:
            raise UnsupportedOperation(f"the {driver.name} driver cannot package machines yet")
        driver.check_available(self.devfile.machines[name])
        h, live = self.live_state(name)
        if live is MachineState.NOT_CREATED:
            raise MachineStateError(f"machine '{name}' is not created", hint=f"run `devenv up {name}`")
        st = self.state.load(name) or {}
        baked = []
        for p in self.plan(name, st):
            if p.action not in ("skip", "box") or p.step.run != "once":
                break
            baked.append(p.fingerprint)
        assert h is not None  # created: it has a handle
        with self.state.lock("package"):
            if live is MachineState.RUNNING:
                # A box must not point at this laptop's package cache (a killed devenv may have left it).
                self.cache.unconfigure(self._transport(name, h))
            self.reporter.info(name, f"packaging as box {box_name}@{version}")
            return packer.package(h, self.target(name), box_name, version, baked)

    def drift(self, name: str, st: dict | None) -> str | None:
        """'recreate' when the box or driver changed, 'reload' when settings changed, else None."""
        if not st:
            return None
        m = self.devfile.machines[name]
        if st.get("identity") not in (None, identity_hash(m)):
            return "recreate"
        if st.get("settings") not in (None, settings_hash(m)):
            return "reload"
        return None

    def reload(self, names: list[str] | None = None, *, provision: bool = True, recreate: bool = False) -> None:
        wanted = self.names(names)
        self._preflight(self.devfile.levels(wanted))
        with self.state.lock("reload"):
            for n in wanted:
                driver = self.driver(n)
                driver.check_available(self.devfile.machines[n])
                h, live = self.live_state(n)
                if h is None:
                    continue  # not created: `up` below makes it with the new settings
                st = self.state.load(n) or {}
                drift = self.drift(n, st) if live is not MachineState.NOT_CREATED else None
                if drift == "recreate" or (recreate and live is not MachineState.NOT_CREATED):
                    if not recreate:
                        raise MachineStateError(
                            f"machine '{n}' was made from another box or driver than the Devfile now names",
                            hint=f"`devenv reload {n} --recreate` replaces it (its disk and changes are lost)",
                        )
                    self.reporter.info(n, "recreating the machine")
                    driver.destroy(h)
                    self.state.remove(n)
                elif drift == "reload":
                    target = self.target(n)
                    applier = role(driver, ApplySettings)
                    if applier is not None:
                        self.reporter.info(n, "applying changed settings (the disk is kept)")
                        with self._box_lock(target.machine.box or ""):
                            if target.machine.box:
                                from devenv.boxes.builders import ensure_built

                                ensure_built(
                                    target.machine.box,
                                    driver,
                                    target,
                                    self.reporter,
                                    box_registry=self.devfile.box_registry,
                                )
                            box = driver.prepare_box(target, target.machine.box)
                        check_sync_at_use(target.machine, self.root)
                        applier.apply_settings(h, target, box)
                        self.state.save(n, {**st, "settings": settings_hash(target.machine)})
                    else:
                        self.reporter.info(n, "settings changed: recreating the machine")
                        driver.destroy(h)
                        self.state.remove(n)
                elif live is MachineState.RUNNING:
                    self.reporter.info(n, "stopping")
                    driver.stop(h)
            try:
                self._run_levels(self.devfile.levels(wanted), lambda n: self._up_one(n, provision=provision))
            finally:
                self.cache.close()

    def suspend(self, names: list[str] | None = None) -> None:
        for n in self.names(names):
            driver = self.driver(n)
            if (sus := role(driver, Suspend)) is None:
                raise UnsupportedOperation(f"the {driver.name} driver cannot suspend machines")
            self.reporter.info(n, "suspending")
            sus.suspend(self.require_running(n))

    def resume(self, names: list[str] | None = None) -> None:
        for n in self.names(names):
            driver = self.driver(n)
            h, st = self.live_state(n)
            if st is not MachineState.SUSPENDED:
                self.reporter.info(n, f"not suspended ({st})")
                continue
            sus = role(driver, Suspend)
            assert sus is not None and h is not None  # a machine is suspended only by a driver that can
            self.reporter.info(n, "resuming")
            sus.resume(h)

    def status(self, names: list[str] | None = None) -> list[MachineStatus]:
        from devenv.core.status import MachineStatus  # only `status` needs it (start-up time)

        out = []
        wanted = self.names(names)
        available: dict[tuple, DevenvError | None] = {}
        for n in wanted:
            m = self.devfile.machines[n]
            driver = self.driver(n)
            engine = (m.driver, str(m.driver_options().get("uri")))  # machines may name their own libvirt
            if engine not in available:
                try:
                    driver.check_available(m)
                    available[engine] = None
                except DevenvError as exc:
                    available[engine] = exc
            if available[engine] is not None:
                raise available[engine]  # type: ignore[misc]
            st = self.state.load(n)
            h, live = self.live_state(n)
            box = None
            if st and st.get("box"):
                b = st["box"]
                box = f"{b['name']}@{b['version']}" if b.get("version") else b["name"]
            # One plan per machine: it hashes every file the steps read.
            plans = self.plan(n, st) if live is not MachineState.NOT_CREATED and m.provision else []
            provision, stale = self._provision_summary(n, st, live, plans)
            drift = self.drift(n, st) if live is not MachineState.NOT_CREATED else None
            ports = [str(b) for b in driver.ports(h)] if h and live is MachineState.RUNNING else []
            sync = driver.sync_kind(h) if m.sync and h else None
            row = MachineStatus(n, m.driver, live, box or m.box, provision, stale, ports, sync, h, drift)
            nets = role(driver, Networks)
            if nets is not None and h and live is MachineState.RUNNING and m.networks:
                row.addresses = nets.addresses(h)
            if st and live is not MachineState.NOT_CREATED:
                row.box_digest = (st.get("box") or {}).get("digest")
                row.baked_steps = [p.step.index for p in plans if p.action == "box"]
            out.append(row)
        return out

    def _provision_summary(
        self, name: str, st: dict | None, live: MachineState, plans: list[StepPlan]
    ) -> tuple[str, StaleStep | None]:
        from devenv.core.status import FAILED, NO_STEPS, NOT_CREATED, STALE, UP_TO_DATE, StaleStep

        m = self.devfile.machines[name]
        if not m.provision:
            return NO_STEPS, None
        if live is MachineState.NOT_CREATED:
            return NOT_CREATED, None
        if st and st.get("failed_step") is not None:
            i = st["failed_step"]
            label = m.provision[i].label if i < len(m.provision) else f"[{i}]"
            return FAILED, StaleStep(i, label, changed=False)
        applied = (st or {}).get("steps", [])
        for p in plans:
            if p.action != "run":
                continue
            if p.step.run == "always":
                # Rerun by every up anyway; stale only while this version of it never ran (a new
                # or edited always step must show, as a once step does).
                prev = applied[p.step.index] if p.step.index < len(applied) else None
                if isinstance(prev, dict) and prev.get("fingerprint") == p.fingerprint:
                    continue
                return STALE, StaleStep(p.step.index, p.step.label, changed=isinstance(prev, dict))
            return STALE, StaleStep(p.step.index, p.step.label, changed=p.reason.startswith("changed"))
        return UP_TO_DATE, None

    def _transport(self, name: str, handle: str):
        driver = self.driver(name)
        transport = driver.transport(handle)
        m = self.devfile.machines[name]
        if not driver.features.env_at_create and m.env:
            from devenv.transports.env import EnvTransport

            transport = EnvTransport(transport, resolve_env(m, self.root))
        return transport

    def transport_for(self, name: str):
        self.machine(name)
        driver = self.driver(name)
        driver.check_available(self.devfile.machines[name])
        return self._transport(name, self.require_running(name))

    # -- sync folders that are copies (rsync), not shares --------------------------------------
    def _push_sync(self, name: str, handle: str, *, only_copies: bool = True) -> int:
        driver = self.driver(name)
        check_sync_at_use(self.devfile.machines[name], self.root)  # a copy must not follow a new link out
        copies = role(driver, CopySync)
        plan = copies.sync_plan(handle) if copies is not None else []
        todo = [s for s in plan if s.get("kind") == "rsync" or not only_copies]
        if not todo:
            return 0
        transport = self._transport(name, handle)
        machine = self.devfile.machines[name]
        excludes = {str(f.host): f.exclude for f in machine.sync}
        for s in todo:
            exclude = (".devenv", *excludes.get(s["host"], ()))
            self.reporter.info(name, f"sync {s['host']} -> {s['guest']} (copy)")
            transport.put_tree(Path(s["host"]), s["guest"], exclude=exclude)
        return len(todo)

    def rsync(self, names: list[str] | None = None) -> None:
        for n in self.names(names):
            self.driver(n).check_available(self.devfile.machines[n])
            h = self.require_running(n)
            if not self._push_sync(n, h):
                self.reporter.info(n, "no copied sync folders (shared folders need no push)")

    # -- snapshots -----------------------------------------------------------------------------
    def _snapshots(self, name: str):
        self.machine(name)
        driver = self.driver(name)
        snaps = role(driver, Snapshots)
        if snaps is None:
            raise UnsupportedOperation(
                f"the {driver.name} driver has no snapshots", hint="snapshots need a VM driver (libvirt)"
            )
        driver.check_available(self.devfile.machines[name])
        h, st = self.live_state(name)
        if st is MachineState.NOT_CREATED or h is None:
            raise MachineStateError(f"machine '{name}' is not created", hint=f"run `devenv up {name}`")
        return snaps, h

    def snapshot(self, action: str, name: str, snap: str | None = None) -> list[str]:
        driver, h = self._snapshots(name)
        if action == "list":
            return driver.snapshot_list(h)
        assert snap is not None
        with self.state.lock(f"snapshot {action}"):
            if action == "save":
                self.reporter.info(name, f"saving snapshot {snap}")
                driver.snapshot_save(h, snap)
            elif action == "restore":
                self.reporter.info(name, f"restoring snapshot {snap}")
                driver.snapshot_restore(h, snap)
            elif action == "delete":
                self.reporter.info(name, f"deleting snapshot {snap}")
                driver.snapshot_delete(h, snap)
        return []

    def ssh_config(self, names: list[str] | None = None) -> str:
        blocks = []
        for n in self.names(names):
            driver = self.driver(n)
            driver.check_available(self.devfile.machines[n])
            h, st = self.live_state(n)
            if st is MachineState.NOT_CREATED:
                continue
            assert h is not None
            block = driver.transport(h).ssh_config(f"{self.devfile.project_name}-{n}")
            if block is None:
                raise UnsupportedOperation(
                    f"machine '{n}' ({driver.name}) is not reached over SSH", hint=f"use `devenv ssh {n}`"
                )
            blocks.append(block)
        if not blocks:
            raise MachineStateError("no created machine to describe", hint="run `devenv up` first")
        return "\n".join(blocks)

    def ssh(self, name: str, command: str | None, *, out: OutputFn, err: OutputFn) -> int:
        """A login shell (command None) or ``sh -c command``; output lines go to ``out``/``err``."""
        transport = self.transport_for(name)
        user = self.devfile.machines[name].user
        if command is None:
            return transport.interactive(None, user=user)
        return transport.run(["/bin/sh", "-c", SSH_C_SHELL, command], user=user, on_output=out, on_stderr=err)

    def exec(self, name: str, argv: list[str], *, out: OutputFn, err: OutputFn, interactive: bool = False) -> int:
        transport = self.transport_for(name)
        user = self.devfile.machines[name].user
        if interactive:
            return transport.interactive(argv, user=user)
        return transport.run(argv, user=user, on_output=out, on_stderr=err)

    def ports(self, name: str):
        self.machine(name)
        driver = self.driver(name)
        driver.check_available(self.devfile.machines[name])
        h, live = self.live_state(name)
        if live is MachineState.NOT_CREATED:
            raise MachineStateError(f"machine '{name}' is not created", hint=f"run `devenv up {name}`")
        assert h is not None
        return driver.ports(h)
