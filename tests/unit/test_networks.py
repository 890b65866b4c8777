"""Private networks in the Devfile: the project default, fixed addresses, and every mistake with its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

from devenv.model import devfile


def check(tmp_path: Path, text: str):
    path = tmp_path / "Devfile"
    text = textwrap.dedent(text)
    path.write_text(text)
    df, problems = devfile.check_text(text, path)
    return df, [str(p) for p in problems]


TWO = """
[machines.web]
box = "busybox"
[machines.proxy]
box = "busybox"
"""


def test_a_multi_machine_project_gets_a_default_network(tmp_path):
    df, problems = check(tmp_path, TWO)
    assert problems == []
    assert {m.name: [a.name for a in m.networks] for m in df.machines.values()} == {
        "web": ["default"],
        "proxy": ["default"],
    }
    assert df.networks["default"].implicit and df.networks["default"].subnet is None


def test_a_single_machine_joins_no_network(tmp_path):
    df, problems = check(tmp_path, '[machines.web]\nbox = "busybox"\n')
    assert problems == [] and df.machines["web"].networks == () and df.networks == {}


def test_fixed_addresses_on_a_declared_network(tmp_path):
    df, problems = check(
        tmp_path,
        """
        [networks.internal]
        subnet = "192.168.57.0/24"
        internal = true
        [machines.web]
        box = "busybox"
        networks = [{ name = "internal", ip = "192.168.57.11" }]
        [machines.proxy]
        box = "busybox"
        networks = ["internal"]
        """,
    )
    assert problems == []
    web, proxy = df.machines["web"].networks, df.machines["proxy"].networks
    assert [(a.name, a.ip, a.network.subnet, a.network.internal) for a in web] == [
        ("internal", "192.168.57.11", "192.168.57.0/24", True)
    ]
    assert [(a.name, a.ip) for a in proxy] == [("internal", None)]
    assert "default" not in df.networks  # every machine named its networks


def test_an_address_without_a_subnet_takes_its_slash_24_like_vagrant(tmp_path):
    df, problems = check(
        tmp_path,
        """
        [networks.lan]
        [machines.a]
        box = "busybox"
        networks = [{ name = "lan", ip = "10.20.30.40" }]
        [machines.b]
        box = "busybox"
        networks = [{ name = "lan", ip = "10.20.30.41" }]
        """,
    )
    assert problems == [] and df.networks["lan"].subnet == "10.20.30.0/24"


def test_network_mistakes_are_reported_with_their_lines(tmp_path):
    _, problems = check(
        tmp_path,
        """
        [networks.one]
        subnet = "192.168.57.0/24"
        [networks.two]
        subnet = "192.168.0.0/16"
        [networks.bad]
        subnet = "192.168.300.0/24"
        [machines.a]
        box = "busybox"
        networks = [{ name = "one", ip = "10.0.0.5" }, { name = "nope" }]
        [machines.b]
        box = "busybox"
        networks = [{ name = "one", ip = "192.168.57.1" }, "two"]
        [machines.c]
        box = "busybox"
        networks = [{ name = "one", ip = "192.168.57.20" }]
        [machines.d]
        box = "busybox"
        networks = [{ name = "one", ip = "192.168.57.20" }]
        """,
    )
    text = "\n".join(problems)
    assert "Devfile:5: networks.two.subnet: 192.168.0.0/16 overlaps network 'one' (192.168.57.0/24)" in text
    assert "Devfile:7: networks.bad.subnet: '192.168.300.0/24' is not a subnet" in text
    assert "Devfile:10: machines.a.networks[0].ip: 10.0.0.5 is outside network 'one' (192.168.57.0/24)" in text
    assert "Devfile:10: machines.a.networks[1].name: no network named 'nope'" in text
    assert "Devfile:13: machines.b.networks[0].ip: 192.168.57.1 is the host's gateway address" in text
    assert "Devfile:19: machines.d.networks[0].ip: 192.168.57.20 on network 'one' is already machine 'c's" in text


def test_a_network_entry_must_name_a_network(tmp_path):
    _, problems = check(
        tmp_path,
        """
        [machines.a]
        box = "busybox"
        networks = [{ ip = "10.0.0.5" }, 7]
        """,
    )
    assert any("machines.a.networks[0].name: is required" in p for p in problems), problems
    assert any("machines.a.networks[1]: expected a table" in p for p in problems), problems


def test_networks_change_the_settings_hash(tmp_path):
    from devenv.core.plan import settings_hash

    df, _ = check(tmp_path, TWO)
    before = settings_hash(df.machines["web"])
    df2, _ = check(
        tmp_path, TWO.replace('[machines.web]\nbox = "busybox"', '[machines.web]\nbox = "busybox"\nnetworks = []')
    )
    assert settings_hash(df2.machines["web"]) != before  # leaving the network is a reload
