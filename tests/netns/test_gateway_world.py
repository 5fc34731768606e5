"""The gateway world itself (tests/netns/gateway_world.py, docs/gateway.md 7.1), before any oe
runs in it: the LANs reach their gateways in clear and nothing else, and DNS says for each
client what the gateway tests rely on, with the DNSSEC state libunbound gives it."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from oe import hostkey
from oe.dnskeys import records

import gateway_world as gwd

pytestmark = gwd.NEEDS
pytest.importorskip("unbound", reason="python3-unbound is not importable: make the venv from "
                                      "Debian's /usr/bin/python3 --system-site-packages")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    made = gwd.build(tmp_path_factory.mktemp("gw"), start=())
    try:
        yield made
    finally:
        made.close()


def key_id(gw, name: str) -> str:
    return records.key_id(hostkey.public_blob(gw.keys[name]))


def test_clients_reach_their_gateway_in_clear_and_no_further_without_oe(gw):
    assert gw.ping("a1", "198.51.100.1").returncode == 0
    assert gw.ping("b3", "198.51.101.1").returncode == 0
    assert gw.ping("h", "c", count=1).returncode == 0           # the inet bridge
    assert gw.ping("h", gwd.C_CLIENT, count=1).returncode == 0  # routed to charon's subnet
    # No forwarding on a gateway that runs no oe (the kernel's default; oe turns it on only
    # for configured subnets, docs/gateway.md 2).
    assert gw.ping("a1", "b1", count=1).returncode != 0
    assert gw.ping("h", "a1", count=1).returncode != 0


def test_dns_answers_what_the_gateway_tests_rely_on(gw):
    a, b = gwd.CLIENTS, gwd.INET
    found = gwd.lookups(gw, "gw-a", *a.values(), gwd.C_CLIENT, b["m"], b["gw-b"],
                        "A:" + gwd.GW_B_NAME)

    def seen(target):
        data = found[target]
        return (data["verdict"], data["dnssec"], data["gateway"], data["key_id"])

    assert seen(a["a1"]) == ("key", "secure", b["gw-a"], key_id(gw, "gw-a"))
    assert seen(a["a2"]) == ("key", "secure", a["a2"], key_id(gw, "gw-a"))
    assert seen(a["a3"]) == ("key", "secure", b["gw-a"], key_id(gw, "wrong"))
    assert found[a["a3"]]["source"] == "TXT"
    assert seen(a["a4"]) == ("key", "secure", b["gw-a"], key_id(gw, "gw-a"))
    assert found[a["a4"]]["source"] == "TXT"
    assert seen(a["b1"]) == ("key", "secure", "@" + gwd.GW_B_NAME, key_id(gw, "gw-b"))
    assert seen(a["b4"]) == ("key", "secure", b["gw-b"], key_id(gw, "gw-b"))
    # b2: its zone is an unsigned child of a signed one, proven insecure: no delegation
    assert found[a["b2"]]["verdict"] == "deny" and found[a["b2"]]["dnssec"] == "insecure"
    assert "allow_unsigned_delegation" in found[a["b2"]]["error"]
    # b3: two records; the better precedence names the dead gateway
    assert seen(a["b3"]) == ("key", "secure", gwd.DEAD, key_id(gw, "gw-b"))
    assert seen(gwd.C_CLIENT) == ("key", "secure", b["c"], key_id(gw, "c"))
    assert seen(b["m"]) == ("key", "secure", b["m"], key_id(gw, "m"))
    assert seen(b["gw-b"]) == ("key", "secure", b["gw-b"], key_id(gw, "gw-b"))
    assert found["A:" + gwd.GW_B_NAME] == {"addresses": [b["gw-b"]], "dnssec": "secure"}


def test_b3_publishes_both_gateways_by_precedence(gw):
    served = gw.knotd.served("101.51.198.in-addr.arpa", "30", "IPSECKEY")
    assert sorted(re.findall(r"IPSECKEY\s+(\d+)\s+\d\s+\d\s+(\S+)", served)) == [
        ("10", gwd.DEAD), ("20", gwd.INET["gw-b"])], served


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, which becomes one) while knotd starts: namespaces and knotd go."""
    from oe import demo
    from oe.netns import wait_for

    seen: dict = {}

    def interrupted(world, host):
        dns = f"{world.prefix}-dns"
        wait_for(lambda: bool(pids_in(dns)), 20)
        seen.update(prefix=world.prefix, knotd=pids_in(dns))
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_serves", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gwd.build(tmp_path, start=())
    assert seen["knotd"] and not any(os.path.exists(f"/proc/{pid}") for pid in seen["knotd"])
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{seen['prefix']}-" not in listed


def pids_in(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]
