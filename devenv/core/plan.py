"""The provisioning plan and the drift hashes: what `up`/`provision` would do, as data."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from devenv.model.devfile import Machine, Secret, Step
from devenv.provisioners import fingerprint


@dataclass
class StepPlan:
    step: Step
    fingerprint: str
    action: str  # "run" | "skip" | "never"
    reason: str


def identity_hash(machine: Machine) -> str:
    """What the machine IS: a change of driver or box means a new machine (recreate)."""
    doc = {"driver": machine.driver, "box": machine.box}
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def settings_hash(machine: Machine) -> str:
    """How the machine runs: a change is applied by `reload` (in place where the driver can)."""
    doc = {
        "cpus": machine.cpus,
        "memory": machine.memory,
        "hostname": machine.hostname,
        # Secrets enter by where they come from, never by value.
        "env": {k: (v.describe() if isinstance(v, Secret) else v) for k, v in sorted(machine.env.items())},
        "ports": [[p.guest, p.host, p.host_ip, p.protocol] for p in machine.ports],
        "sync": [[str(s.host), s.guest, s.read_only, s.type] for s in machine.sync],
        "options": machine.driver_options(),
        # Older machines recorded no networks: a machine on none hashes as before.
        **({"networks": [[a.name, a.ip, a.network.subnet] for a in machine.networks]} if machine.networks else {}),
    }
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def plan_steps(
    m: Machine, st: dict | None, root: Path, *, force: bool = False, only: list[str] | None = None
) -> list[StepPlan]:
    """What provisioning does to each step of ``m``, given its recorded state ``st``.

    Like image layers: the box's baked prefix counts as applied, a changed (or never applied)
    step reruns and so does every later step; run = always steps rerun without invalidating the
    rest; ``only`` (--with) runs just the named steps; ``force`` runs all."""
    applied = (st or {}).get("steps", [])
    plans: list[StepPlan] = []
    stale_from: int | None = None
    box = (st or {}).get("box") or {}
    baked = box.get("baked") or []
    box_label = f"{box.get('name')}@{box.get('version')}" if box.get("version") else str(box.get("name"))
    in_box_prefix = only is None and not force
    for step in m.provision:
        fp = fingerprint(step, root)
        # The box is the cached prefix: leading steps with the fingerprints it baked are done.
        if in_box_prefix and step.index < len(baked) and baked[step.index] == fp:
            plans.append(StepPlan(step, fp, "box", f"baked into box {box_label}"))
            continue
        in_box_prefix = False
        prev = applied[step.index] if step.index < len(applied) else None
        prev_fp = prev.get("fingerprint") if isinstance(prev, dict) else None
        named = only is not None and (step.name in only or str(step.index) in only)
        if only is not None:
            action, reason = ("run", "asked for") if named else ("skip", "not asked for")
        elif step.run == "never":
            action, reason = "never", "run = never (run it with --with)"
        elif force:
            action, reason = "run", "forced"
        elif step.run == "always":
            action, reason = "run", "run = always"
        elif prev_fp is None:
            action, reason = "run", "not applied yet"
            stale_from = step.index if stale_from is None else stale_from
        elif stale_from is not None:
            action, reason = "run", f"an earlier step ([{stale_from}]) reruns"
        elif prev_fp != fp:
            action, reason = "run", "changed since it was applied"
            stale_from = step.index
        else:
            action, reason = "skip", "up to date"
        plans.append(StepPlan(step, fp, action, reason))
    return plans
