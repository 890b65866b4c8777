"""Vagrant's `ssh -c` for the benchmark: its docker provider only has one over real SSH.

Vagrant 2.3.4's docker provider runs `vagrant ssh -c` only against a container with an SSH
server (`has_ssh = true`; it publishes port 22 on 127.0.0.1:2222). This builds such an image
once, locally: the debian-12 box plus openssh-server and sudo (Vagrant runs its own commands
with sudo) from Debian's mirror, a key of the benchmark's own, and an /etc/fstab (Vagrant edits
it after boot; a minbase Debian has none). devenv's `ssh -c` on a container goes through the
engine's exec API instead: each tool is measured doing what it does for that command.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

IMAGE = "devenv-bench/vagrant-ssh:1"

DOCKERFILE = """\
FROM {base}
ENTRYPOINT []
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
    openssh-server sudo >/dev/null && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /run/sshd /root/.ssh && chmod 700 /root/.ssh && touch /etc/fstab
COPY key.pub /root/.ssh/authorized_keys
CMD ["/usr/sbin/sshd", "-D", "-e"]
"""

VAGRANTFILE = """\
Vagrant.configure("2") do |config|
  config.ssh.username = "root"
  config.ssh.private_key_path = "{key}"
  config.ssh.insert_key = false
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider "docker" do |d|
    d.image = "{image}"
    d.has_ssh = true
  end
end
"""


def _newest_box_image(name: str) -> str | None:
    r = subprocess.run(
        ["docker", "images", f"devenv-box/{name}", "--format", "{{.Tag}}"], capture_output=True, text=True
    )
    tags = [t for t in r.stdout.split() if t and t != "<none>"]
    return f"devenv-box/{name}:{sorted(tags)[-1]}" if tags else None


def prepare(devenv: list[str], env: dict, work: Path) -> tuple[Path | None, str | None]:
    """A Vagrant project whose machine answers `vagrant ssh -c`, or (None, why not)."""
    build = work / "vagrant-ssh-image"
    build.mkdir()
    key = build / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (build / "key.pub").write_text(Path(f"{key}.pub").read_text())
    base = _newest_box_image("debian-12")
    if base is None:
        r = subprocess.run([*devenv, "box", "build", "debian-12", "--output", "docker"], env=env, capture_output=True)
        base = _newest_box_image("debian-12")
        if r.returncode != 0 or base is None:
            return None, "the debian-12 box could not be built for Vagrant's SSH image"
    (build / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    r = subprocess.run(["docker", "build", "-q", "-t", IMAGE, str(build)], capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"docker build of {IMAGE} failed: {r.stderr.strip()[-300:]}"
    folder = work / "vagrant-ssh"
    folder.mkdir()
    (folder / "Vagrantfile").write_text(VAGRANTFILE.format(key=key, image=IMAGE))
    return folder, None
