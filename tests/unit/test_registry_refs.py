"""Registry references, recipes' registry sources and their identity (the pure parts of team
boxes; pushes and pulls against a real registry are in tests/integration/test_registry.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.boxes import oci
from devenv.boxes.builders import registry
from devenv.contract import ProgressNote
from devenv.errors import DevfileError, UsageError
from devenv.model.recipe import load_recipe


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("oci://127.0.0.1:5000/boxes/debian-12", ("127.0.0.1:5000", "boxes/debian-12", None, None)),
        ("oci://registry.example.com/team/box:2026.12.2", ("registry.example.com", "team/box", "2026.12.2", None)),
        ("oci://r.example.com/b@sha256:" + "0" * 64, ("r.example.com", "b", None, "sha256:" + "0" * 64)),
        ("oci://[::1]:5000/b:1-libvirt", ("[::1]:5000", "b", "1-libvirt", None)),
    ],
)
def test_references_parse(text, want):
    assert tuple(oci.parse_ref(text)) == want
    assert str(oci.parse_ref(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "docker.io/library/debian",  # no scheme
        "oci://host/Upper",  # repositories are lowercase
        "oci://host/../etc",
        "oci://host/a:tag with space",
        "oci://host/a@sha256:short",
        "oci://host/a:-x",
        "https://host/a",
        "oci://user:pw@host/a",  # no credentials in a reference: Docker's store holds them
    ],
)
def test_bad_references_are_refused_with_the_form_to_write(text):
    with pytest.raises(UsageError) as exc:
        oci.parse_ref(text)
    assert "oci://HOST" in exc.value.hint


def test_plain_http_only_to_loopback():
    assert oci.is_loopback("127.0.0.1:5000") and oci.is_loopback("localhost:5000") and oci.is_loopback("[::1]:5000")
    assert not oci.is_loopback("registry.example.com") and not oci.is_loopback("10.0.0.5:5000")


def test_publish_wants_a_repository_not_a_tag():
    with pytest.raises(UsageError, match="not a tag"):
        registry.publish("debian-12", "1", "oci://127.0.0.1:5000/boxes/debian-12:1")


def _recipe(tmp_path: Path, source: str) -> Path:
    (tmp_path / "boxes").mkdir(exist_ok=True)
    p = tmp_path / "boxes" / "team.toml"
    p.write_text(f'name = "team"\nversion = "1"\n\n[[sources]]\ntype = "registry"\n{source}\n')
    return p


def test_a_registry_source_names_a_repository_and_bad_ones_have_their_line(tmp_path):
    r = load_recipe(_recipe(tmp_path, 'ref = "oci://127.0.0.1:5000/boxes/team"'))
    assert registry.registry_sources(r) == ["oci://127.0.0.1:5000/boxes/team"]
    with pytest.raises(DevfileError) as exc:
        load_recipe(_recipe(tmp_path, 'ref = "oci://127.0.0.1:5000/boxes/team:1"'))
    assert "team.toml:6: sources[0].ref" in "\n".join(exc.value.problems)
    with pytest.raises(DevfileError) as exc:
        load_recipe(_recipe(tmp_path, ""))
    assert "ref: is required for a 'registry' source" in "\n".join(exc.value.problems)


def test_a_recipe_with_a_registry_is_the_same_box_from_every_checkout(tmp_path):
    a, b = tmp_path / "laptop-a", tmp_path / "laptop-b"
    ref = 'ref = "oci://registry.example.com/team/box"'
    a.mkdir()
    b.mkdir()
    ra, rb = load_recipe(_recipe(a, ref)), load_recipe(_recipe(b, ref))
    assert ra.origin == rb.origin and ra.origin.startswith("registry-")
    other = load_recipe(_recipe(tmp_path, 'ref = "oci://registry.example.com/other/box"'))
    assert other.origin != ra.origin


def test_a_transfer_says_its_bytes_and_rate():
    import time

    note = ProgressNote()
    note.transfer(50 * 1024 * 1024, 200 * 1024 * 1024, time.monotonic() - 2)
    assert note.detail.startswith("50.0/200.0 MiB, ") and note.detail.endswith(" MiB/s")


def test_a_devfile_names_the_teams_registry_once_and_a_bad_one_has_its_line(tmp_path):
    from devenv.model import devfile

    (tmp_path / "Devfile").write_text(
        '[project]\nbox_registry = "oci://registry.example.com/boxes"\n\n[machines.m]\nbox = "debian-12"\n'
    )
    assert devfile.load(tmp_path / "Devfile").box_registry == "oci://registry.example.com/boxes"
    (tmp_path / "Devfile").write_text(
        '[project]\nbox_registry = "https://registry.example.com/boxes"\n\n[machines.m]\n'
    )
    with pytest.raises(DevfileError) as exc:
        devfile.load(tmp_path / "Devfile")
    assert any(p.line == 2 and p.key == "project.box_registry" for p in exc.value.problems), exc.value.problems


@pytest.fixture
def auth_server():
    """A catalog server on 127.0.0.1 that wants `Authorization: Bearer t0ken`; /moved redirects
    to a second server that records what it was sent."""
    import http.server
    import threading

    seen: list[str | None] = []

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"elsewhere")

        def log_message(self, *a):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)

    class Main(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{other.server_address[1]}/x")
                self.end_headers()
                return
            if self.headers.get("Authorization") != "Bearer t0ken":
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass

    main = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Main)
    for s in (main, other):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{main.server_address[1]}", seen
    main.shutdown()
    other.shutdown()


def test_http_credentials_come_from_the_environment_and_never_follow_a_redirect(auth_server, tmp_path, monkeypatch):
    from devenv.boxes import vagrantbox
    from devenv.errors import BoxError

    base, seen = auth_server
    with pytest.raises(BoxError, match="401"):
        vagrantbox.fetch(f"{base}/c.json", tmp_path / "a")
    monkeypatch.setenv("DEVENV_HTTP_TOKEN", "t0ken")
    assert vagrantbox.fetch(f"{base}/c.json", tmp_path / "b").read_bytes() == b"ok"
    vagrantbox.fetch(f"{base}/moved", tmp_path / "c")
    assert seen == [None]  # the redirect's target never got the token
    with pytest.raises(BoxError, match="over plain http") as exc:
        vagrantbox.fetch("http://catalog.example.com/c.json", tmp_path / "d")
    assert "t0ken" not in str(exc.value.message) + str(exc.value.hint)
