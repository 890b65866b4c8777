"""Integration fixtures: real engines only.

A missing engine skips locally with devenv's own check_available() message, and FAILS in CI
(CI=true): an integration suite that silently skipped would prove nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devenv.errors import DevenvError
from tests.support import require_engine  # noqa: F401 - re-exported for the test modules

REPO = Path(__file__).resolve().parents[2]
DEVENV = [sys.executable, "-m", "devenv"]


@pytest.fixture(scope="session")
def docker_driver():
    from devenv.drivers.docker.driver import DockerDriver

    d = DockerDriver()
    require_engine(d.check_available)
    return d


@pytest.fixture(scope="session")
def docker_client(docker_driver):
    return docker_driver.client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSshd:
    """A real sshd on 127.0.0.1 with a throw-away host key, accepting one client key (root only)."""

    def __init__(self, folder: Path, client_pub: Path) -> None:
        import time

        folder.mkdir(mode=0o700, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host")], check=True)
        (folder / "authorized_keys").write_text(client_pub.read_text())
        self.port = free_port()
        self.log = folder / "sshd.log"
        (folder / "sshd_config").write_text(
            textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {folder / "host"}
            AuthorizedKeysFile {folder / "authorized_keys"}
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            PidFile {folder / "sshd.pid"}
            """)
        )
        self.host_pub = " ".join((folder / "host.pub").read_text().split()[:2])
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(folder / "sshd_config")], stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        assert self.proc.poll() is None, self.log.read_text()

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_pub}\n"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Proj:
    """A throw-away project folder with a Devfile and a way to run the real CLI in it."""

    def __init__(self, root: Path, client) -> None:
        self.root = root
        self.client = client

    def write(self, rel: str, text: str, mode: int | None = None) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        if mode is not None:
            p.chmod(mode)
        return p

    def devfile(self, text: str) -> None:
        self.write("Devfile", text)

    def run(
        self, *args: str, check: bool = False, timeout: float = 600, env: dict | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [*DEVENV, *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"devenv {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def status(self) -> dict:
        r = self.run("status", "--json", check=True)
        return {m["name"]: m for m in json.loads(r.stdout)}

    @property
    def project_id(self) -> str:
        from devenv.model import devfile

        return devfile.load(self.root / "Devfile").project_id

    def labelled(self) -> dict:
        """Everything on the engine that carries this project's label."""
        f = {"label": f"devenv.project={self.project_id}"}
        return {
            "containers": [c.name for c in self.client.containers.list(all=True, filters=f)],
            "volumes": [v.name for v in self.client.volumes.list(filters=f)],
            "networks": [n.name for n in self.client.networks.list(filters=f)],
        }

    def sweep(self) -> None:
        try:
            pid = self.project_id
        except DevenvError:
            return
        for c in self.client.containers.list(all=True, filters={"label": f"devenv.project={pid}"}):
            c.remove(force=True, v=True)
        for n in self.client.networks.list(filters={"label": f"devenv.project={pid}"}):
            n.remove()


@pytest.fixture
def proj(tmp_path, docker_client):
    root = tmp_path / "proj"
    root.mkdir()
    p = Proj(root, docker_client)
    yield p
    p.sweep()


def assert_no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


# -- libvirt: shared by the libvirt, ansible and remote-engine tests ------------------------------


@pytest.fixture(scope="session")
def libvirt_driver():
    from devenv.drivers.libvirt.driver import LibvirtDriver

    d = LibvirtDriver()
    require_engine(d.check_available)
    return d


@pytest.fixture(scope="session")
def tiny_guest(tmp_path_factory, libvirt_driver) -> Path:
    out = tmp_path_factory.mktemp("tiny-guest")
    r = subprocess.run(
        ["bash", str(REPO / "tests/guest/build-tiny-guest.sh"), str(out)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def tiny_box(tiny_guest, tmp_path):
    """The tiny guest as box tiny-vm@1 in this test's box store (DEVENV_HOME)."""
    from devenv.boxes import store as boxes

    files = {}
    staging = tmp_path / "box-staging"
    staging.mkdir()
    for key, fn in (("disk", "disk.qcow2"), ("kernel", "vmlinuz"), ("initrd", "initrd.img")):
        shutil.copy(tiny_guest / fn, staging / fn)
        files[key] = staging / fn
    cmdline = (tiny_guest / "cmdline").read_text().strip()
    return boxes.store_box(
        "tiny-vm", "1", "libvirt", files, {"cmdline": cmdline, "ssh_user": "root", "sync": ["rsync"]}
    )


@pytest.fixture(scope="session")
def debian_vm_store(tmp_path_factory, libvirt_driver) -> Path:
    """The bundled debian-12 recipe's libvirt box, built once per run (debootstrap + a bake VM,
    minutes under emulation) in a box store of its own; tests take it with ``debian_vm_box``."""
    home = tmp_path_factory.mktemp("debian-vm-home")
    r = subprocess.run(
        [*DEVENV, "box", "build", "debian-12", "--output", "libvirt"],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "DEVENV_HOME": str(home)},
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    return home / "boxes"


@pytest.fixture
def debian_vm_box(debian_vm_store) -> None:
    """debian-12 (libvirt) in this test's box store: hard links to the run's one build (QEMU only
    reads a box's files; each machine writes its own overlay)."""
    from devenv.boxes.store import store_root

    dest = store_root()
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", f"{debian_vm_store}/.", str(dest)], check=True)


class Registry:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, storage in a temp folder."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None, tls: bool = False) -> None:
        self.folder = folder
        self.ca: Path | None = None
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = folder / "data"
        self.storage.mkdir(parents=True)
        config = folder / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        if tls:
            self.ca = self._make_certificates(folder)
            with open(config, "a") as f:
                f.write(f"  tls:\n    certificate: {folder / 'cert.pem'}\n    key: {folder / 'key.pem'}\n")
        if users:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt  # libxcrypt's bcrypt: what distribution's htpasswd backend reads

                lines = [f"{u}:{crypt.crypt(pw, crypt.mksalt(crypt.METHOD_BLOWFISH))}" for u, pw in users.items()]
            (folder / "htpasswd").write_text("\n".join(lines) + "\n")
            with open(config, "a") as f:
                f.write(f"auth:\n  htpasswd:\n    realm: devenv-test\n    path: {folder / 'htpasswd'}\n")
        self.log = open(folder / "registry.log", "w")  # noqa: SIM115 - open for the process's life
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=self.log, stderr=self.log)
        import ssl
        import time
        import urllib.error
        import urllib.request

        scheme = "https" if tls else "http"
        context = ssl.create_default_context(cafile=str(self.ca)) if tls else None
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{scheme}://{self.host}/v2/", timeout=1, context=context)
                return
            except urllib.error.HTTPError:
                return  # it answers (401: it wants a login)
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"docker-registry did not start: {(folder / 'registry.log').read_text()}")

    @staticmethod
    def _make_certificates(folder: Path) -> Path:
        """A throw-away CA and a certificate for 127.0.0.1 signed by it, as a team runs its own."""

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=devenv test CA",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        )
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "req.pem"
        )
        (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl(
            "x509",
            "-req",
            "-in",
            "req.pem",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
            "-out",
            "cert.pem",
        )
        return folder / "ca.pem"

    def repo(self, name: str) -> str:
        return f"oci://{self.host}/{name}"

    def blob(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
        self.forget_images()

    def forget_images(self) -> None:
        """Images pulled from (or tagged for) this registry leave the engine with it: the port
        is never used again, so its tags would only pile up run after run."""
        try:
            import docker

            client = docker.from_env()
            for img in client.images.list():
                refs = [*img.tags, *(img.attrs.get("RepoDigests") or [])]
                ours = [r for r in refs if r.startswith(f"{self.host}/")]
                if refs and len(ours) == len(refs):
                    client.images.remove(img.id, force=True)
                else:
                    for tag in ours:
                        if "@" not in tag:
                            client.images.remove(tag)
        except Exception:  # noqa: BLE001 -- best-effort cleanup; no engine means nothing was pulled
            pass


@pytest.fixture
def private_registry(tmp_path):
    """A registry that wants a login (user team, password s3cret-pw), for one test."""
    from tests.support import missing

    if shutil.which("docker-registry") is None:
        missing("docker-registry is not installed (scripts/registry.sh installs it)")
    reg = Registry(tmp_path / "private-registry", users={"team": "s3cret-pw"})
    yield reg
    reg.stop()


@pytest.fixture
def tls_registry(tmp_path):
    """A registry on 127.0.0.1 with TLS from a throw-away CA (reg.ca), for one test."""
    from tests.support import missing

    if shutil.which("docker-registry") is None:
        missing("docker-registry is not installed (scripts/registry.sh installs it)")
    reg = Registry(tmp_path / "tls-registry", tls=True)
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    from tests.support import missing

    if shutil.which("docker-registry") is None:
        missing("docker-registry is not installed (scripts/registry.sh installs it)")
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


class VmProj(Proj):
    def domains(self, libvirt_driver) -> list[str]:
        out = []
        for dom in libvirt_driver.conn().listAllDomains(0):
            meta = libvirt_driver.metadata(f"{libvirt_driver.default_uri()}#{dom.name()}")
            if meta and meta["project"] == self.project_id:
                out.append(dom.name())
        return out

    def sweep(self) -> None:
        super().sweep()
        from devenv.drivers.libvirt.driver import LibvirtDriver

        try:
            LibvirtDriver().sweep(self.project_id)
        except Exception:  # noqa: BLE001 - best-effort cleanup after a failed test
            pass


@pytest.fixture
def vm(tmp_path, docker_client, libvirt_driver):
    root = tmp_path / "vmproj"
    root.mkdir()
    p = VmProj(root, docker_client)
    yield p
    p.sweep()


def run_image(client, image: str, cmd: list[str]) -> bytes:
    """`docker run IMAGE CMD` as production would, bounded: a keep-alive entrypoint would never end."""
    c = client.containers.run(image, cmd, detach=True)
    try:
        c.wait(timeout=30)
        return c.logs()
    finally:
        c.remove(force=True)
