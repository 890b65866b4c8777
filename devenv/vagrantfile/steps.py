"""Vagrant provisioners -> devenv provision steps (shell, file, ansible; the others -> notes).

Two habits of Vagrant boxes are kept where a step needs them: Vagrant ran shell scripts with
bash (inline ones, and files without a #! line), and its boxes log in as `vagrant` (home
/home/vagrant, passwordless sudo); `privileged: false` ran a script as that user. devenv runs
steps with /bin/sh as root, and debian-12's login user is `dev`. So a script with bash syntax
runs under bash, and a machine whose steps expect the vagrant user gets a first step that makes
it (a note says so, and when to drop it).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv.vagrantfile import boxes
from devenv.vagrantfile.context import Context, arg, options_text, plain_options, shown
from devenv.vagrantfile.document import Item, Note

COMPAT_USER = "vagrant"
SCRIPT_READ_MAX = 1024 * 1024
COMPAT_STEP = {
    "type": "shell",
    "name": "vagrant user (import-vagrant)",
    "inline": (
        "id -u vagrant >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --user-group vagrant\n"
        "printf 'vagrant ALL=(ALL) NOPASSWD:ALL\\n' > /etc/sudoers.d/vagrant\n"
        "chmod 0440 /etc/sudoers.d/vagrant\n"
    ),
}
COMPAT_NOTE = (
    "added by import-vagrant: the steps below expect the vagrant user Vagrant boxes have (its home, running as it); "
    "debian-12's login user is dev. Drop this step once they do not"
)
# Shell syntax that dash (/bin/sh on Debian) does not run as bash does.
BASHISMS = re.compile(
    r"\[\[|(^|[;&|\s])(source|function|declare|typeset|shopt|pushd|popd|mapfile|readarray|let)\s"
    r"|\$'|<<<|pipefail|^\s*\w+=\(|\{\w+\.\.\w+\}|\$\{\w+(:\d|//?|\^|,)|\$\{!|\becho\s+-e\b|&>|\|&"
    r"|\(\(|=~|\$RANDOM|\$BASH|\bread\s+-[a-z]*[ae]",
    re.M,
)
# A script that expects Vagrant's login user: its home, its group, running something as it.
VAGRANT_USER = re.compile(
    r"/home/vagrant\b|\bvagrant:vagrant\b|\b(chown|chgrp)\b[^\n]*\bvagrant\b|\b(sudo|runuser|su)\b[^\n]*"
    r"(-u|-l|-i?u|\s-)\s*vagrant\b|\busermod\b[^\n]*\bvagrant\b|\bUSER=vagrant\b|~vagrant\b"
)
_SHELL_WHY = {
    "upload_path": "devenv uploads scripts to /tmp/devenv-provision/",
    "reboot": "no reboot after the step: `devenv reload NAME` restarts the machine",
    "reset": "no reconnect after the step",
    "keep_color": "the output is shown as the step writes it",
    "sensitive": "devenv masks the secrets it knows (env from_env / from_file)",
}
_ANSIBLE_WHY = {
    "groups": "devenv's inventory has one host, named after the machine",
    "limit": "the play runs against this machine only",
    "inventory_path": "devenv generates the inventory (the machine, reached with its pinned key)",
    "galaxy_role_file": "roles are not installed: run `ansible-galaxy install -r FILE` first",
    "galaxy_roles_path": "roles are found as ansible-core finds them (roles/, ansible.cfg roles_path)",
    "config_file": "an ansible.cfg beside the playbook is read by ansible-core itself",
    "vault_password_file": "set ANSIBLE_VAULT_PASSWORD_FILE in your environment",
    "verbose": "the output is shown as ansible-playbook writes it",
    "compatibility_mode": "not needed",
    "raw_arguments": "no extra command-line arguments",
    "host_vars": "devenv's inventory has only this machine: set inventory_vars = { ... } for it",
}


@dataclass
class Steps:
    items: list[Item] = field(default_factory=list)
    vagrant_user: bool = False  # some step expects the vagrant user


def steps(ctx: Context, vm: dict, box: str) -> Steps:
    out = Steps()
    for p in vm.get("provisioners") or []:
        got = step(ctx, p, box)
        out.items += got.items
        out.vagrant_user = out.vagrant_user or got.vagrant_user
    if out.vagrant_user and box == boxes.DEVENV_BOX:
        out.items.insert(0, Item(dict(COMPAT_STEP), [Note(COMPAT_NOTE, "changed")]))
    return out


def step(ctx: Context, p: dict, box: str) -> Steps:
    """One provisioner: its steps (one; two for a bash script without #!; none) and notes."""
    typ = str(p.get("type") or "")
    o = plain_options(p.get("options") or {})
    where = ctx.where(p)
    named = p.get("name") if p.get("name") and p.get("name") != typ else None
    label = f'vm.provision "{typ}"' + (f' ("{named}")' if named else "")
    common: dict[str, Any] = {}
    notes: list[Note] = []
    name = named or o.pop("name", None)
    if isinstance(name, str) and name.strip():
        common["name"] = name
    run = str(p.get("run") or "").lower()
    if run in ("always", "never"):
        common["run"] = run
    elif run and run != "once":
        notes.append(Note(f"run: {shown(p.get('run'))}", "lost", where))
    for k in ("before", "after"):
        if k in o:
            notes.append(Note(f"{k}: {shown(o.pop(k))}: the steps run in the order written", "changed", where))
    if typ == "shell":
        return _shell(ctx, p, o, common, notes, label, box)
    if typ == "file":
        return _file(ctx, p, o, common, notes, label)
    if typ in ("ansible", "ansible_local"):
        return Steps(_ansible(ctx, p, typ, o, common, notes, label))
    text = options_text(o, p.get("calls"))
    return Steps([Item(None, [*notes, Note(f"{label} ({text}): {_other(typ)}", "lost", where)])])


def _other(typ: str) -> str:
    if typ in ("docker", "podman"):
        return (
            f"Vagrant installed {typ} in the machine and ran containers there; with the docker driver a machine is "
            'itself a container (make each of them a machine with box = "docker:IMAGE"); on libvirt install and '
            "run it in a shell step"
        )
    if typ.startswith(("puppet", "chef", "salt", "cfengine")):
        tool = typ.split("_")[0]
        return f"devenv has no {typ} step (its steps are shell, file and ansible): run {tool} in a shell step"
    return f"devenv has no {typ} step (its steps are shell, file and ansible)"


def _missing(ctx: Context, at: dict, key: str, what: str, written: str) -> None:
    ctx.problem(at, key, f"{what} not found: {written} (in {ctx.folder})")


def _shell(ctx: Context, at: dict, o: dict, step: dict, notes: list[Note], label: str, box: str) -> Steps:
    where = ctx.where(at)
    inline, path = o.pop("inline", None), o.pop("path", None)
    rest = {k: o.pop(k) for k in ("args", "env", "privileged", "binary") if k in o}
    text = ""
    if inline is not None and path is None:
        text = "\n".join(str(x) for x in inline) if isinstance(inline, list) else str(inline)
        if not rest.get("binary") and "\r\n" in text:
            text = text.replace("\r\n", "\n")  # Vagrant's own conversion (binary: false, its default)
        if BASHISMS.search(text):
            step["inline"] = bash_wrapped(text)
            notes.append(
                Note(
                    "Vagrant ran inline scripts with bash, and this one uses bash syntax: it runs under "
                    "bash here too (devenv runs inline steps with /bin/sh)",
                    "changed",
                    where,
                )
            )
        else:
            step["inline"] = text
    elif isinstance(path, str) and re.match(r"https?://", path):
        return Steps(
            [
                Item(
                    None,
                    [
                        *notes,
                        Note(
                            f"{label} path: {shown(path)}: devenv runs scripts from the project (fingerprinted: "
                            "a change reruns them): download it into the project, or use inline = "
                            f'"curl -fsSL {path} | sh"',
                            "lost",
                            where,
                        ),
                    ],
                )
            ]
        )
    elif isinstance(path, str):
        host = ctx.path(path)
        if not host.absolute.is_file():
            if host.outside:
                return Steps(
                    [Item(None, [*notes, Note(f"{label} path: {path}: not found on this host", "lost", where)])]
                )
            _missing(ctx, at, f"{label} path", "script", path)
            return Steps()
        text = _read_text(host.absolute)
        if "\r\n" in text and not rest.get("binary"):
            notes.append(
                Note(
                    f"{path} has Windows line endings, which Vagrant converted before running it (binary: false); "
                    "devenv runs the file as it is: convert it (dos2unix)",
                    "changed",
                    where,
                )
            )
        if host.outside:
            notes.append(
                Note(
                    f"{path} is outside the project: allowed (allow_outside_project) because the Vagrantfile runs it",
                    "changed",
                    where,
                )
            )
        if not text.startswith("#!") and BASHISMS.search(text):
            return _bash_script(ctx, host.text, host.outside, host.absolute, text, o, rest, step, notes, where, box)
        step["script"] = host.text
        if host.outside:
            step["allow_outside_project"] = True
    else:
        return Steps([Item(None, [*notes, Note(f"{label}: neither inline nor path", "lost", where)])])
    _shell_options(ctx, step, rest, o, notes, where, box)
    wants = bool(VAGRANT_USER.search(text)) or step.get("user") == COMPAT_USER
    if wants and box != boxes.DEVENV_BOX:
        notes.append(Note("it expects Vagrant's vagrant user, which this box may not have", "changed", where))
    return Steps([Item(_ordered({"type": "shell", **step}), notes or [Note(label, where=where)])], wants)


def _bash_script(
    ctx: Context,
    rel: str,
    outside: bool,
    absolute: Path,
    text: str,
    o: dict,
    rest: dict,
    step: dict,
    notes: list[Note],
    where: str | None,
    box: str,
) -> Steps:
    """A script without #! that uses bash syntax: Vagrant ran it with bash, devenv's script step
    would run it with /bin/sh. It is copied in (a file step) and run with bash."""
    dest = f"/var/tmp/vagrant-shell/{absolute.name}"  # /var/tmp: kept across reboots, for run = "always"
    copy: dict[str, Any] = {"type": "file", "source": rel, "destination": dest}
    if "run" in step:
        copy["run"] = step["run"]
    if outside:
        copy["allow_outside_project"] = True
    first = Note(
        f"{rel} has no #! line and uses bash syntax: Vagrant ran it with bash, so it is copied in and run "
        "with bash (or add #!/bin/bash to it and use script = ...)",
        "changed",
        where,
    )
    step["inline"] = f'exec bash {shlex.quote(dest)} "$@"'
    _shell_options(ctx, step, rest, o, notes, where, box)
    wants = bool(VAGRANT_USER.search(text)) or step.get("user") == COMPAT_USER
    return Steps([Item(_ordered(copy), [first]), Item(_ordered({"type": "shell", **step}), notes)], wants)


def _shell_options(
    ctx: Context, step: dict, rest: dict, o: dict, notes: list[Note], where: str | None, box: str
) -> None:
    args = rest.get("args")
    if isinstance(args, list):
        step["args"] = [arg(a) for a in args]
    elif args is not None:
        # A string is put on Vagrant's command line as it is: split it as the shell would.
        try:
            step["args"] = shlex.split(str(args))
        except ValueError:
            step["args"] = [str(args)]
        if re.search(r"[$`]", str(args)):
            notes.append(
                Note(
                    f"args: {shown(args)}: Vagrant's shell expanded it in the machine; here the words are "
                    "passed as they are",
                    "changed",
                    where,
                )
            )
    env = rest.get("env")
    if isinstance(env, dict) and env:
        step["env"] = {str(k): arg(v) for k, v in env.items()}
        for k, v in step["env"].items():
            var = ctx.env_values.get(v)
            if var:
                notes.append(
                    Note(
                        f"env {k} holds the value the host variable {var} had at import; if it is a secret, "
                        f'move it to the machine\'s env = {{ {k} = {{ from_env = "{var}" }} }}',
                        "changed",
                        where,
                    )
                )
    if rest.get("privileged") is False:
        if box == boxes.DEVENV_BOX:
            step["user"] = COMPAT_USER
            notes.append(Note("privileged: false: it runs as the vagrant user, as Vagrant ran it", "changed", where))
        else:
            notes.append(
                Note(
                    "privileged: false (Vagrant's login user): devenv runs steps as root unless "
                    'user = "NAME" names a user the box has',
                    "changed",
                    where,
                )
            )
    for k, v in o.items():
        notes.append(Note(f"{k}: {shown(v)}: {_SHELL_WHY.get(k, 'no devenv equivalent')}", "lost", where))


def _file(ctx: Context, at: dict, o: dict, step: dict, notes: list[Note], label: str) -> Steps:
    where = ctx.where(at)
    source, dest = o.pop("source", None), o.pop("destination", None)
    if not isinstance(source, str) or not isinstance(dest, str) or not dest:
        return Steps([Item(None, [*notes, Note(f"{label}: needs a source and a destination", "lost", where)])])
    host = ctx.path(source)
    if not host.absolute.exists():
        if host.outside:
            return Steps(
                [Item(None, [*notes, Note(f"{label} source: {source}: not found on this host", "lost", where)])]
            )
        _missing(ctx, at, f"{label} source", "file", source)
        return Steps()
    wants = False
    if not dest.startswith("/"):
        # Vagrant copies as its login user: a relative or ~ destination is in that user's home.
        rest = re.sub(r"^(~|\$HOME|\$\{HOME\})/?", "", dest)
        was, dest = dest, f"/home/{COMPAT_USER}/{rest}".rstrip("/")
        wants = True
        notes.append(
            Note(
                f"destination {shown(was)} is in Vagrant's login user's home: {dest}, copied as root "
                "(Vagrant copied as vagrant): chown it in a step if that matters",
                "changed",
                where,
            )
        )
    step.update({"type": "file", "source": host.text, "destination": dest})
    if host.outside:
        step["allow_outside_project"] = True
        notes.append(
            Note(
                f"{source} is outside the project: allowed (allow_outside_project) because the Vagrantfile copies it",
                "changed",
                where,
            )
        )
    for k, v in o.items():
        notes.append(Note(f"{k}: {shown(v)}: no devenv equivalent", "lost", where))
    return Steps([Item(_ordered(step), notes or [Note(label, where=where)])], wants)


def _ansible(ctx: Context, at: dict, typ: str, o: dict, step: dict, notes: list[Note], label: str) -> list[Item]:
    where = ctx.where(at)
    playbook = o.pop("playbook", None)
    if not isinstance(playbook, str) or not playbook:
        return [Item(None, [*notes, Note(f"{label}: no playbook", "lost", where)])]
    if typ == "ansible_local":
        guest_root = str(o.pop("provisioning_path", None) or "/vagrant")
        if guest_root.rstrip("/") != "/vagrant" or playbook.startswith("/"):
            return [
                Item(
                    None,
                    [
                        *notes,
                        Note(
                            f"{label} playbook: {playbook} (in the machine, under {guest_root}): "
                            "devenv runs playbooks from the project",
                            "lost",
                            where,
                        ),
                    ],
                )
            ]
        notes.append(
            Note(
                "ansible_local: Vagrant installed Ansible in the machine and ran it there; devenv runs "
                "ansible-playbook on this host against the machine (pip install 'devenv[ansible]')",
                "changed",
                where,
            )
        )
        for k in ("install", "install_mode", "version", "pip_args", "pip_install_cmd"):
            o.pop(k, None)
    host = ctx.path(playbook)
    if not host.absolute.is_file():
        if host.outside:
            return [Item(None, [*notes, Note(f"{label} playbook: {playbook}: not found on this host", "lost", where)])]
        _missing(ctx, at, f"{label} playbook", "playbook", playbook)
        return []
    step.update({"type": "ansible", "playbook": host.text})
    if host.outside:
        step["allow_outside_project"] = True
    extra = o.pop("extra_vars", None)
    if isinstance(extra, dict) and extra:
        step["extra_vars"] = extra
    elif extra:
        notes.append(
            Note(
                f"extra_vars: {shown(extra)}: only a table of variables is carried over (load a vars file "
                "with vars_files in the play)",
                "lost",
                where,
            )
        )
    if o.get("become") is not None:
        step["become"] = bool(o.pop("become"))
    for k in ("tags", "skip_tags"):
        v = o.pop(k, None)
        if isinstance(v, str):
            v = [t.strip() for t in v.split(",") if t.strip()]
        if isinstance(v, list) and v:
            step[k] = [str(t) for t in v]
    for k, v in o.items():
        notes.append(Note(f"{k}: {shown(v)}: {_ANSIBLE_WHY.get(k, 'no devenv equivalent')}", "lost", where))
    return [Item(_ordered(step), notes or [Note(label, where=where)])]


def bash_wrapped(script: str) -> str:
    """``script`` run with bash from devenv's /bin/sh, unchanged and readable: bash gets it as its
    -c argument (a here-document, quoted: nothing in it is expanded), stdin stays the step's, and
    the step's args stay $1, $2, ..."""
    marker = "VAGRANT_SHELL"
    while re.search(rf"^{marker}$", script, re.M):
        marker += "_"
    body = script if script.endswith("\n") else script + "\n"
    return f'exec bash -c "$(cat <<\'{marker}\'\n{body}{marker}\n)" vagrant-shell "$@"\n'


_ORDER = (
    "type",
    "name",
    "run",
    "script",
    "inline",
    "source",
    "destination",
    "playbook",
    "args",
    "env",
    "user",
    "extra_vars",
    "become",
    "tags",
    "skip_tags",
    "allow_outside_project",
)


def _ordered(step: dict) -> dict:
    out = {k: step[k] for k in _ORDER if k in step}
    out.update({k: v for k, v in step.items() if k not in out})
    return out


def _read_text(path: Path) -> str:
    from devenv.paths import read_regular

    try:
        return read_regular(path, SCRIPT_READ_MAX, what="the script").decode("utf-8", "replace")
    except OSError:
        return ""
