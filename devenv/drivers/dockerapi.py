"""A minimal read-only Docker Engine API client over a unix socket.

`devenv status` asks the engine live every time; importing the docker SDK (and requests,
urllib3) costs more than the engine takes to answer. The hot read path (ping, list, inspect)
goes through http.client here; everything else uses the SDK.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse

API_VERSION = "v1.41"  # Docker 20.10; newer engines answer it too


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class EngineError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RawDocker:
    def __init__(self, socket_path: str, timeout: float = 30) -> None:
        self.path = socket_path
        self.timeout = timeout
        # One connection per thread: `up` works on independent machines in parallel threads.
        self._local = threading.local()

    def _request(self, path: str, query: dict | None = None) -> tuple[int, bytes]:
        url = f"/{API_VERSION}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = _UnixConnection(self.path, self.timeout)
            try:
                conn.request("GET", url, headers={"Host": "docker"})
                r = conn.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the engine closed: one fresh try.
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, query: dict | None = None) -> dict | list | None:
        status, body = self._request(path, query)
        if status == 404:
            return None
        if status >= 400:
            try:
                msg = json.loads(body).get("message", body.decode(errors="replace"))
            except ValueError:
                msg = body.decode(errors="replace")
            raise EngineError(status, msg)
        return json.loads(body) if body else None

    def ping(self) -> None:
        status, body = self._request("/_ping")
        if status != 200:
            raise EngineError(status, body.decode(errors="replace"))

    def containers(self, labels: list[str]) -> list[dict]:
        return self.get("/containers/json", {"all": "1", "filters": json.dumps({"label": labels})}) or []

    def inspect(self, container: str) -> dict | None:
        return self.get(f"/containers/{urllib.parse.quote(container)}/json")
