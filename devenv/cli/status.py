"""`devenv status` rows in words: the prose (and the fix it names) for data the core reports."""

from __future__ import annotations

from devenv.core.status import FAILED, STALE, MachineStatus


def provision_text(row: MachineStatus) -> str:
    s = row.stale
    if row.provision == FAILED and s is not None:
        return f"failed at step {s.label}: fix it, then run `devenv provision {row.name}`"
    if row.provision == STALE and s is not None:
        what = "changed" if s.changed else "not applied yet"
        return f"stale: step {s.label} {what} -> run `devenv provision {row.name}`"
    return row.provision


def settings_text(row: MachineStatus) -> str:
    if row.drift == "recreate":
        return f"box or driver changed: run `devenv reload {row.name} --recreate` (the machine is replaced)"
    if row.drift == "reload":
        return f"changed since creation: run `devenv reload {row.name}`"
    return "up to date"


def action(row: MachineStatus) -> str | None:
    """The one command status names: recreate > reload > provision (None: nothing to do)."""
    if row.drift:
        return row.drift
    return "provision" if row.provision in (STALE, FAILED) else None


def as_json(row: MachineStatus) -> dict:
    """The `status --json` object of one machine (its keys are a stable interface)."""
    return {
        "name": row.name,
        "driver": row.driver,
        "state": str(row.state),
        "box": row.box,
        "provision": provision_text(row),
        "stale_step": row.stale_step,
        "settings": settings_text(row),
        "ports": row.ports,
        "sync": row.sync,
        "handle": row.handle,
        "action": action(row),
        "box_digest": row.box_digest,
        "baked_steps": row.baked_steps,
        "addresses": row.addresses,
    }
