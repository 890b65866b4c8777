"""The one error hierarchy of devenv.

Every expected failure is a DevenvError carrying a message (what happened) and a hint (what
to do). Only the CLI (devenv/cli/) turns them into exit codes and text; nothing here imports from devenv.
"""

from __future__ import annotations


class DevenvError(Exception):
    """Root of every failure a user can meet in normal operation."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(DevenvError):
    """The command line names something that does not exist or does not fit."""

    exit_code = 2


class DevfileError(DevenvError):
    """The Devfile (or a box recipe) is missing or invalid; carries every problem found."""

    exit_code = 2

    def __init__(self, message: str, problems: list | None = None, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.problems = list(problems or [])


class BackendUnavailable(DevenvError):
    """An engine (Docker, libvirt, VBoxManage, Vagrant) cannot be reached or used."""

    exit_code = 3


class MachineStateError(DevenvError):
    """The machine is not in a state the verb can work with (not created, not running)."""

    exit_code = 4


class ProvisionError(DevenvError):
    """A provision step failed; the machine is left running for inspection."""

    exit_code = 5


class CommandFailed(DevenvError):
    """A command devenv ran (on the host or in a machine) failed."""

    exit_code = 6


class BoxError(DevenvError):
    """A box cannot be found, built, verified or stored."""

    exit_code = 7


class NotPublished(BoxError):
    """A registry or catalog answered, and does not have the box (or that version of it): the
    next source (a build) may still make it. Anything else wrong with an artifact is a BoxError."""


class Unreachable(BoxError):
    """A download did not get through (refused, timed out, broke off): the next source may."""


class StateError(DevenvError):
    """The .devenv/ store or the global index cannot be read or written."""

    exit_code = 8


class LockTimeout(DevenvError):
    """Another devenv command holds the project lock for too long."""

    exit_code = 9


class UnsupportedOperation(DevenvError):
    """The machine's driver cannot do this (for example snapshots on Docker)."""

    exit_code = 10


class PortConflict(DevenvError):
    """A host port a machine forwards is already in use."""

    exit_code = 11
