"""Benchmarks: devenv against the raw Docker engine and Vagrant's docker provider, same machine, same run.

Each round runs every tool's version of an operation back to back (interleaved), and each
number is the median over --runs rounds (default 5). Prints a table of medians and ratios and
writes JSON (bench/results/latest.json).

    .venv/bin/python bench/run.py [--runs 5] [--no-vagrant] [--no-vm]

Vagrant (Debian's package) is measured when installed. Its docker provider runs `ssh -c` only
over real SSH: bench/vagrant_ssh.py builds a local image with sshd for that row.
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
# The installed command, as users run it (python -m devenv when there is none next to Python).
_SCRIPT = Path(sys.executable).with_name("devenv")
DEVENV = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "devenv"]
IMAGE = "devenv-box/busybox:1"
KEEPALIVE = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]

VAGRANTFILE = f"""
Vagrant.configure("2") do |config|
  config.vm.provider "docker" do |d|
    d.image = "{IMAGE}"
    d.has_ssh = false
    d.cmd = {json.dumps(KEEPALIVE)}
  end
end
"""


def timed(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(argv)}\n{r.stderr}")
    return time.perf_counter() - t0


def timed_parallel(argvs: list[list[str]]) -> float:
    """Start every command at once; the time until the last one has finished."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for a in argvs]
    for p, a in zip(procs, argvs, strict=True):
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"benchmark command failed: {' '.join(a)}\n{err}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-vagrant", action="store_true")
    ap.add_argument("--no-vm", action="store_true", help="Leave out the libvirt VM rows (~2 minutes)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "latest.json")
    args = ap.parse_args()
    if shutil.which("docker") is None:
        print("error: the docker CLI is needed for the raw-engine column", file=sys.stderr)
        return 1
    vagrant = None if args.no_vagrant else shutil.which("vagrant")
    if vagrant is None:
        print(
            "note: Vagrant is not installed (apt-get install --no-install-recommends vagrant): its column is left out",
            file=sys.stderr,
        )

    # Bytecode as an install leaves it: with PYTHONDONTWRITEBYTECODE set (as on our machines) an
    # edited checkout would otherwise recompile the changed modules on every command (~30 ms).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "devenv")], check=True, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="devenv-bench-"))
    env = {
        **os.environ,
        "DEVENV_HOME": str(work / "home"),
        "NO_COLOR": "1",
        "VAGRANT_HOME": str(work / "vagrant-home"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    one, four, steps, vg = work / "one", work / "four", work / "steps", work / "vagrant"
    for d in (one, four, steps, vg):
        d.mkdir()
    (one / "Devfile").write_text('[machines.b]\nbox = "busybox"\n')
    (four / "Devfile").write_text("".join(f'[machines.m{i}]\nbox = "busybox"\n' for i in range(4)))
    (steps / "Devfile").write_text(
        '[machines.p]\nbox = "busybox"\nprovision = [\n'
        + "".join(f'  {{ type = "shell", inline = "echo step {i}" }},\n' for i in range(10))
        + "]\n"
    )
    (vg / "Vagrantfile").write_text(VAGRANTFILE)
    results: dict[str, dict[str, list[float]]] = {}

    def add(op: str, tool: str, value: float) -> None:
        results.setdefault(op, {}).setdefault(tool, []).append(value)

    raw = "devenv-bench-raw"
    vg_ssh = None
    try:  # from the first machine on: whatever fails, the finally removes what was made
        subprocess.run([*DEVENV, "box", "build", "busybox"], cwd=one, env=env, check=True, capture_output=True)
        subprocess.run([*DEVENV, "up"], cwd=steps, env=env, check=True, capture_output=True)
        if vagrant:
            sys.path.insert(0, str(REPO / "bench"))
            import vagrant_ssh

            vg_ssh, why = vagrant_ssh.prepare(DEVENV, env, work)
            if vg_ssh is None:
                print(f"note: Vagrant's ssh -c left out: {why}", file=sys.stderr)
            else:
                vg_up = [vagrant, "up", "--provider", "docker"]
                subprocess.run(vg_up, cwd=vg_ssh, env=env, check=True, capture_output=True)
        for _ in range(args.runs):
            add("up (image present)", "devenv", timed([*DEVENV, "up"], one, env))
            add("up (image present)", "raw", timed(["docker", "run", "-d", "--init", "--name", raw, IMAGE, *KEEPALIVE]))
            if vagrant:
                add("up (image present)", "vagrant", timed([vagrant, "up", "--provider", "docker"], vg, env))

            add("status (running)", "devenv", timed([*DEVENV, "status"], one, env))
            add("status (running)", "raw", timed(["docker", "inspect", raw]))
            if vagrant:
                add("status (running)", "vagrant", timed([vagrant, "status"], vg, env))

            add("ssh -c true", "devenv", timed([*DEVENV, "ssh", "b", "-c", "true"], one, env))
            add("ssh -c true", "raw", timed(["docker", "exec", raw, "true"]))
            if vg_ssh:
                add("ssh -c true", "vagrant", timed([vagrant, "ssh", "-c", "true"], vg_ssh, env))
            add("exec true", "devenv", timed([*DEVENV, "exec", "b", "--", "true"], one, env))
            add("exec true", "raw", timed(["docker", "exec", raw, "true"]))

            add("provision (10 steps, no-op)", "devenv", timed([*DEVENV, "provision"], steps, env))
            if vagrant:
                add("provision (10 steps, no-op)", "vagrant", timed([vagrant, "provision"], vg, env))

            add("destroy", "devenv", timed([*DEVENV, "destroy", "-f"], one, env))
            add("destroy", "raw", timed(["docker", "rm", "-f", raw]))
            if vagrant:
                add("destroy", "vagrant", timed([vagrant, "destroy", "-f"], vg, env))

            add("up 4 machines", "devenv", timed([*DEVENV, "up"], four, env))
            subprocess.run([*DEVENV, "destroy", "-f"], cwd=four, env=env, check=True, capture_output=True)
            # The engine's own parallelism: four `docker run`s at once.
            names = [f"{raw}-{i}" for i in range(4)]
            add(
                "up 4 machines",
                "raw",
                timed_parallel([["docker", "run", "-d", "--init", "--name", n, IMAGE, *KEEPALIVE] for n in names]),
            )
            subprocess.run(["docker", "rm", "-f", *names], check=True, capture_output=True)
    finally:
        subprocess.run(["docker", "rm", "-f", raw, *[f"{raw}-{i}" for i in range(4)]], capture_output=True)
        for d in (one, four, steps):
            subprocess.run([*DEVENV, "destroy", "-f"], cwd=d, env=env, capture_output=True)
        if vagrant:
            subprocess.run([vagrant, "destroy", "-f"], cwd=vg, env=env, capture_output=True)
        if vg_ssh:
            subprocess.run([vagrant, "destroy", "-f"], cwd=vg_ssh, env=env, capture_output=True)
    vm_note = "left out (--no-vm)"
    if not args.no_vm:
        sys.path.insert(0, str(REPO / "bench"))
        import vm

        vm_note = vm.measure(DEVENV, env, work, args.runs, add, timed)
        if vm_note:
            print(f"note: VM rows left out: {vm_note}", file=sys.stderr)

    med = {op: {tool: statistics.median(v) for tool, v in tools.items()} for op, tools in results.items()}
    one, four_up = med["up (image present)"], med["up 4 machines"]
    # Parallelism: four machines against one, for devenv and for the raw engine itself.
    scaling = {tool: four_up[tool] / one[tool] for tool in ("devenv", "raw") if tool in four_up and tool in one}
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    print(
        f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; medians of {args.runs} interleaved runs, seconds"
    )
    print("| operation | devenv | raw engine | Vagrant | devenv/raw | devenv/Vagrant |\n|---|---|---|---|---|---|")

    def cell(x: float | None) -> str:
        return f"{x:.3f}" if x is not None else "n/a"

    for op, m in med.items():
        d, r, v = m.get("devenv"), m.get("raw"), m.get("vagrant")
        ratio_r = f"{d / r:.2f}" if d and r else "n/a"
        ratio_v = f"{d / v:.2f}" if d and v else "n/a"
        print(f"| {op} | {cell(d)} | {cell(r)} | {cell(v)} | {ratio_r} | {ratio_v} |")
    print(
        "four machines up in parallel against one: "
        + ", ".join(f"{tool} {ratio:.2f}x" for tool, ratio in scaling.items())
        + f" ({os.cpu_count()} cores)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "runs": args.runs,
                "medians": med,
                "parallel_scaling": scaling,
                "vm_rows": vm_note or "measured",
                "samples": results,
                "cpu": cpu,
                "cores": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d"),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
