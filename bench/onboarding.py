"""Onboarding benchmark: a new laptop's first `devenv up`, building the boxes vs pulling the team's.

    .venv/bin/python bench/onboarding.py [--no-vm]

Docker row: from a fresh DEVENV_HOME with the debian-12 and busybox images removed, `devenv up`
of Devfile.example (a) building both boxes here, (b) pulling them from a registry. VM row: the
same for one libvirt machine on debian-12 (build = debootstrap + bake VM; pull = the VM box from
the registry), each up to SSH. The registry is Debian's docker-registry on 127.0.0.1 with its
storage in a temp folder (started and stopped here). Also reports the push time and the
artifact sizes. One round each (a build takes minutes); JSON in bench/results/onboarding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("devenv")
DEVENV = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "devenv"]


def run(argv: list[str], *, cwd: Path, home: Path, timeout: float = 3600) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "DEVENV_HOME": str(home)}
    r = subprocess.run([*DEVENV, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"benchmark command failed: devenv {' '.join(argv)}\n{r.stderr}")
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(folder: Path) -> tuple[subprocess.Popen, str]:
    host = f"127.0.0.1:{free_port()}"
    (folder / "data").mkdir(parents=True)
    cfg = folder / "config.yml"
    cfg.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: {host}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://{host}/v2/", timeout=1)
            return proc, host
        except OSError:
            time.sleep(0.1)
    raise SystemExit("docker-registry did not start (scripts/registry.sh installs it)")


def remove_images(tags: list[str]) -> None:
    for tag in tags:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-vm", action="store_true", help="leave out the libvirt row (~6 minutes)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from devenv.model.recipe import BUNDLED, load_recipe

    debian, busybox = (load_recipe(BUNDLED / f"{n}.toml") for n in ("debian-12", "busybox"))
    tags = [debian.docker_tag, busybox.docker_tag]
    results: dict = {"date": time.strftime("%Y-%m-%d"), "rows": {}}
    with tempfile.TemporaryDirectory(prefix="devenv-bench-onboarding-") as tmp:
        t = Path(tmp)
        proc, host = start_registry(t / "registry")
        prefix = f"oci://{host}/boxes"
        try:
            example = t / "example"
            example.mkdir()
            text = (REPO / "Devfile.example").read_text().replace("host = 18080", f"host = {free_port()}")
            shutil.copytree(REPO / "provisioners", example / "provisioners")

            # (a) build: a fresh laptop, no images, no registry
            (example / "Devfile").write_text(text)
            remove_images(tags)
            home = t / "home-build"
            build = run(["up"], cwd=example, home=home)
            run(["destroy", "-f"], cwd=example, home=home)
            push = run(
                ["box", "publish", "debian-12", "--to", f"{prefix}/debian-12", "--output", "docker"], cwd=t, home=home
            )
            push += run(["box", "publish", "busybox", "--to", f"{prefix}/busybox"], cwd=t, home=home)
            # (b) pull: another fresh laptop, the team's registry in the Devfile
            (example / "Devfile").write_text(
                text.replace('name = "example"', f'name = "example"\nbox_registry = "{prefix}"', 1)
            )
            remove_images(tags)
            home = t / "home-pull"
            pull = run(["up"], cwd=example, home=home)
            run(["destroy", "-f"], cwd=example, home=home)
            sizes = {
                tag: int(
                    subprocess.run(
                        ["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True
                    ).stdout.strip()
                    or 0
                )
                for tag in tags
            }
            results["rows"]["docker: up Devfile.example"] = {
                "build_s": round(build, 1),
                "pull_s": round(pull, 1),
                "ratio": round(pull / build, 3),
                "push_s": round(push, 1),
                "image_bytes": sizes,
            }
            print(
                f"docker  up Devfile.example: build {build:6.1f}s  pull {pull:5.1f}s  "
                f"ratio {pull / build:.3f}  (push {push:.1f}s)"
            )

            if not args.no_vm:
                vmp = t / "vm"
                vmp.mkdir()
                machine = '[machines.deb]\ndriver = "libvirt"\nbox = "debian-12"\nmemory = "512MiB"\n'
                (vmp / "Devfile").write_text(machine)
                home = t / "vm-build"
                build = run(["up"], cwd=vmp, home=home)
                run(["destroy", "-f"], cwd=vmp, home=home)
                push = run(
                    ["box", "publish", "debian-12", "--to", f"{prefix}/debian-12", "--output", "libvirt"],
                    cwd=t,
                    home=home,
                )
                size = du(home / "boxes" / "debian-12")
                (vmp / "Devfile").write_text(f'[project]\nbox_registry = "{prefix}"\n\n' + machine)
                home = t / "vm-pull"
                pull = run(["up"], cwd=vmp, home=home)
                run(["destroy", "-f"], cwd=vmp, home=home)
                results["rows"]["libvirt: up one debian-12 VM"] = {
                    "build_s": round(build, 1),
                    "pull_s": round(pull, 1),
                    "ratio": round(pull / build, 3),
                    "push_s": round(push, 1),
                    "box_bytes": size,
                }
                print(
                    f"libvirt up one debian-12 VM: build {build:6.1f}s  pull {pull:5.1f}s  "
                    f"ratio {pull / build:.3f}  (push {push:.1f}s, box {size / 2**20:.0f} MiB)"
                )
        finally:
            proc.terminate()
            proc.wait(10)
    out = REPO / "bench" / "results" / "onboarding.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
