"""The Docker Engine API calls devenv makes, behind one small interface with two implementations.

`UnixEngine` speaks HTTP/1.1 to a local unix socket itself. The docker SDK (with requests,
urllib3 and, through docker[ssh], paramiko) costs more to import than the engine takes to
create and start a container, so every machine-lifecycle call and `exec` on the usual local
engine goes through this. `SdkEngine` gives the same calls over the SDK's low-level client for
everything else (DOCKER_HOST=ssh:// or tcp://, docker contexts). Both raise EngineError for an
engine that answered with an error and OSError for one that could not be reached.

Image building, pulling, committing and listing boxes stay on the SDK: they are rare and slow
anyway.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

API_VERSION = "v1.41"  # Docker 20.10; newer engines answer it too

Output = Callable[[bytes], None]


class EngineError(Exception):
    """The engine answered with an HTTP error; `status` is its code (404: no such object)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def exec_config(argv: list[str], env: Mapping[str, str] | None, user: str | None, workdir: str | None) -> dict:
    """The body of POST /containers/{id}/exec: output attached, no TTY, no stdin."""
    config: dict[str, Any] = {"Cmd": list(argv), "AttachStdout": True, "AttachStderr": True, "Tty": False}
    if env:
        config["Env"] = [f"{k}={v}" for k, v in env.items()]
    if user:
        config["User"] = user
    if workdir:
        config["WorkingDir"] = workdir
    return config


def demux(frames: Iterator[bytes], on_stdout: Output, on_stderr: Output) -> None:
    """Split Docker's multiplexed stream (8-byte header: stream id, 3 zero bytes, big-endian size).

    Each frame's payload is handed on as soon as it is whole and strictly in stream order, never
    gathered per stream: stdout and stderr reach the callbacks interleaved as the engine sent them."""
    buf = b""
    for data in frames:
        buf += data
        while len(buf) >= 8:
            stream, size = buf[0], struct.unpack(">I", buf[4:8])[0]
            if len(buf) < 8 + size:
                break
            payload, buf = buf[8 : 8 + size], buf[8 + size :]
            (on_stderr if stream == 2 else on_stdout)(payload)


class _Response:
    """One HTTP/1.1 response read off a socket: status, headers, then the body in pieces."""

    def __init__(self, sock: socket.socket, method: str) -> None:
        self.sock = sock
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("the Docker engine closed the connection before answering")
            buf += data
        head, _, self._rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self._no_body = method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200

    def _raw(self) -> Iterator[bytes]:
        if self._rest:
            yield self._rest
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            yield data

    def chunks(self) -> Iterator[bytes]:
        if self._no_body:
            return
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            yield from self._dechunk()
            return
        length = self.headers.get("content-length")
        left = int(length) if length is not None else -1
        for data in self._raw():
            if left >= 0:
                data = data[:left]
                left -= len(data)
            if data:
                yield data
            if left == 0:
                return

    def _dechunk(self) -> Iterator[bytes]:
        buf = b""
        raw = self._raw()
        while True:
            while b"\r\n" not in buf:
                buf += next(raw, b"") or _eof()
            line, _, buf = buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                return
            while len(buf) < size + 2:
                buf += next(raw, b"") or _eof()
            yield buf[:size]
            buf = buf[size + 2 :]

    def read(self) -> bytes:
        return b"".join(self.chunks())


def _multiplexed(data: bytes) -> bool:
    return len(data) >= 8 and data[0] in (0, 1, 2) and data[1:4] == b"\0\0\0"


def _eof() -> bytes:
    raise ConnectionResetError("the Docker engine closed the connection mid-answer")


def _message(status: int, body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", "")) or f"HTTP {status}"
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip() or f"HTTP {status}"


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class UnixEngine:
    """The Engine API over a local unix socket: one connection per call (cheap on a unix socket)."""

    local = True

    def __init__(self, socket_path: str, timeout: float = 120) -> None:
        self.path = socket_path
        self.timeout = timeout

    def _open(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float | None = -1,
    ) -> _Response:
        url = f"/{API_VERSION}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout if timeout == -1 else timeout)
            sock.connect(self.path)
            head = f"{method} {url} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
            if body is not None:
                head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            sock.sendall(head.encode() + b"\r\n" + (body or b""))
            return _Response(sock, method)
        except BaseException:
            sock.close()
            raise

    def _call(self, method: str, path: str, query=None, body=None, content_type="application/json", timeout=-1):
        r = self._open(method, path, query, body, content_type, timeout)
        try:
            data = r.read()
        finally:
            r.sock.close()
        if r.status >= 400:
            raise EngineError(r.status, _message(r.status, data))
        return json.loads(data) if data and r.headers.get("content-type", "").startswith("application/json") else data

    def _json(self, method: str, path: str, payload: Any, query=None, timeout=-1):
        return self._call(method, path, query, json.dumps(payload).encode(), timeout=timeout)

    # -- reads ---------------------------------------------------------------------------------
    def ping(self) -> None:
        self._call("GET", "/_ping")

    def version(self) -> dict:
        return self._call("GET", "/version")

    def info(self) -> dict:
        return self._call("GET", "/info")

    def containers(self, labels: list[str]) -> list[dict]:
        return self._call("GET", "/containers/json", {"all": "1", "filters": json.dumps({"label": labels})}) or []

    def _get_or_none(self, path: str) -> dict | None:
        """GET an object; None when the engine has no such object (404)."""
        try:
            return self._call("GET", path)
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    def inspect_container(self, container: str) -> dict | None:
        return self._get_or_none(f"/containers/{_q(container)}/json")

    def inspect_image(self, image: str) -> dict | None:
        return self._get_or_none(f"/images/{_q(image)}/json")

    def logs(self, container: str, tail: int) -> bytes:
        data = self._call("GET", f"/containers/{_q(container)}/logs", {"stdout": 1, "stderr": 1, "tail": tail})
        if not _multiplexed(data):
            return data  # a TTY container's log is the plain stream
        out: list[bytes] = []
        demux(iter([data]), out.append, out.append)
        return b"".join(out)

    def archive_exists(self, container: str, path: str) -> bool:
        try:
            self._call("HEAD", f"/containers/{_q(container)}/archive", {"path": path})
            return True
        except EngineError as exc:
            if exc.status == 404:
                return False
            raise

    def get_archive(self, container: str, path: str) -> bytes:
        return self._call("GET", f"/containers/{_q(container)}/archive", {"path": path})

    # -- lifecycle -----------------------------------------------------------------------------
    def create_container(self, config: dict, name: str) -> str:
        return self._json("POST", "/containers/create", config, {"name": name})["Id"]

    def put_archive(self, container: str, path: str, data: bytes) -> None:
        self._call("PUT", f"/containers/{_q(container)}/archive", {"path": path}, data, "application/x-tar")

    def start(self, container: str) -> None:
        self._call("POST", f"/containers/{_q(container)}/start")

    def stop(self, container: str, timeout: int) -> None:
        self._call("POST", f"/containers/{_q(container)}/stop", {"t": timeout}, timeout=timeout + 60)

    def kill(self, container: str) -> None:
        self._call("POST", f"/containers/{_q(container)}/kill")

    def remove(self, container: str) -> None:
        # v: anonymous volumes (from the image's VOLUME lines) go with the container.
        self._call("DELETE", f"/containers/{_q(container)}", {"v": 1, "force": 1})

    # -- networks ------------------------------------------------------------------------------
    def networks(self, labels: list[str]) -> list[dict]:
        return self._call("GET", "/networks", {"filters": json.dumps({"label": labels})}) or []

    def inspect_network(self, network: str) -> dict | None:
        return self._get_or_none(f"/networks/{_q(network)}")

    def create_network(self, config: dict) -> str:
        return self._json("POST", "/networks/create", config)["Id"]

    def connect_network(self, network: str, container: str, endpoint: dict) -> None:
        self._json("POST", f"/networks/{_q(network)}/connect", {"Container": container, "EndpointConfig": endpoint})

    def remove_network(self, network: str) -> None:
        self._call("DELETE", f"/networks/{_q(network)}")

    def pause(self, container: str) -> None:
        self._call("POST", f"/containers/{_q(container)}/pause")

    def unpause(self, container: str) -> None:
        self._call("POST", f"/containers/{_q(container)}/unpause")

    def exec_run(self, container: str, config: dict, on_stdout: Output, on_stderr: Output) -> int | None:
        """Run an exec to its end, streaming its output; returns its exit code."""
        exec_id = self._json("POST", f"/containers/{_q(container)}/exec", config)["Id"]
        # The engine hijacks the connection and streams until the process ends: no timeout.
        r = self._open("POST", f"/exec/{exec_id}/start", body=b'{"Detach":false,"Tty":false}', timeout=None)
        try:
            if r.status >= 400:
                raise EngineError(r.status, _message(r.status, r.read()))
            demux(r.chunks(), on_stdout, on_stderr)
        finally:
            r.sock.close()
        return self._call("GET", f"/exec/{exec_id}/json").get("ExitCode")


class SdkEngine:
    """The same calls through the docker SDK's low-level client (remote engines, contexts)."""

    local = False

    def __init__(self, api: Any) -> None:
        self.api = api

    @staticmethod
    def _translate(exc: Exception) -> Exception:
        """The SDK's errors as this module's: EngineError, or OSError for an engine not reached."""
        import docker.errors
        import requests

        if isinstance(exc, docker.errors.APIError):
            return EngineError(exc.status_code or 500, str(exc.explanation or exc))
        if isinstance(exc, requests.exceptions.ConnectionError):
            return ConnectionError(str(exc))
        return exc

    def _do(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - translated, or re-raised as it is
            new = self._translate(exc)
            if new is exc:
                raise
            raise new from exc

    def _maybe(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return self._do(fn, *args, **kwargs)
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    @property
    def base_url(self) -> str:
        return self.api.base_url

    def ping(self) -> None:
        self._do(self.api.ping)

    def version(self) -> dict:
        return self._do(self.api.version)

    def info(self) -> dict:
        return self._do(self.api.info)

    def containers(self, labels: list[str]) -> list[dict]:
        return self._do(self.api.containers, all=True, filters={"label": labels})

    def inspect_container(self, container: str) -> dict | None:
        return self._maybe(self.api.inspect_container, container)

    def inspect_image(self, image: str) -> dict | None:
        return self._maybe(self.api.inspect_image, image)

    def logs(self, container: str, tail: int) -> bytes:
        return self._do(self.api.logs, container, tail=tail)

    def archive_exists(self, container: str, path: str) -> bool:
        return self._maybe(self.api.get_archive, container, path) is not None

    def get_archive(self, container: str, path: str) -> bytes:
        stream, _stat = self._do(self.api.get_archive, container, path)
        return b"".join(stream)

    def create_container(self, config: dict, name: str) -> str:
        return self._do(self.api.create_container_from_config, config, name)["Id"]

    def put_archive(self, container: str, path: str, data: bytes) -> None:
        self._do(self.api.put_archive, container, path, data)

    def start(self, container: str) -> None:
        self._do(self.api.start, container)

    def stop(self, container: str, timeout: int) -> None:
        self._do(self.api.stop, container, timeout=timeout)

    def kill(self, container: str) -> None:
        self._do(self.api.kill, container)

    def remove(self, container: str) -> None:
        self._do(self.api.remove_container, container, v=True, force=True)

    def networks(self, labels: list[str]) -> list[dict]:
        return self._do(self.api.networks, filters={"label": labels}) or []

    def inspect_network(self, network: str) -> dict | None:
        return self._maybe(self.api.inspect_network, network)

    def create_network(self, config: dict) -> str:
        return self._do(
            self.api.create_network,
            config["Name"],
            driver=config.get("Driver", "bridge"),
            internal=bool(config.get("Internal")),
            labels=config.get("Labels"),
            ipam=config.get("IPAM"),
            check_duplicate=True,
        )["Id"]

    def connect_network(self, network: str, container: str, endpoint: dict) -> None:
        self._do(
            self.api.connect_container_to_network,
            container,
            network,
            aliases=endpoint.get("Aliases"),
            ipv4_address=(endpoint.get("IPAMConfig") or {}).get("IPv4Address"),
        )

    def remove_network(self, network: str) -> None:
        self._do(self.api.remove_network, network)

    def pause(self, container: str) -> None:
        self._do(self.api.pause, container)

    def unpause(self, container: str) -> None:
        self._do(self.api.unpause, container)

    def exec_run(self, container: str, config: dict, on_stdout: Output, on_stderr: Output) -> int | None:
        ex = self._do(
            self.api.exec_create,
            container,
            config["Cmd"],
            stdout=True,
            stderr=True,
            tty=False,
            environment=config.get("Env"),
            user=config.get("User", ""),
            workdir=config.get("WorkingDir"),
        )

        try:
            # One (stdout, stderr) pair per frame, one side None, in stream order (never gathered).
            for out, err in self.api.exec_start(ex["Id"], stream=True, demux=True):
                if out:
                    on_stdout(out)
                if err:
                    on_stderr(err)
        except Exception as exc:  # noqa: BLE001 - the stream fails like any other call
            new = self._translate(exc)
            if new is exc:
                raise
            raise new from exc
        return self._do(self.api.exec_inspect, ex["Id"]).get("ExitCode")


def context_host() -> str | None:
    """The engine address of the current non-default `docker context` (DOCKER_CONTEXT or the CLI's
    config.json), read from the CLI's own files without importing the SDK; None for the default."""
    import hashlib
    import json

    config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    name = os.environ.get("DOCKER_CONTEXT")
    if not name:
        try:
            name = json.loads((config / "config.json").read_text()).get("currentContext")
        except (OSError, ValueError, AttributeError):
            return None
    if not name or name == "default":
        return None
    meta = config / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    try:
        return json.loads(meta.read_text())["Endpoints"]["docker"]["Host"] or None
    except (OSError, ValueError, KeyError, TypeError):
        return None
