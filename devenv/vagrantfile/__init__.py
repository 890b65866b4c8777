"""Reading a Vagrant project into a native Devfile (`devenv import-vagrant`).

    evaluate.py   the Vagrantfile, run by Ruby against devenv/data/vagrant/recorder.rb -> JSON
    mapping.py    that JSON -> the Devfile as data, with a note wherever Vagrant's setting does
                  not carry over as it was (box table in boxes.py)
    document.py   the Devfile's TOML text, comments included

It sits on the model (it writes what devenv.model.devfile loads, and checks it with it) and
knows no engine: no driver, transport or state is imported, and Vagrant is never run. Only the
import-vagrant command loads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from devenv.errors import DevfileError


@dataclass(frozen=True)
class Imported:
    text: str  # the Devfile
    vagrantfile: Path
    machines: tuple[tuple[str, str], ...]  # (devenv name, Vagrant name)
    notes: int  # the "changed" and "not carried over" notes in it


def import_vagrantfile(
    vagrantfile: Path, devfile_path: Path, *, driver: str = "docker", timeout: float | None = None
) -> Imported:
    """The native Devfile for ``vagrantfile``, to be written at ``devfile_path`` (its folder is the
    project root that paths are written relative to). Nothing is written here.

    Raises DevfileError (the Vagrantfile raises, names a missing script, or maps to a Devfile that
    does not validate), BackendUnavailable (no Ruby), CommandFailed (time limit)."""
    from devenv.model import devfile as model
    from devenv.vagrantfile.document import render
    from devenv.vagrantfile.evaluate import EVAL_TIMEOUT, evaluate, raise_for_error
    from devenv.vagrantfile.mapping import Importer

    vagrantfile = vagrantfile.resolve()
    shown = model.display_path(vagrantfile)
    recording = evaluate(vagrantfile, timeout=EVAL_TIMEOUT if timeout is None else timeout)
    raise_for_error(recording, shown)
    importer = Importer(recording, vagrantfile=vagrantfile, devfile_path=devfile_path, driver=driver)
    doc = importer.document()
    if importer.problems:
        n = len(importer.problems)
        raise DevfileError(
            f"{shown} names {n} file{'s' if n != 1 else ''} that {'do' if n != 1 else 'does'} not exist",
            importer.problems,
            hint="Vagrant would stop on them too: add them or fix the paths, then import again; nothing was written",
        )
    text = render(doc)
    # Where the file will be, by its folder's real path: a link planted at the name is replaced by
    # the write (write_new_file), never followed, so it is not followed here either.
    target = Path(os.path.realpath(devfile_path.absolute().parent)) / devfile_path.name
    _, problems = model.check_text(text, target)
    if problems:
        raise DevfileError(
            f"the Devfile made from {shown} does not validate",
            problems,
            hint="nothing was written; this is a gap in import-vagrant: please report it with the Vagrantfile",
        )
    return Imported(
        text=text,
        vagrantfile=vagrantfile,
        machines=tuple(importer.machine_names),
        notes=sum(n.lossy for n in doc.notes()),
    )
