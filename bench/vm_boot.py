"""The debian-12 VM box's boot: `devenv up` of one libvirt machine to SSH, box versions side by side.

    .venv/bin/python bench/vm_boot.py [--home DIR] [--runs 3] [--box debian-12@OLD] [--box debian-12]

Each round destroys the machine and times `devenv up` (the box present: overlay, seed ISO, boot
under QEMU's emulation, devenv's wait for the SSH banner), then reads where the boot went from
the guest: the kernel until /init (dmesg "Run /init"), the initramfs until systemd starts (dmesg
"systemd NNN running"), systemd's userspace (`systemd-analyze`), and when the seed and sshd came
up (their units' ActiveEnterTimestampMonotonic, seconds since the kernel started).

--home reuses a DEVENV_HOME whose box store holds the boxes (else a temp one, where a missing
box is built first: minutes). A box version no longer in the recipe (the old one) is measured
only if that store has it; otherwise its figures recorded below (same machine) stand in.
JSON in bench/results/vm_boot.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("devenv")
DEVENV = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "devenv"]

# debian-12@2026.12.2 (the box before the boot work), measured by this script on our CI machine
# (AMD EPYC, 2 cores, no KVM, 1 vCPU guest), 2026-12-01: medians of 3 boots.
RECORDED = {
    "debian-12@2026.12.2": {
        "up": 30.8,
        "kernel": 2.9,
        "initrd": 4.9,
        "userspace": 20.8,
        "seed": 27.2,
        "sshd": 28.0,
        "note": "recorded 2026-12-01, same machine",
    }
}

PROBE = (
    "dmesg | grep -m1 'Run /init'; dmesg | grep -m1 -E 'systemd\\[1\\]: systemd [0-9]'; "
    "systemd-analyze | head -n1; "
    "systemctl show -p ActiveEnterTimestampMonotonic devenv-seed.service ssh.service"
)


def devenv(argv: list[str], proj: Path, env: dict, *, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*DEVENV, *argv], cwd=proj, env=env, capture_output=True, text=True, timeout=1800)
    if check and r.returncode != 0:
        raise SystemExit(f"benchmark command failed: devenv {' '.join(argv)}\n{r.stderr[-2000:]}")
    return r


def phases(out: str) -> dict:
    """Kernel, initrd, userspace seconds and the seed's and sshd's start (s since the kernel started)."""
    stamps = [float(x) for x in re.findall(r"^\[\s*([0-9.]+)\]", out, re.M)]
    got: dict = {}
    if len(stamps) >= 2:
        got["kernel"], got["initrd"] = stamps[0], stamps[1] - stamps[0]
    m = re.search(r"\+ ([0-9.]+)(m?s) \(userspace\)", out)
    if m:
        got["userspace"] = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    active = [int(x) / 1e6 for x in re.findall(r"ActiveEnterTimestampMonotonic=(\d+)", out)]
    if len(active) == 2:
        got["seed"], got["sshd"] = active
    return got


def measure(box: str, work: Path, env: dict, runs: int) -> dict:
    proj = work / re.sub(r"[^a-z0-9]+", "-", box.lower())
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "Devfile").write_text(f'[machines.deb]\ndriver = "libvirt"\nbox = "{box}"\nmemory = "512MiB"\n')
    devenv(["up"], proj, env)  # builds the box if the store lacks it; not timed
    rounds = []
    try:
        for _ in range(runs):
            devenv(["destroy", "-f"], proj, env)
            t0 = time.perf_counter()
            devenv(["up"], proj, env)
            row = {"up": time.perf_counter() - t0}
            row.update(phases(devenv(["ssh", "deb", "-c", PROBE], proj, env).stdout))
            rounds.append(row)
            print(f"  {box}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    finally:
        devenv(["destroy", "-f"], proj, env, check=False)
    keys = sorted({k for r in rounds for k in r})
    med = {k: statistics.median(r[k] for r in rounds if k in r) for k in keys}
    return {**med, "runs": rounds, "note": f"median of {runs}, this run"}


def stored(home: Path, box: str) -> bool:
    name, _, version = box.partition("@")
    return not version or (home / "boxes" / name / version / "libvirt").is_dir()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, help="DEVENV_HOME to reuse (its box store)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--box", action="append", help="box[@version], repeatable; first = before, last = after")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vm_boot.json")
    args = ap.parse_args()
    boxes = args.box or ["debian-12@2026.12.2", "debian-12"]
    with tempfile.TemporaryDirectory(prefix="devenv-bench-boot-") as tmp:
        home = args.home or Path(tmp) / "home"
        env = {**os.environ, "DEVENV_HOME": str(home)}
        results = {}
        for box in boxes:
            if not stored(home, box) and box in RECORDED:
                print(f"  {box}: not in {home}/boxes, using its recorded figures", flush=True)
                results[box] = RECORDED[box]
                continue
            results[box] = measure(box, Path(tmp), env, args.runs)
    cols = ["up", "kernel", "initrd", "userspace", "seed", "sshd"]
    print("| box | " + " | ".join(cols) + " | source |")
    print("|---|" + "---|" * (len(cols) + 1))
    for box, r in results.items():
        print(f"| {box} | " + " | ".join(f"{r[c]:.1f}" if c in r else "n/a" for c in cols) + f" | {r['note']} |")
    before, after = results[boxes[0]], results[boxes[-1]]
    if len(boxes) > 1:
        ratio = after["up"] / before["up"]
        print(f"up to SSH: {after['up']:.1f} s vs {before['up']:.1f} s = {ratio:.2f}x (target <= 0.70)")
        results["ratio"] = round(ratio, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
