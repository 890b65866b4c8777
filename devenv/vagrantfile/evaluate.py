"""Run a Vagrantfile through Ruby against devenv's recorder and read back what it set.

The Vagrantfile is Ruby, so Ruby evaluates it (Debian's `ruby`, or the one Vagrant ships), but
against devenv/data/vagrant/recorder.rb instead of Vagrant: no provider, plugin, box or network
is needed, and nothing is written into the project (no .vagrant/; a stale one is never read).

It runs with the user's environment (Vagrantfiles read ENV), less the variables that change how
Ruby loads code; in the project folder, as Vagrant runs it; with stdin closed (a prompt reads
nothing); with a `vagrant` on PATH that refuses to run; for at most ``timeout`` seconds, its
whole process group killed after that. The recording comes back in a file in a private temp
folder, never on stdout, which the Vagrantfile may print to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from devenv.errors import BackendUnavailable, CommandFailed, DevfileError, UsageError

EVAL_TIMEOUT = 10.0
VAGRANTFILE_NAMES = ("Vagrantfile", "vagrantfile")
RECORDER = Path(__file__).resolve().parents[1] / "data" / "vagrant" / "recorder.rb"
# Where HashiCorp's own Vagrant package keeps its Ruby, when no `ruby` is on PATH.
VAGRANT_RUBY = Path("/opt/vagrant/embedded/bin/ruby")
INSTALL_RUBY = (
    "import-vagrant needs Ruby to read the Vagrantfile and found no `ruby` on PATH: "
    "install it with `apt-get install ruby` (Debian/Ubuntu)"
)
# Variables that make Ruby load other code than the Vagrantfile asks for (a gem set, -r options).
_RUBY_ENV = ("RUBYOPT", "RUBYLIB", "RUBYSHELL", "GEM_HOME", "GEM_PATH", "GEM_SPEC_CACHE", "RUBYGEMS_GEMDEPS")
_MAX_RECORDING = 64 * 1024 * 1024
_TAIL = 16 * 1024


def find_vagrantfile(path: Path) -> Path:
    """The Vagrantfile of ``path``: the file itself, or the one in that folder (never a parent's)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder or a Vagrantfile", hint="give the folder that holds the Vagrantfile")
    names = (os.environ["VAGRANT_VAGRANTFILE"],) if os.environ.get("VAGRANT_VAGRANTFILE") else VAGRANTFILE_NAMES
    for name in names:
        if (path / name).is_file():
            return path / name
    raise UsageError(f"no Vagrantfile in {path}", hint="give the folder that holds the Vagrantfile")


def find_ruby() -> str:
    found = shutil.which("ruby")
    if found:
        return found
    if VAGRANT_RUBY.is_file() and os.access(VAGRANT_RUBY, os.X_OK):
        return str(VAGRANT_RUBY)
    raise BackendUnavailable(INSTALL_RUBY)


def ruby_env(stub_bin: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _RUBY_ENV and not k.startswith("BUNDLE_")}
    env["PATH"] = f"{stub_bin}{os.pathsep}{env.get('PATH', os.defpath)}"
    return env


_STUB = """#!/bin/sh
echo "devenv import-vagrant: the Vagrantfile tried to run vagrant $*; refused (Vagrant is never run)" >&2
exit 127
"""


class _Tail:
    """The last bytes of a stream, read on a thread (a Vagrantfile may print without end)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.data = b""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for chunk in iter(lambda: stream.read(8192), b""):
            self.data = (self.data + chunk)[-_TAIL:]

    def text(self) -> str:
        self._thread.join(timeout=2)
        return self.data.decode("utf-8", "replace")


def evaluate(vagrantfile: Path, *, timeout: float = EVAL_TIMEOUT) -> dict[str, Any]:
    """What the Vagrantfile sets, as the recorder writes it (see recorder.rb for the shape).

    Raises BackendUnavailable (no Ruby), CommandFailed (time limit, the recorder failing)."""
    ruby = find_ruby()
    vagrantfile = vagrantfile.resolve()
    with tempfile.TemporaryDirectory(prefix="devenv-import-vagrant-") as tmp:
        stub = Path(tmp) / "bin"
        stub.mkdir()
        (stub / "vagrant").write_text(_STUB)
        (stub / "vagrant").chmod(0o755)
        out = Path(tmp) / "recording.json"
        argv = [ruby, "--disable-gems", "-E", "UTF-8", "-W0", str(RECORDER), str(out), str(vagrantfile)]
        try:
            proc = subprocess.Popen(
                argv,
                cwd=vagrantfile.parent,
                env=ruby_env(stub),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: a timeout ends what it started too
            )
        except OSError as exc:
            raise BackendUnavailable(f"cannot run {ruby}: {exc.strerror or exc}", hint=INSTALL_RUBY) from exc
        assert proc.stdout is not None and proc.stderr is not None
        tails = (_Tail(proc.stdout), _Tail(proc.stderr))
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise CommandFailed(
                f"the Vagrantfile {vagrantfile} did not finish loading within {timeout:g} s; nothing was written",
                hint="it may wait for input, the network or a command it runs; fix that, or allow longer with "
                "`devenv import-vagrant --timeout SECONDS`",
            ) from None
        finally:
            for s in (proc.stdout, proc.stderr):
                s.close()
        stderr = tails[1].text()
        try:
            raw = out.read_bytes()[: _MAX_RECORDING + 1]
        except OSError:
            raw = b""
        if not raw or len(raw) > _MAX_RECORDING:
            why = f"ruby exited with {code}" if code else "it wrote no recording"
            last = "\n  ".join(stderr.strip().splitlines()[-6:])
            raise CommandFailed(
                f"cannot read the Vagrantfile {vagrantfile} with {ruby}: {why}" + (f":\n  {last}" if last else ""),
                hint="import-vagrant evaluates it with `ruby --disable-gems`; Ruby 2.7 or later is needed",
            )
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CommandFailed(f"cannot read the Vagrantfile {vagrantfile}: the recording is not JSON ({exc})") from exc
    if "recorder_error" in data:
        raise CommandFailed(
            f"import-vagrant could not evaluate {vagrantfile}: {data['recorder_error']}",
            hint="this is a gap in devenv's Vagrantfile reader: please report it with the Vagrantfile",
        )
    return data


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def raise_for_error(data: dict[str, Any], shown: str) -> None:
    """The Vagrantfile's own exception, at its own file:line, as `validate` shows a problem."""
    err = data.get("error")
    if not err:
        return
    from devenv.model.devfile import LocatedProblem, display_path

    file = err.get("file") or data.get("vagrantfile") or shown
    where = display_path(Path(file))
    message = (err.get("message") or "").strip()
    first, *rest = message.splitlines() or [""]
    kind = err.get("class") or "error"
    if kind == "SystemExit":
        text = f"it stops here (exit {err.get('status')})" + (f": {first}" if first else "")
    else:
        text = f"{kind}: {first}" if first else kind
    shown_rest = [r for r in rest if r.strip()][:2]
    if kind == "SyntaxError" and shown_rest:
        text += "\n    " + "\n    ".join(shown_rest)
    hint = "fix it (Vagrant stops at the same place); nothing was written"
    missing = [n["text"] for n in data.get("notes", []) if n.get("kind") == "require_failed"]
    if missing and kind in ("NameError", "NoMethodError"):
        hint = (
            f"it requires {', '.join(repr(m) for m in missing)}, which import-vagrant does not load (it runs "
            "`ruby --disable-gems`, without Vagrant's plugins); make that part optional, then import again"
        )
    raise DevfileError(
        f"{shown} does not load",
        [LocatedProblem(where, err.get("line"), "", text)],
        hint=hint,
    )
