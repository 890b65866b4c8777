"""Benchmarks: devenv against the raw Docker engine (and Vagrant's docker provider when present).

Runs of each tool are interleaved and each number is the median of --runs (default 5) runs,
measured on this machine in this run. Prints a table of medians and ratios and writes JSON.

    .venv/bin/python bench/run.py [--runs 5] [--out bench/results/latest.json]

Vagrant is not measured yet (issue 6): its column says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVENV = [sys.executable, "-m", "devenv"]
IMAGE = "devenv-box/busybox:1"


def timed(argv: list[str], cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "latest.json")
    args = ap.parse_args()
    if shutil.which("docker") is None:
        print("error: the docker CLI is needed for the raw-engine column", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="devenv-bench-"))
    (work / "Devfile").write_text('[machines.b]\nbox = "busybox"\n')
    env_home = work / "home"
    os.environ["DEVENV_HOME"] = str(env_home)
    subprocess.run([*DEVENV, "box", "build", "busybox"], cwd=work, check=True, capture_output=True)
    ka = REPO / "bench" / "results" / "keepalive"
    ka.parent.mkdir(parents=True, exist_ok=True)
    from devenv.drivers.keepalive import elf_x86_64

    ka.write_bytes(elf_x86_64())
    ka.chmod(0o755)

    results: dict[str, dict[str, list[float]]] = {}

    def add(op: str, tool: str, value: float) -> None:
        results.setdefault(op, {}).setdefault(tool, []).append(value)

    raw_name = "devenv-bench-raw"
    for _ in range(args.runs):
        # up (image present, no provisioners) — devenv vs `docker run -d`
        add("up", "devenv", timed([*DEVENV, "up"], work))
        add(
            "up",
            "raw",
            timed(
                [
                    "docker",
                    "run",
                    "-d",
                    "--init",
                    "--name",
                    raw_name,
                    "-v",
                    f"{ka}:/.devenv/keepalive:ro",
                    "--entrypoint",
                    "/.devenv/keepalive",
                    IMAGE,
                ]
            ),
        )
        # status of one running machine — devenv status vs `docker inspect`
        add("status", "devenv", timed([*DEVENV, "status"], work))
        add("status", "raw", timed(["docker", "inspect", raw_name]))
        # one command in the machine
        add("ssh -c true", "devenv", timed([*DEVENV, "ssh", "b", "-c", "true"], work))
        add("ssh -c true", "raw", timed(["docker", "exec", raw_name, "true"]))
        # destroy
        add("destroy", "devenv", timed([*DEVENV, "destroy", "-f"], work))
        add("destroy", "raw", timed(["docker", "rm", "-f", raw_name]))

    table = {op: {tool: statistics.median(v) for tool, v in tools.items()} for op, tools in results.items()}
    py = platform.python_version()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {py}")
    print(f"medians of {args.runs} interleaved runs (seconds); Vagrant: not measured yet")
    print(f"{'operation':<14}{'devenv':>9}{'raw':>9}{'devenv/raw':>12}")
    for op, m in table.items():
        print(f"{op:<14}{m['devenv']:>9.3f}{m['raw']:>9.3f}{m['devenv'] / m['raw']:>12.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "runs": args.runs,
                "medians": table,
                "samples": results,
                "machine": {"node": platform.node(), "cpus": os.cpu_count()},
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
