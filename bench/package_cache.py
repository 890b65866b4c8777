"""Package cache benchmark: a two-machine project with apt installs, cold cache against warm.

    .venv/bin/python bench/package_cache.py [--no-vm] [--runs N]

The project is the classic proxy/web pair (nginx on both; `proxy` reaches `web` by name over
the project's network), on Docker and on libvirt. For each driver, side by side in one run:
`up` with the cache off (DEVENV_PACKAGE_CACHE=off, the reference), `up` with an empty cache
(cold), then `destroy` + `up` again (warm). The box is built first and is not timed. Also says
how many bytes the mirror sent and the cache served in each run (the proxy's own log). JSON in
bench/results/package_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("devenv")
DEVENV = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "devenv"]

WEB = """#!/bin/bash
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx >/dev/null
echo "<h1>hello from $(hostname)</h1>" > /var/www/html/index.html
systemctl enable --now nginx
"""
PROXY = """#!/bin/bash
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx >/dev/null
printf 'server {\\n listen 80 default_server;\\n location / { proxy_pass http://web/; }\\n}\\n' \\
  > /etc/nginx/sites-available/default
systemctl enable nginx
systemctl restart nginx
"""
DEVFILE = """[defaults]
box = "debian-12"
driver = "{driver}"
{extra}

[machines.web]
provision = [{{ type = "shell", script = "web.sh" }}]

[machines.proxy]
depends_on = ["web"]
provision = [{{ type = "shell", script = "proxy.sh" }}]
"""


def devenv(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 3600) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([*DEVENV, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"benchmark command failed: devenv {' '.join(argv)}\n{r.stderr}")
    return time.perf_counter() - t0


def traffic(cache: Path) -> tuple[int, int]:
    """(bytes fetched from mirrors, bytes served to machines) so far, from the proxy's log."""
    fetched = served = 0
    try:
        lines = (cache / "log" / "apt-cacher.log").read_text().splitlines()
    except FileNotFoundError:
        return 0, 0
    for ln in lines:
        parts = ln.split("|")
        if len(parts) >= 5 and parts[2].isdigit():
            if parts[1] == "I":
                fetched += int(parts[2])
            elif parts[1] == "O":
                served += int(parts[2])
    return fetched, served


def bench_driver(driver: str, runs: int, work: Path) -> dict:
    proj = work / driver
    proj.mkdir()
    (proj / "web.sh").write_text(WEB)
    (proj / "proxy.sh").write_text(PROXY)
    extra = 'memory = "512MiB"' if driver == "libvirt" else ""
    (proj / "Devfile").write_text(DEVFILE.format(driver=driver, extra=extra))
    cache = work / f"cache-{driver}"
    env = {**os.environ, "DEVENV_PACKAGE_CACHE_DIR": str(cache)}
    devenv(["box", "build", "debian-12", "--output", driver], cwd=proj, env=env)
    rows: dict[str, list[float]] = {"off": [], "cold": [], "warm": []}
    bytes_: dict[str, list[tuple[int, int]]] = {"cold": [], "warm": []}
    for _ in range(runs):
        rows["off"].append(devenv(["up"], cwd=proj, env={**env, "DEVENV_PACKAGE_CACHE": "off"}))
        devenv(["destroy", "-f"], cwd=proj, env=env)
        devenv(["cache", "clean"], cwd=proj, env=env)
        for kind in ("cold", "warm"):
            before = traffic(cache)
            rows[kind].append(devenv(["up"], cwd=proj, env=env))
            after = traffic(cache)
            bytes_[kind].append((after[0] - before[0], after[1] - before[1]))
            devenv(["destroy", "-f"], cwd=proj, env=env)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "driver": driver,
        "runs": runs,
        "seconds": rows,
        "median": med,
        "warm_over_cold": med["warm"] / med["cold"],
        "cold_over_off": med["cold"] / med["off"],
        "bytes_fetched_served": bytes_,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-vm", action="store_true", help="leave out the libvirt row (~10 minutes)")
    ap.add_argument("--runs", type=int, default=1, help="rounds per driver (medians); default 1")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="devenv-bench-cache-") as tmp:
        for driver in ["docker"] + ([] if args.no_vm else ["libvirt"]):
            res = bench_driver(driver, args.runs, Path(tmp))
            results.append(res)
            m = res["median"]
            f, s = res["bytes_fetched_served"]["warm"][-1]
            print(
                f"{driver}: up off {m['off']:.1f}s, cold {m['cold']:.1f}s, warm {m['warm']:.1f}s; "
                f"warm/cold {res['warm_over_cold']:.2f}; warm run: {f / 1e6:.1f} MB from mirrors, "
                f"{s / 1e6:.1f} MB served",
                flush=True,
            )
    out = REPO / "bench" / "results" / "package_cache.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"at": time.strftime("%Y-%m-%d"), "rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
