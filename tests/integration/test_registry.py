"""Team boxes through a real OCI registry (Debian's docker-registry on 127.0.0.1): a box built and
published once is pulled on a "second laptop" (a fresh DEVENV_HOME, the local image removed)
instead of built; every digest is checked; a registry that is down is one line and a build.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.integration.conftest import assert_no_traceback

TEAMBOX = """\
name = "teambox"
version = "1.0.0"
outputs = ["docker"]
provision = [{{ type = "shell", inline = "echo built-by-ci > /etc/teambox" }}]

[[sources]]
type = "registry"
ref = "{ref}"

[[sources]]
type = "busybox"
"""

DEVFILE = '[machines.app]\nbox = "teambox"\n'


def _fresh_laptop(proj, tmp_path, docker_client, name: str) -> dict:
    """A new DEVENV_HOME and no local box image: what a new engineer's laptop has."""
    home = tmp_path / name
    home.mkdir()
    try:
        docker_client.images.remove("devenv-box/teambox:1.0.0", force=True)
    except Exception:  # noqa: BLE001 - not there: already a fresh laptop
        pass
    (proj.root / "Devfile.lock").unlink(missing_ok=True)
    return {"DEVENV_HOME": str(home)}


@pytest.mark.docker
def test_a_published_docker_box_is_pulled_not_built_and_the_lock_holds_it(proj, registry, docker_client, tmp_path):
    proj.write("boxes/teambox.toml", TEAMBOX.format(ref=registry.repo("boxes/teambox")))
    proj.devfile(DEVFILE)
    _fresh_laptop(proj, tmp_path, docker_client, "ci")  # CI's build starts from nothing too
    proj.run("box", "build", "teambox", "--output", "docker", check=True, timeout=300)
    r = proj.run("--progress", "json", "box", "publish", "teambox", "--to", registry.repo("boxes/teambox"))
    assert r.returncode == 0, r.stderr
    [event] = [e for e in map(json.loads, r.stderr.splitlines()) if e.get("phase") == "publish"]
    assert event["output"] == "docker" and event["digest"].startswith("sha256:")
    assert event["ref"] == f"{registry.repo('boxes/teambox')}:1.0.0@{event['digest']}"

    env = _fresh_laptop(proj, tmp_path, docker_client, "laptop2")
    r = proj.run("up", env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"box teambox@1.0.0 (docker) pulled from {registry.repo('boxes/teambox')}:1.0.0" in r.stderr
    assert "building box" not in r.stderr and "bake" not in r.stderr  # nothing was built here
    assert proj.run("exec", "app", "--", "cat", "/etc/teambox", env=env).stdout == "built-by-ci\n"
    lock = (proj.root / "Devfile.lock").read_text()
    pinned = docker_client.images.get("devenv-box/teambox:1.0.0").id
    assert pinned in lock
    proj.run("destroy", "-f", env=env, check=True)

    # Reproduce production: the exact artifact by digest, whatever the tag says later; the lock
    # is not touched.
    env3 = _fresh_laptop(proj, tmp_path, docker_client, "laptop3")
    r = proj.run("up", "--box", event["ref"], env=env3, timeout=300)
    assert r.returncode == 0, r.stderr
    assert proj.run("exec", "app", "--", "cat", "/etc/teambox", env=env3).stdout == "built-by-ci\n"
    assert not (proj.root / "Devfile.lock").exists()
    proj.run("destroy", "-f", env=env3, check=True)

    # The tag moves (a rebuild published again): a laptop whose Devfile.lock pins the old
    # artifact refuses the new one instead of following the tag.
    proj.run("box", "build", "teambox", "--output", "docker", "--force", env=env, check=True, timeout=300)
    proj.run("box", "publish", "teambox", "--to", registry.repo("boxes/teambox"), env=env, check=True)
    docker_client.images.remove("devenv-box/teambox:1.0.0", force=True)
    (proj.root / "Devfile.lock").write_text(lock)
    r = proj.run("up", env=env, timeout=300)
    assert r.returncode == 7, r.stderr  # BoxError
    assert "Devfile.lock says" in r.stderr and "refused" in r.stderr and "devenv box update" in r.stderr
    assert_no_traceback(r)
    assert proj.labelled()["containers"] == []


@pytest.mark.docker
def test_a_registry_that_is_down_is_one_line_then_a_build_and_frozen_refuses(proj, docker_client, tmp_path):
    from tests.integration.conftest import free_port

    dead = f"oci://127.0.0.1:{free_port()}/boxes/teambox"
    proj.write("boxes/teambox.toml", TEAMBOX.format(ref=dead))
    proj.devfile(DEVFILE)
    env = _fresh_laptop(proj, tmp_path, docker_client, "laptop")
    r = proj.run("up", env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "building it instead" in line]
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0], r.stderr
    assert "building box teambox@1.0.0" in r.stderr
    proj.run("destroy", "-f", env=env, check=True)

    env = _fresh_laptop(proj, tmp_path, docker_client, "laptop-frozen")
    proj.run("up", env=env, check=True, timeout=300)  # writes Devfile.lock (by a build)
    proj.run("destroy", "-f", env=env, check=True)
    docker_client.images.remove("devenv-box/teambox:1.0.0", force=True)
    r = proj.run("up", "--frozen", env=env, timeout=300)
    assert r.returncode == 7, r.stderr
    assert "--frozen" in r.stderr and "could not be pulled" in r.stderr
    assert_no_traceback(r)
    assert proj.labelled()["containers"] == []


TINY_RECIPE = """\
name = "tiny-vm"
version = "1"
outputs = ["libvirt"]

[[sources]]
type = "registry"
ref = "{ref}"
"""


@pytest.mark.libvirt
def test_a_published_vm_box_is_pulled_verified_and_boots(vm, tiny_box, registry, tmp_path):
    from devenv.boxes import oci

    repo = registry.repo("boxes/tiny-vm")
    r = vm.run("--progress", "json", "box", "publish", "tiny-vm@1", "--to", repo, "--output", "libvirt")
    assert r.returncode == 0, r.stderr
    [event] = [e for e in map(json.loads, r.stderr.splitlines()) if e.get("phase") == "publish"]
    digest = event["digest"]

    vm.write("boxes/tiny-vm.toml", TINY_RECIPE.format(ref=repo))
    vm.devfile('[machines.t]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "256MiB"\n')

    # A blob cut short in the registry: refused, nothing stored, no partial file left.
    manifest, _ = oci.Registry(registry.host).manifest(oci.parse_ref(f"{repo}:1-libvirt"))
    [disk] = [layer for layer in manifest["layers"] if layer["annotations"][oci.KEY] == "disk"]
    blob = registry.blob(disk["digest"])
    saved = tmp_path / "blob"
    shutil.copy2(blob, saved)
    with open(blob, "r+b") as f:
        f.truncate(disk["size"] // 2)
    home = tmp_path / "laptop-bad"
    r = vm.run("up", env={"DEVENV_HOME": str(home)}, timeout=300)
    assert r.returncode == 7, r.stderr
    assert "does not match its manifest" in r.stderr and "nothing stored" in r.stderr
    assert_no_traceback(r)
    assert not (home / "boxes" / "tiny-vm").exists()
    assert not list((home).glob(".pull-*"))

    # The next attempt, with the registry whole again, works: the exact artifact boots.
    shutil.copy2(saved, blob)
    home = tmp_path / "laptop2"
    r = vm.run("up", env={"DEVENV_HOME": str(home)}, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"pulled from {repo}:1-libvirt" in r.stderr
    assert vm.run("ssh", "t", "-c", "echo booted", env={"DEVENV_HOME": str(home)}).stdout == "booted\n"
    box = json.loads(next((home / "boxes" / "tiny-vm" / "1" / "libvirt").glob("box.json")).read_text())
    assert box["source"] == {"registry": f"{repo}:1-libvirt", "manifest": digest}
    vm.run("destroy", "-f", env={"DEVENV_HOME": str(home)}, check=True)

    # `up --box oci://...@sha256:` boots that exact artifact, stored apart from the recipe's box.
    home = tmp_path / "laptop3"
    r = vm.run("up", "--box", f"{repo}@{digest}", env={"DEVENV_HOME": str(home)}, timeout=600)
    assert r.returncode == 0, r.stderr
    st = {m["name"]: m for m in json.loads(vm.run("status", "--json", env={"DEVENV_HOME": str(home)}).stdout)}
    assert st["t"]["box"] == f"tiny-vm@1-{digest[7:19]}" and st["t"]["state"] == "running"
    vm.run("destroy", "-f", env={"DEVENV_HOME": str(home)}, check=True)


CATALOG_RECIPE = """\
name = "tiny-vm"
version = "1"
outputs = ["libvirt"]

[[sources]]
type = "catalog"
url = "{url}"
"""


@pytest.fixture
def http_folder(tmp_path):
    """A static web server on 127.0.0.1 for a folder (how a team serves its catalog)."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.libvirt
def test_a_vm_box_in_a_static_catalog_is_pulled_and_a_version_without_checksum_refused(
    vm, tiny_box, http_folder, tmp_path
):
    folder, base = http_folder
    r = vm.run("box", "publish", "tiny-vm@1", "--to", str(folder))
    assert r.returncode == 0, r.stderr
    catalog = json.loads((folder / "tiny-vm.json").read_text())
    [entry] = catalog["versions"]
    [prov] = entry["providers"]
    assert (entry["version"], prov["name"], prov["url"]) == ("1", "libvirt", "tiny-vm/1/libvirt.box")
    from devenv.boxes.store import sha256_file

    assert prov["checksum"] == sha256_file(folder / prov["url"])

    # A listing without a checksum is refused before anything is downloaded or stored.
    bad = dict(catalog, versions=[dict(entry, providers=[{k: v for k, v in prov.items() if k != "checksum"}])])
    (folder / "bad.json").write_text(json.dumps(bad))
    vm.write("boxes/tiny-vm.toml", CATALOG_RECIPE.format(url=f"{base}/bad.json"))
    vm.devfile('[machines.t]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "256MiB"\n')
    home = tmp_path / "laptop-bad"
    r = vm.run("up", env={"DEVENV_HOME": str(home)}, timeout=300)
    assert r.returncode == 7 and "has no checksum" in r.stderr, r.stderr
    assert not (home / "boxes" / "tiny-vm").exists()

    vm.write("boxes/tiny-vm.toml", CATALOG_RECIPE.format(url=f"{base}/tiny-vm.json"))
    home = tmp_path / "laptop2"
    r = vm.run("up", env={"DEVENV_HOME": str(home)}, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"pulled from the catalog {base}/tiny-vm.json" in r.stderr
    assert vm.run("ssh", "t", "-c", "echo booted", env={"DEVENV_HOME": str(home)}).stdout == "booted\n"
    vm.run("destroy", "-f", env={"DEVENV_HOME": str(home)}, check=True)


@pytest.mark.libvirt
def test_wrong_credentials_are_one_message_and_never_printed(vm, tiny_box, private_registry, tmp_path):
    import base64

    cfg = tmp_path / "docker-config"
    cfg.mkdir()
    repo = private_registry.repo("boxes/tiny-vm")

    def login(password: str) -> dict:
        auth = base64.b64encode(f"team:{password}".encode()).decode()
        (cfg / "config.json").write_text(json.dumps({"auths": {private_registry.host: {"auth": auth}}}))
        return {"DOCKER_CONFIG": str(cfg)}

    for env in ({"DOCKER_CONFIG": str(tmp_path / "nobody")}, login("not-the-password")):
        r = vm.run("box", "publish", "tiny-vm@1", "--to", repo, "--output", "libvirt", env=env)
        assert r.returncode == 7, r.stderr
        assert "refused access" in r.stderr and f"docker login {private_registry.host}" in r.stderr
        assert "not-the-password" not in r.stderr + r.stdout
        assert_no_traceback(r)
    r = vm.run("box", "publish", "tiny-vm@1", "--to", repo, "--output", "libvirt", env=login("s3cret-pw"))
    assert r.returncode == 0, r.stderr
    assert "s3cret-pw" not in r.stderr + r.stdout


@pytest.mark.libvirt
def test_a_tls_registry_with_the_teams_own_ca(vm, tiny_box, tls_registry, tmp_path):
    repo = tls_registry.repo("boxes/tiny-vm")
    # Without the CA the certificate does not check out: one message, the CA variable named.
    r = vm.run("box", "publish", "tiny-vm@1", "--to", repo, "--output", "libvirt")
    assert r.returncode == 3 and "does not pass the TLS check" in r.stderr and "DEVENV_REGISTRY_CA" in r.stderr
    assert_no_traceback(r)
    ca = {"DEVENV_REGISTRY_CA": str(tls_registry.ca)}
    vm.run("box", "publish", "tiny-vm@1", "--to", repo, "--output", "libvirt", env=ca, check=True)

    vm.write("boxes/tiny-vm.toml", TINY_RECIPE.format(ref=repo))
    vm.devfile('[machines.t]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "256MiB"\n')
    home = {**ca, "DEVENV_HOME": str(tmp_path / "laptop")}
    r = vm.run("up", env=home, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"pulled from {repo}:1-libvirt" in r.stderr
    vm.run("destroy", "-f", env=home, check=True)


@pytest.mark.libvirt
def test_a_disk_that_fills_while_pulling_leaves_nothing_and_the_next_pull_works(vm, tiny_box, registry, tmp_path):
    """DEVENV_HOME on a 2 MiB tmpfs: the box does not fit. One message, nothing stored, no partial."""
    import subprocess

    repo = registry.repo("boxes/tiny-vm-full")
    vm.run("box", "publish", "tiny-vm@1", "--to", repo, "--output", "libvirt", check=True)
    vm.write("boxes/tiny-vm.toml", TINY_RECIPE.format(ref=repo))
    vm.devfile('[machines.t]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "256MiB"\n')
    small = tmp_path / "small-disk"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)]).returncode != 0:
        pytest.fail("cannot mount a small tmpfs (needs root): the disk-full case is not exercised")
    try:
        r = vm.run("up", env={"DEVENV_HOME": str(small)}, timeout=300)
        assert r.returncode == 7, r.stderr
        assert "free some disk space" in r.stderr and "No space left" in r.stderr, r.stderr
        assert_no_traceback(r)
        assert not (small / "boxes" / "tiny-vm").exists()
        assert [p.name for p in small.rglob("*") if p.name.endswith(".partial") or p.name.startswith(".pull-")] == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
    home = {"DEVENV_HOME": str(tmp_path / "roomy")}
    r = vm.run("up", env=home, timeout=600)
    assert r.returncode == 0, r.stderr
    vm.run("destroy", "-f", env=home, check=True)


@pytest.mark.libvirt
def test_a_missing_tag_falls_back_in_one_line_and_a_tampered_manifest_is_refused(vm, tiny_box, registry, tmp_path):
    from devenv.boxes import oci

    repo = registry.repo("boxes/tiny-vm-tamper")
    r = vm.run("--progress", "json", "box", "publish", "tiny-vm@1", "--to", repo, "--output", "libvirt")
    assert r.returncode == 0, r.stderr
    [event] = [e for e in map(json.loads, r.stderr.splitlines()) if e.get("phase") == "publish"]

    # A version the registry does not have: one line, then the next source (here: none left).
    vm.write("boxes/tiny-vm.toml", TINY_RECIPE.format(ref=repo).replace('version = "1"', 'version = "9"'))
    vm.devfile('[machines.t]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "256MiB"\n')
    r = vm.run("up", env={"DEVENV_HOME": str(tmp_path / "h1")}, timeout=300)
    lines = [line for line in r.stderr.splitlines() if "is not in the registry" in line]
    assert len(lines) == 1 and "building it instead" in lines[0], r.stderr
    assert r.returncode == 7 and "needs a debootstrap, cloud-image or box source" in r.stderr
    assert_no_traceback(r)

    # The registry's stored manifest altered: asked for by digest, it is not that artifact.
    manifest = registry.blob(event["digest"])
    doc = json.loads(manifest.read_text())
    doc["annotations"]["org.opencontainers.image.version"] = "tampered"
    manifest.write_text(json.dumps(doc))
    r = vm.run("up", "--box", f"{repo}@{event['digest']}", env={"DEVENV_HOME": str(tmp_path / "h2")}, timeout=300)
    assert r.returncode == 7 and "it is not the artifact asked for" in r.stderr, r.stderr
    assert not (tmp_path / "h2" / "boxes" / "tiny-vm").exists()
    assert oci.parse_ref(f"{repo}@{event['digest']}").digest == event["digest"]
