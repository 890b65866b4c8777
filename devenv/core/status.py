"""What `devenv status` knows about a machine, as data: the CLI turns it into prose and JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

from devenv.contract import MachineState

# Provisioning, as status sees it.
NO_STEPS = "no steps"
NOT_CREATED = "not created"
FAILED = "failed"  # the last run stopped at stale.index; the next provision resumes there
STALE = "stale"  # stale.index changed (or was never applied): it and every later step rerun
UP_TO_DATE = "up to date"


@dataclass(frozen=True)
class StaleStep:
    index: int
    label: str
    changed: bool  # True: its fingerprint changed since it ran; False: not applied yet (or failed)


@dataclass
class MachineStatus:
    name: str
    driver: str
    state: MachineState
    box: str | None
    provision: str  # one of the constants above
    stale: StaleStep | None
    ports: list[str]
    sync: str | None
    handle: str | None
    drift: str | None = None  # "reload" or "recreate" when the Devfile drifted from the machine
    box_digest: str | None = None
    baked_steps: list[int] = field(default_factory=list)  # provision steps that came with the box
    addresses: dict[str, str] = field(default_factory=dict)  # private network name -> the machine's address

    @property
    def stale_step(self) -> int | None:
        return self.stale.index if self.stale else None
