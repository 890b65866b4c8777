"""What a Vagrantfile set (the recorder's JSON) -> a native devenv Devfile, as a Document with a
note at every place where something is carried over differently, or not at all, and why.

One [machines.NAME] per Vagrant machine (Vagrant's merge of the top level and the machine's
define block is the recorder's), the settings all machines share in [defaults], the private
networks as [networks.NAME]. Every value passes devenv's own schema before it is written: what
devenv would reject becomes a note with devenv's reason, so the Devfile validates.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv.model import devfile as model
from devenv.model.networks import ATTACHMENT
from devenv.model.schema import MISSING, Problem, format_path
from devenv.model.steps import check_step
from devenv.vagrantfile import boxes, providers, shares
from devenv.vagrantfile.context import Context, arg, opt, relative, shown
from devenv.vagrantfile.document import Document, Entry, Item, Note, Section, value
from devenv.vagrantfile.steps import steps as map_steps

DRIVERS = ("docker", "libvirt")
NAME_MAX = 41  # devenv machine names: devfile.NAME_PATTERN
# The keys of a machine table, in the order written; [defaults] takes those every machine shares.
MACHINE_KEYS = ("depends_on", "box", "hostname", "cpus", "memory", "user", "env", "ports", "sync", "networks")
# A machine added to the Devfile later inherits [defaults]: never a host port, an address or a name.
NEVER_DEFAULTS = ("depends_on", "hostname", "ports", "networks")
# What the implicit machine ("default", no config.vm.define) has is all top level.
TOP_LEVEL = ("box", "cpus", "memory", "user", "env", "sync", "provision")

_PLUGIN_WHY = {
    "vbguest": "VirtualBox Guest Additions: not needed, devenv shares folders itself",
    "hostmanager": "machines reach each other by name on the project's networks; the host's /etc/hosts is not "
    "edited (use the 127.0.0.1 ports)",
    "hostsupdater": "the host's /etc/hosts is not edited: reach machines through their 127.0.0.1 ports",
    "cache": "no package cache between machines",
    "proxy": "set the proxy in the machine's env (http_proxy, https_proxy, no_proxy)",
    "disksize": "the disk is the box's size",
    "env": 'devenv reads no .env file: name host variables in env = { X = { from_env = "X" } }',
    "timezone": "set the time zone in a provision step (timedatectl set-timezone ...)",
    "vagrant": "Vagrant's own settings (config.vagrant.*) have no devenv equivalent",
    "winrm": "WinRM: devenv runs Linux machines",
    "winssh": "Windows SSH: devenv runs Linux machines",
    "push": "`vagrant push` strategies are not carried over",
    "package": "`vagrant package` settings: `devenv package NAME` makes a box from a machine",
}
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASS|KEY|AUTH|CREDENTIAL|PRIVATE|COOKIE|SESSION", re.I)
_VM_HANDLED = (
    "box",
    "hostname",
    "box_version",
    "box_url",
    "box_download_checksum",
    "box_architecture",
    "box_check_update",
    "ignore_box_vagrantfile",
    "box_download_insecure",
    "box_download_options",
)


def devenv_name(vagrant_name: str, taken: set[str]) -> str:
    """A valid devenv machine name for a Vagrant machine name, unique among ``taken``."""
    base = re.sub(r"[^a-z0-9-]+", "-", vagrant_name.lower()).strip("-")[:NAME_MAX] or "machine"
    name, i = base, 2
    while name in taken:
        suffix = f"-{i}"
        name = base[: NAME_MAX - len(suffix)] + suffix
        i += 1
    taken.add(name)
    return name


@dataclass
class MachineOut:
    name: str
    section: Section
    steps: list[Item] = field(default_factory=list)
    from_top: set[str] = field(default_factory=set)  # keys that only the Vagrantfile's top level set


class Importer:
    """One Vagrantfile's recording -> a Document (document.render writes its text)."""

    def __init__(self, recording: dict, *, vagrantfile: Path, devfile_path: Path, driver: str) -> None:
        if driver not in DRIVERS:
            raise ValueError(f"driver {driver!r}: not one of {DRIVERS}")
        env_values = {os.environ[k]: k for k in recording.get("env") or [] if len(os.environ.get(k, "")) >= 4}
        self.ctx = Context(
            vagrantfile=vagrantfile.resolve(),
            base=Path(os.path.realpath(devfile_path.parent)),
            driver=driver,
            env_values=env_values,
        )
        self.rec = recording
        self.machine_names: list[tuple[str, str]] = []  # (devenv name, Vagrant name)

    @property
    def problems(self) -> list[model.LocatedProblem]:
        return self.ctx.problems

    def document(self) -> Document:
        machines = self.rec.get("machines") or []
        taken: set[str] = set()
        names = {m["name"]: devenv_name(m["name"], taken) for m in machines}
        self.machine_names = [(names[m["name"]], m["name"]) for m in machines]
        nets = shares.Networks(self.ctx)
        root = self.rec.get("root") or {}
        outs = [
            self.machine(m, names[m["name"]], root, nets, [names[x["name"]] for x in machines[:i]])
            for i, m in enumerate(machines)
        ]
        shares.free_colliding_ports([(o.section.entries.get("ports") or Entry([])).value for o in outs])
        for o in outs:  # after the collisions were resolved: what devenv's schema says of each port
            if "ports" in o.section.entries:
                o.section.entries["ports"] = Entry(self.checked("ports", o.section.entries["ports"].value))
        defaults = self.defaults(outs)
        doc = Document(self.header(len(outs)), [defaults, *nets.sections.values(), *(o.section for o in outs)])
        self._scrub(doc)
        return doc

    def _scrub(self, doc: Document) -> None:
        """No note repeats what a secret-looking host variable held (a token the Vagrantfile read from
        ENV): it names the variable instead. The settings themselves keep their values (the header
        says which variables were read)."""
        env = self.ctx.env_values
        values = sorted((v for v in env if _SECRET_NAME.search(env[v])), key=len, reverse=True)
        if not values:
            return
        for note in doc.notes():
            for v in values:
                if v in note.text:
                    note.text = note.text.replace(v, f"${self.ctx.env_values[v]}")

    # -- the header --------------------------------------------------------------------------------
    def header(self, machines: int) -> list[str]:
        ctx = self.ctx
        where = "this folder" if ctx.base == ctx.folder else relative(str(ctx.folder), ctx.base) + "/"
        lines = [
            f"Devfile for the Vagrant project in {where}, written by `devenv import-vagrant` from its Vagrantfile: "
            f'native devenv machines (driver "{ctx.driver}"), run without Vagrant.',
            'The notes say what Vagrant did that is carried over differently ("changed") or not at all ("not carried '
            'over"), and why. Read them, then `devenv validate` and `devenv up`.',
        ]
        if ctx.base != ctx.folder:
            lines.append("Paths are relative to this file's folder, devenv's project root.")
        if machines > 1:
            lines.append(
                "Vagrant brings the machines up one after another, in this order, so depends_on keeps that order; "
                "devenv brings up machines that do not depend on each other in parallel: drop a depends_on where "
                "a machine's provisioning does not need the one before it running."
            )
        env = self.rec.get("env") or []
        if env:
            unset = [k for k in env if k not in os.environ]
            text = f"The Vagrantfile reads the environment variables {', '.join(env)}: this file holds what they gave "
            text += "at import" + (f" ({', '.join(unset)} unset: the Vagrantfile's defaults)" if unset else "")
            lines.append(text + "; import again, or edit it, when they change.")
        plugins = list(dict.fromkeys(n["text"] for n in self.rec.get("notes") or [] if n.get("kind") == "plugin"))
        if plugins:
            lines.append(
                f"The Vagrantfile asks for the Vagrant plugins {', '.join(plugins)}: Vagrant.has_plugin? was "
                "answered true, so their settings are noted where they are set; devenv needs no plugin."
            )
        if any(
            n.get("type") == "forwarded_port" and not (n.get("options") or {}).get("host_ip")
            for m in self.rec.get("machines") or []
            for n in m["config"]["vm"].get("networks") or []
        ):
            lines.append(
                "Forwarded ports: Vagrant's VirtualBox provider binds a port without host_ip on every host "
                'address; devenv binds 127.0.0.1 (host_ip = "0.0.0.0" shares one on your network).'
            )
        for n in self.rec.get("notes") or []:
            line = self._header_note(n)
            if line:
                lines.append(line)
        return lines

    def _header_note(self, n: dict) -> str | None:
        kind, text = n.get("kind"), n.get("text", "")
        at = self.ctx.where(n)
        at = f"{at}: " if at else ""
        if kind == "require_version":
            return f"{at}Vagrant.require_version {text}: devenv needs no Vagrant."
        if kind in ("vagrant_command", "exec"):
            return f"{at}the Vagrantfile runs `{text}`: not run (import-vagrant never runs Vagrant)."
        if kind == "write":
            return (
                f"{at}the Vagrantfile writes {text}: not written (import-vagrant writes nothing into the "
                "project); make it in a provision step if a machine needs it."
            )
        if kind == "require_failed":
            return f'{at}require "{text}": not loaded (a gem or a Vagrant plugin\'s library).'
        return None

    # -- one machine -------------------------------------------------------------------------------
    def machine(self, m: dict, name: str, root: dict, nets: shares.Networks, before: list[str]) -> MachineOut:
        ctx = self.ctx
        config = m["config"]
        provider = providers.carried_provider(config["vm"], ctx.driver)
        section = Section(f"machines.{name}")
        out = MachineOut(name, section)
        self.define_notes(m, out, before)
        if provider and provider in (m.get("by_provider") or {}):
            config = m["by_provider"][provider]
            section.notes.append(
                Note(f"with the {provider} provider's overrides (override.*), as Vagrant uses them on that provider")
            )
        vm = config["vm"]
        docker = None
        if provider == "docker" and ctx.driver == "docker":
            docker = ((vm.get("providers") or {}).get("docker") or {}).get("settings") or {}
        box = self.box(out, vm, docker, provider)
        self.hostname(out, (vm.get("settings") or {}).get("hostname"))
        self.resources(out, vm, provider)
        if docker is not None:
            self.docker_env(out, docker)
        section.entries["ports"] = Entry(shares.ports(ctx, vm, docker))
        section.entries["sync"] = Entry(self.checked("sync", shares.folders(ctx, vm, docker)))
        networks = self.checked("networks", nets.machine(vm, name))
        if networks:
            section.entries["networks"] = Entry(networks)
        self.vm_settings(out, vm)
        self.ssh(out, config.get("ssh") or {})
        self.plugins(out, config.get("plugins") or {})
        self.triggers(out, config.get("triggers") or [])
        got = map_steps(ctx, vm, box)
        out.steps = self.checked_steps(got.items)
        self._from_top(m, out, vm, root)
        return out

    def define_notes(self, m: dict, out: MachineOut, before: list[str]) -> None:
        notes, where, name = out.section.notes, self.ctx.where(m), out.name
        if m.get("implicit"):
            notes.append(
                Note(
                    f"the Vagrantfile defines no machine (config.vm.define): Vagrant's one machine, "
                    f'"default", is machine {name}'
                )
            )
        elif name != m["name"]:
            notes.append(Note(f'Vagrant machine "{m["name"]}" (devenv names take a-z, 0-9 and -)', where=where))
        opts = m.get("options") or {}
        if opts.get("primary"):
            notes.append(
                Note(
                    f"primary: true: devenv has no primary machine; name it in commands (`devenv ssh {name}`)",
                    "lost",
                    where,
                )
            )
        if opts.get("autostart") is False:
            notes.append(
                Note(
                    "autostart: false: `devenv up` starts every machine (`devenv up NAMES` starts some)", "lost", where
                )
            )
        for k, v in opts.items():
            if k not in ("primary", "autostart", "config_version"):
                notes.append(Note(f"define option {k}: {shown(v)}", "lost", where))
        if before:
            # Vagrant (VirtualBox, libvirt, ...) brings machines up one after another, and a later
            # machine's provisioning may count on an earlier one running: kept, said, removable.
            out.section.entries["depends_on"] = Entry(
                [before[-1]],
                [
                    Note(
                        f"Vagrant brings the machines up one after another ({', '.join([*before, out.name])}): so does "
                        f"this; without depends_on devenv brings {out.name} up in parallel with {before[-1]}"
                    )
                ],
            )

    def _from_top(self, m: dict, out: MachineOut, vm: dict, root: dict) -> None:
        """Which keys the top level alone set (for [defaults] when there is one machine)."""
        if m.get("implicit"):
            out.from_top.update(TOP_LEVEL)
            return
        top, mine = (root.get("vm") or {}).get("settings") or {}, vm.get("settings") or {}
        if mine.get("box") is None or _same_place(mine.get("box"), top.get("box")):
            out.from_top.add("box")
        here = {(p.get("type"), p.get("name"), p.get("line")) for p in (root.get("vm") or {}).get("provisioners") or []}
        if all((p.get("type"), p.get("name"), p.get("line")) in here for p in vm.get("provisioners") or []):
            out.from_top.add("provision")

    # -- box and hostname --------------------------------------------------------------------------
    def box(self, out: MachineOut, vm: dict, docker: dict | None, provider: str | None) -> str:
        ctx, settings = self.ctx, vm.get("settings") or {}
        rec = settings.get("box")
        notes: list[Note] = []
        image = opt(docker or {}, "image")
        if isinstance(image, str) and image:
            box = f"docker:{image}"
            notes.append(
                Note(
                    f'the docker provider\'s image "{image}", run with its own command as Vagrant runs it',
                    where=ctx.where((docker or {}).get("image")),
                )
            )
            cmd = opt(docker or {}, "cmd")
            out.section.tables["docker"] = (
                {"command": [str(c) for c in cmd]} if isinstance(cmd, list) and cmd else {"use_image_command": True}
            )
        else:
            written = rec["value"] if rec and isinstance(rec.get("value"), str) else None
            box, kind, text = boxes.map_box(written)
            notes.append(Note(text, kind, ctx.where(rec)))
            build = (((vm.get("providers") or {}).get("docker") or {}).get("settings") or {}).get("build_dir")
            if provider == "docker" and build:
                notes.append(
                    Note(
                        f"the docker provider builds an image from {shown(build.get('value'))}: devenv "
                        "boots images, it does not build them: `docker build -t NAME DIR`, then box = "
                        '"docker:NAME"',
                        "lost",
                        ctx.where(build),
                    )
                )
        for k in ("box_version", "box_url", "box_download_checksum", "box_architecture"):
            r = settings.get(k)
            if r is not None:
                notes.append(
                    Note(
                        f"config.vm.{k} = {shown(r['value'])}: devenv's boxes are its own builds (`devenv box list`)",
                        "lost",
                        ctx.where(r),
                    )
                )
        out.section.entries["box"] = Entry(box, notes)
        return box

    def hostname(self, out: MachineOut, rec: dict | None) -> None:
        if not rec:
            return
        name = rec.get("value")
        if isinstance(name, str) and re.fullmatch(model.HOSTNAME_PATTERN, name):
            out.section.entries["hostname"] = Entry(name)
            return
        out.section.notes.append(
            Note(
                f"config.vm.hostname = {shown(name)}: not an RFC 1123 host name; the machine's host name is {out.name}",
                "lost",
                self.ctx.where(rec),
            )
        )

    # -- cpus, memory, provider tables -------------------------------------------------------------
    def resources(self, out: MachineOut, vm: dict, carried: str | None) -> None:
        ctx = self.ctx
        blocks = vm.get("providers") or {}
        order = [p for p in providers.provider_order(vm, ctx.driver) if p in blocks]
        if ctx.driver != "docker" and "docker" in blocks:
            order.append("docker")  # only noted: a container's limits are not a VM's size
        v1 = vm.get("v1_customize") or []
        if v1 and "virtualbox" not in order:
            order.append("virtualbox")
        found: dict[str, tuple[Any, str, dict]] = {}
        libvirt_table = providers.libvirt_options((blocks.get("libvirt") or {}).get("settings") or {})
        for name in order:
            skip: tuple[str, ...] = ()
            if name == "libvirt" and carried == name and ctx.driver == "libvirt":  # in [machines.NAME.libvirt]
                skip = tuple(
                    v for v, t in (("driver", "domain_type"), ("machine_type", "machine_type")) if t in libvirt_table
                )
            if name == "docker" and carried == "docker" and ctx.driver == "docker":
                skip = providers.DOCKER_MAPPED  # the box, command, ports, sync and env of the machine
            got = providers.resources(name, blocks.get(name) or {}, v1 if name == "virtualbox" else None, skip)
            if name == "docker" and ctx.driver != "docker":
                got.rest += [f"memory {got.memory[0]}MiB"] if got.memory else []
                got.rest += [f"cpus {got.cpus[0]}"] if got.cpus else []
                got.memory = got.cpus = None
            for key, taken in (("memory", got.memory), ("cpus", got.cpus)):
                if taken is not None and key not in found:
                    found[key] = (taken[0], name, taken[1])
                elif taken is not None and taken[0] != found[key][0]:
                    unit = "MiB" if key == "memory" else ""
                    out.section.notes.append(
                        Note(
                            f"the {name} provider's {key} ({taken[0]}{unit}, used when Vagrant runs on {name}): this "
                            f"machine has the {found[key][1]} provider's ({found[key][0]}{unit})",
                            "changed",
                            ctx.where(taken[1]),
                        )
                    )
            if got.rest:
                used = "" if name == carried else f" (used when Vagrant runs on {name})"
                out.section.notes.append(
                    Note(
                        f"the {name} provider's settings{used}: {'; '.join(got.rest)}: no devenv equivalent",
                        "lost",
                        ctx.where(blocks.get(name) or (v1[0] if v1 else None)),
                    )
                )
        for key, render in (("memory", lambda n: f"{n}MiB"), ("cpus", lambda n: n)):
            if key in found:
                n, name, rec = found[key]
                note = [] if name == carried else [Note(f"from the {name} provider's settings", where=ctx.where(rec))]
                out.section.entries[key] = Entry(render(n), note)
        if ctx.driver == "libvirt" and carried == "libvirt" and libvirt_table:
            out.section.tables.setdefault("libvirt", {}).update(libvirt_table)

    def docker_env(self, out: MachineOut, docker: dict) -> None:
        """The docker provider's env; a value the Vagrantfile read from the host environment is read
        from it again when the machine starts (devenv's from_env), never written into the file."""
        rec = docker.get("env")
        if not rec or not isinstance(rec.get("value"), dict):
            return
        where = self.ctx.where(rec)
        env: dict[str, Any] = {}
        notes = [Note("the docker provider's env", where=where)]
        for k, v in rec["value"].items():
            var = self.ctx.env_values.get(arg(v))
            if var:
                env[str(k)] = {"from_env": var}
                notes.append(
                    Note(
                        f"{k}: read from the host variable {var} when the machine starts, as the Vagrantfile "
                        "read it, not written here",
                        "changed",
                        where,
                    )
                )
            else:
                env[str(k)] = arg(v)
        problems: list[Problem] = []
        model.machine_table(False).fields["env"].node.check(env, ("env",), problems)
        for p in problems:
            bad = p.path[1] if len(p.path) > 1 else None
            if bad in env:
                env.pop(bad)
                notes.append(Note(f"env {bad}: {p.message}", "lost", where))
        if env:
            out.section.entries["env"] = Entry(env, notes)

    # -- what has no equivalent: notes -------------------------------------------------------------
    def vm_settings(self, out: MachineOut, vm: dict) -> None:
        ctx, notes = self.ctx, out.section.notes
        for k, r in (vm.get("settings") or {}).items():
            if k in _VM_HANDLED:
                continue
            v, where = r.get("value"), ctx.where(r)
            libvirt = out.section.tables.setdefault("libvirt", {}) if ctx.driver == "libvirt" else None
            if k == "boot_timeout" and libvirt is not None and isinstance(v, int) and 5 <= v <= 3600:
                libvirt["boot_timeout"] = v
            elif k == "graceful_halt_timeout" and libvirt is not None and isinstance(v, int) and 1 <= v <= 600:
                libvirt["halt_timeout"] = v
            elif k in ("boot_timeout", "graceful_halt_timeout") and ctx.driver == "docker":
                pass  # a container starts and stops at once: nothing to wait for
            elif k == "communicator" and str(v) == "ssh":
                pass
            elif k in ("communicator", "guest") and str(v).lower() in ("winrm", "windows", "winssh"):
                notes.append(
                    Note(f"config.vm.{k} = {shown(v)}: a Windows guest; devenv runs Linux machines", "lost", where)
                )
            elif k == "post_up_message":
                notes.append(Note(f"post_up_message: {shown(v, 300)}", "lost", where))
            else:
                notes.append(Note(f"config.vm.{k} = {shown(v)}: no devenv equivalent", "lost", where))
            if libvirt == {}:
                out.section.tables.pop("libvirt")
        for c in vm.get("calls") or []:
            what = {"disk": " (extra disks)", "cloud_init": " (cloud-init user data)"}.get(c["name"], "")
            notes.append(
                Note(f"config.vm.{c['name']} {shown(c.get('args'))}{what}: no devenv equivalent", "lost", ctx.where(c))
            )

    def ssh(self, out: MachineOut, ssh: dict) -> None:
        settings = ssh.get("settings") or {}
        if not settings and not ssh.get("calls"):
            return
        parts = [f"{k} = {shown(r.get('value'))}" for k, r in settings.items() if k != "password"]
        parts += ["password = (not shown)"] if "password" in settings else []
        first = next(iter(settings.values()), None) or next(iter(ssh.get("calls") or []), None)
        why = (
            "devenv reaches containers through the engine and VMs with its own per-machine key and pinned host key; "
            '`devenv ssh` logs in as the box\'s user (dev), user = "NAME" picks another'
        )
        if "forward_agent" in settings:
            why += "; no agent forwarding"
        out.section.notes.append(Note(f"config.ssh: {', '.join(parts)}: {why}", "lost", self.ctx.where(first)))

    def plugins(self, out: MachineOut, plugins: dict) -> None:
        for name, rec in plugins.items():
            settings, calls = rec.get("settings") or {}, rec.get("calls") or []
            parts = [f"{k} = {shown(r.get('value'))}" for k, r in settings.items()]
            parts += [f"{c['name']} {shown(c.get('args'))}" for c in calls]
            parts += [
                f"{k}.{kk} = {shown(r.get('value'))}"
                for k, child in (rec.get("children") or {}).items()
                for kk, r in (child.get("settings") or {}).items()
            ]
            if parts:
                first = next(iter(settings.values()), None) or (calls[0] if calls else None)
                why = _PLUGIN_WHY.get(name, "a Vagrant plugin's setting")
                out.section.notes.append(
                    Note(f"config.{name}: {', '.join(parts)}: {why}", "lost", self.ctx.where(first))
                )

    def triggers(self, out: MachineOut, triggers: list[dict]) -> None:
        for t in triggers:
            settings = {k: r.get("value") for k, r in (t.get("settings") or {}).items()}
            settings.update(t.get("options") or {})
            what = ", ".join(f"{k}: {shown(v)}" for k, v in settings.items())
            commands = t.get("commands") or []
            hint = ""
            if t.get("when") == "after" and "up" in commands and "run_remote" in settings:
                hint = '; a provision step with run = "always" runs in the machine after every `devenv up`'
            out.section.notes.append(
                Note(
                    f"trigger.{t.get('when')} {', '.join(commands) or 'all'} ({what}): devenv has no triggers{hint}",
                    "lost",
                    self.ctx.where(t),
                )
            )

    # -- checked with devenv's own schema ----------------------------------------------------------
    def checked(self, key: str, items: list[Item]) -> list[Item]:
        """Each entry as devenv's schema takes it; one it refuses becomes a note with its reason."""
        node = ATTACHMENT if key == "networks" else model.machine_table(False).fields[key].node
        out: list[Item] = []
        for item in items:
            if item.value is not None:
                problems: list[Problem] = []
                if key == "networks":
                    node.check(item.value, (key, 0), problems)
                else:
                    node.check([item.value], (key,), problems)
                if problems:
                    why = "; ".join(f"{format_path(p.path[2:]) or 'it'}: {p.message}" for p in problems)
                    item = Item(
                        None, [*item.notes, Note(f"{key} entry {value(item.value)}: devenv refuses it: {why}", "lost")]
                    )
            out.append(item)
        return out

    def checked_steps(self, items: list[Item]) -> list[Item]:
        """Each step as devenv's provisioner takes it: a key it refuses is left out (an ansible
        connection variable, a bad env name), with its reason; a step it refuses is a note."""
        out: list[Item] = []
        for item in items:
            step = dict(item.value) if item.value is not None else None
            notes = list(item.notes)
            where = next((n.where for n in notes if n.where), None)
            for _ in range(8):
                if step is None:
                    break
                problems: list[Problem] = []
                if check_step(step, ("provision", 0), problems) is not MISSING and not problems:
                    break
                step = _without(step, problems, notes, where)
            out.append(Item(step, notes))
        return out

    # -- [defaults] --------------------------------------------------------------------------------
    def defaults(self, outs: list[MachineOut]) -> Section:
        """What every machine has alike goes to [defaults] (the Vagrantfile's top level, mostly)."""
        section = Section("defaults", entries={"driver": Entry(self.ctx.driver)})
        if not outs:
            return section
        if len(outs) > 1:  # what the top level set, noted once rather than in every machine
            common = [n for n in outs[0].section.notes if all(_has_note(o.section.notes, n) for o in outs[1:])]
            section.notes = common
            for o in outs:
                o.section.notes = [n for n in o.section.notes if not _has_note(common, n)]
        for k in MACHINE_KEYS:
            entries = [o.section.entries.get(k) for o in outs]
            first = entries[0]
            if first is None or k in NEVER_DEFAULTS or not all(e is not None and e.same(first) for e in entries):
                continue
            if len(outs) == 1 and k not in outs[0].from_top:
                continue
            section.entries[k] = first
            for o in outs:
                o.section.entries.pop(k)
        lists = [o.steps for o in outs]
        shared = all(
            len(s) == len(lists[0]) and all(a.same(b) for a, b in zip(s, lists[0], strict=True)) for s in lists
        )
        if shared and (len(outs) > 1 or "provision" in outs[0].from_top):
            section.steps = Entry(lists[0])
        else:
            for o in outs:
                o.section.steps = Entry(o.steps, explicit=True)
                if len(outs) > 1 and o.steps:
                    o.section.steps.notes.append(
                        Note(
                            "the Vagrantfile's top-level provisioners run first, then the machine's own, as "
                            "Vagrant runs them (in devenv a machine's provision list replaces [defaults]')"
                        )
                    )
        for o in outs:
            o.section.entries = {k: o.section.entries[k] for k in MACHINE_KEYS if k in o.section.entries}
            for k, e in o.section.entries.items():
                # An empty list (all notes) is written as `k = []` only to keep [defaults]' from applying.
                if isinstance(e.value, list) and all(isinstance(i, Item) for i in e.value):
                    e.explicit = k in section.entries and not any(i.value is not None for i in e.value)
        return section


def _without(step: dict, problems: list[Problem], notes: list[Note], where: str | None) -> dict | None:
    """The step without what the problems name (a key, or one name of a table); None: not at all."""
    step = dict(step)
    for p in problems:
        rel = p.path[2:]
        if not rel or p.message == "is required":
            notes.append(Note(f"devenv refuses this step: {p.message}", "lost", where))
            return None
        k = rel[0]
        if len(rel) >= 2 and isinstance(step.get(k), dict) and rel[1] in step[k]:
            step[k] = {kk: vv for kk, vv in step[k].items() if kk != rel[1]}
            notes.append(Note(f"{k}.{rel[1]}: {p.message}", "lost", where))
            if not step[k]:
                step.pop(k)
        elif k in step:
            notes.append(Note(f"{k} = {shown(step.pop(k))}: {p.message}", "lost", where))
        else:
            notes.append(Note(f"devenv refuses this step: {format_path(rel)}: {p.message}", "lost", where))
            return None
    return step


def _has_note(notes: list[Note], note: Note) -> bool:
    return any(n.line() == note.line() for n in notes)


def _same_place(a: dict | None, b: dict | None) -> bool:
    return bool(a and b and a.get("file") == b.get("file") and a.get("line") == b.get("line"))
