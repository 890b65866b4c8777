"""devenv's own Engine API client (drivers/dockerapi.py) against a scripted HTTP server on a unix socket.

The real engine is driven by tests/integration; here every way an HTTP/1.1 answer can be framed
(Content-Length, chunked, until-close, no body) and split across reads is checked byte for byte,
plus the request line and body the client sends.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from pathlib import Path

import pytest

from devenv.transports.dockerapi import EngineError, UnixEngine, demux, exec_config


class ScriptedEngine:
    """Accepts connections on a unix socket; answers each with the next scripted reply.

    A reply is a list of byte pieces, sent with a flush between them, so a test can split a
    header or a chunk across reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.replies: list[list[bytes]] = []
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                req = b""
                while b"\r\n\r\n" not in req:
                    req += conn.recv(65536)
                head, _, body = req.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                for piece in self.replies.pop(0):
                    conn.sendall(piece)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def engine(tmp_path):
    server = ScriptedEngine(tmp_path / "docker.sock")
    yield server, UnixEngine(str(tmp_path / "docker.sock"), timeout=5)
    server.close()


def reply(status: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(data)) + data


def test_content_length_json_and_request_line(engine):
    server, eng = engine
    body = json.dumps([{"Id": "abc", "Names": ["/x"]}]).encode()
    server.replies.append(
        [
            reply(
                "200 OK",
                body + b"garbage after the body is ignored",
                {"Content-Type": "application/json", "Content-Length": str(len(body))},
            )
        ]
    )
    assert eng.containers(["devenv.project=p1", "devenv.machine=web"]) == [{"Id": "abc", "Names": ["/x"]}]
    req = server.requests[0].decode()
    line = req.split("\r\n")[0]
    assert line.startswith("GET /v1.41/containers/json?all=1&filters=")
    assert "%22devenv.project%3Dp1%22" in line and "Host: docker" in req and "Connection: close" in req


def test_chunked_answer_split_across_reads(engine):
    server, eng = engine
    doc = json.dumps({"Id": "c1", "State": {"Status": "running"}, "pad": "x" * 5000}).encode()
    wire = chunked(doc[:3000], doc[3000:])
    head = reply("200 OK", b"", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    # The header's end, a chunk size line and a chunk body each cut in two.
    pieces = [head[:-3], head[-3:] + wire[:2], wire[2:10], wire[10:3004], wire[3004:]]
    server.replies.append(pieces)
    assert eng.inspect_container("c1")["State"]["Status"] == "running"


def test_body_until_close_and_no_body_answers(engine):
    server, eng = engine
    server.replies.append([reply("200 OK", b'{"Version": "20.10"}', {"Content-Type": "application/json"})])
    assert eng.version() == {"Version": "20.10"}
    # 204 (start) and HEAD (archive check) have no body even when the socket stays open.
    server.replies.append([reply("204 No Content", b"", {})])
    eng.start("c1")
    server.replies.append([reply("200 OK", b"", {"X-Docker-Container-Path-Stat": "e30="})])
    assert eng.archive_exists("c1", "/.devenv/keepalive") is True
    assert server.requests[-1].startswith(b"HEAD /v1.41/containers/c1/archive?path=%2F.devenv%2Fkeepalive ")


def test_errors_carry_status_and_engine_message(engine):
    server, eng = engine
    msg = json.dumps({"message": "No such container: nope"}).encode()
    server.replies.append(
        [reply("404 Not Found", msg, {"Content-Type": "application/json", "Content-Length": str(len(msg))})]
    )
    assert eng.inspect_container("nope") is None  # 404 on inspect: simply absent
    server.replies.append(
        [reply("404 Not Found", msg, {"Content-Type": "application/json", "Content-Length": str(len(msg))})]
    )
    with pytest.raises(EngineError) as exc:
        eng.start("nope")
    assert (exc.value.status, exc.value.message) == (404, "No such container: nope")
    server.replies.append([reply("500 Internal Server Error", b"plain text failure", {"Content-Length": "18"})])
    with pytest.raises(EngineError, match="plain text failure"):
        eng.kill("c1")


def test_create_sends_the_config_and_returns_the_id(engine):
    server, eng = engine
    out = b'{"Id":"new1","Warnings":[]}'
    server.replies.append(
        [reply("201 Created", out, {"Content-Type": "application/json", "Content-Length": str(len(out))})]
    )
    config = {"Image": "devenv-box/busybox:1", "Labels": {"a": "b"}, "HostConfig": {"Init": True}}
    assert eng.create_container(config, "devenv-p-web") == "new1"
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1.41/containers/create?name=devenv-p-web ")
    assert b"Content-Type: application/json" in head and json.loads(body) == config


def test_put_archive_sends_the_tar_bytes(engine):
    server, eng = engine
    server.replies.append([reply("200 OK", b"", {"Content-Length": "0"})])
    data = bytes(range(256)) * 8
    eng.put_archive("c1", "/", data)
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert b"Content-Type: application/x-tar" in head and body == data


def test_exec_streams_both_outputs_and_returns_the_exit_code(engine):
    server, eng = engine
    created = b'{"Id":"e1"}'
    server.replies.append([reply("201 Created", created, {"Content-Type": "application/json", "Content-Length": "11"})])
    stream = frame(1, b"hello ") + frame(2, b"oops\n") + frame(1, b"world\n")
    # The hijacked exec stream: no length, closed at the end; frames cut mid-header.
    head = reply("200 OK", b"", {"Content-Type": "application/vnd.docker.raw-stream"})
    server.replies.append([head + stream[:5], stream[5:17], stream[17:]])
    done = b'{"ExitCode": 3, "Running": false}'
    server.replies.append(
        [reply("200 OK", done, {"Content-Type": "application/json", "Content-Length": str(len(done))})]
    )
    out: list[bytes] = []
    err: list[bytes] = []
    code = eng.exec_run("c1", exec_config(["sh", "-c", "x"], {"K": "v"}, "app", "/w"), out.append, err.append)
    assert (code, b"".join(out), b"".join(err)) == (3, b"hello world\n", b"oops\n")
    sent = json.loads(server.requests[0].partition(b"\r\n\r\n")[2])
    assert sent == {
        "Cmd": ["sh", "-c", "x"],
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": False,
        "Env": ["K=v"],
        "User": "app",
        "WorkingDir": "/w",
    }
    assert server.requests[1].startswith(b"POST /v1.41/exec/e1/start ")


def test_logs_are_demultiplexed(engine):
    server, eng = engine
    body = frame(1, b"line one\n") + frame(2, b"line two\n")
    server.replies.append([reply("200 OK", body, {"Content-Length": str(len(body))})])
    assert eng.logs("c1", 10) == b"line one\nline two\n"
    assert b"tail=10" in server.requests[0]


def test_engine_gone_is_an_oserror(tmp_path):
    eng = UnixEngine(str(tmp_path / "missing.sock"), timeout=1)
    with pytest.raises(OSError):
        eng.ping()


def test_connection_closed_before_an_answer(engine):
    server, eng = engine
    server.replies.append([])  # accept, read the request, close without a word
    with pytest.raises(ConnectionResetError):
        eng.ping()


def test_demux_keeps_order_within_each_stream():
    out: list[bytes] = []
    err: list[bytes] = []
    wire = frame(1, b"a") + frame(2, b"b") + frame(1, b"c" * 70000)
    demux(iter([wire[i : i + 7] for i in range(0, len(wire), 7)]), out.append, err.append)
    assert b"".join(out) == b"a" + b"c" * 70000 and b"".join(err) == b"b"


def test_docker_context_is_followed_without_the_sdk(tmp_path, monkeypatch, engine):
    """A rootless or other non-default `docker context` with a unix socket gets the direct client."""
    import hashlib

    from devenv.drivers.docker.driver import DockerDriver
    from devenv.transports.dockerapi import context_host

    server, _ = engine
    cfg = tmp_path / "docker-config"
    meta = cfg / "contexts" / "meta" / hashlib.sha256(b"laptop").hexdigest()
    meta.mkdir(parents=True)
    sock = f"unix://{server.path}"
    meta.joinpath("meta.json").write_text(json.dumps({"Name": "laptop", "Endpoints": {"docker": {"Host": sock}}}))
    cfg.joinpath("config.json").write_text(json.dumps({"currentContext": "laptop"}))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    assert context_host() == sock
    d = DockerDriver()
    assert d.endpoint() == sock and isinstance(d.engine, UnixEngine) and d.engine.path == str(server.path)
    server.replies.append([reply("200 OK", b"OK", {"Content-Length": "2"})])
    d.check_available()
    assert server.requests[-1].startswith(b"GET /v1.41/_ping ")
    # DOCKER_CONTEXT wins over config.json; DOCKER_HOST over both; "default" is the default socket.
    monkeypatch.setenv("DOCKER_CONTEXT", "default")
    assert context_host() is None and DockerDriver().endpoint() == "unix:///var/run/docker.sock"
    monkeypatch.setenv("DOCKER_CONTEXT", "laptop")
    monkeypatch.setenv("DOCKER_HOST", "unix:///elsewhere.sock")
    assert DockerDriver().endpoint() == "unix:///elsewhere.sock"
    # A broken config is the default, not a crash.
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.delenv("DOCKER_CONTEXT")
    cfg.joinpath("config.json").write_text("{not json")
    assert context_host() is None
