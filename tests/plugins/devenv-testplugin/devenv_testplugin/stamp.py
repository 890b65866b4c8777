"""stamp: a provision step, ``{ type = "stamp", text = "hello", path = "STAMP" }``, that writes the
text into a file in the machine. It reaches the machine only through ctx.transport.put."""

from __future__ import annotations

import tempfile
from pathlib import Path

from devenv.contract import Field, Problem, RunContext, Str, Table


class StampProvisioner:
    type = "stamp"
    options = Table(
        {
            # The keys every step has (devenv checks a step against its provisioner's table alone).
            "type": Field(Str(choices=("stamp",))),
            "name": Field(Str(description="A label shown in output and status")),
            "run": Field(Str(choices=("once", "always", "never"))),
            "text": Field(Str(nonempty=False, description="What the file holds"), required=True),
            "path": Field(Str(description="The file in the machine"), default="STAMP"),
        },
        description="Write a text into a file in the machine",
    )

    def files(self, config: dict, root: Path) -> list[Path]:
        return []  # reads nothing on the host: its fingerprint is its config

    def check(self, config: dict, root: Path, path: tuple) -> list[Problem]:
        return []

    def describe(self, config: dict) -> str:
        return f"stamp {config.get('path', 'STAMP')}"

    def run(self, config: dict, ctx: RunContext) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp, "stamp")
            local.write_text(config["text"])
            ctx.transport.put(local, config.get("path", "STAMP"))
        ctx.reporter.info(ctx.machine, f"stamped {config.get('path', 'STAMP')}")
