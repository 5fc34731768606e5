"""DNSSEC end to end (issue 12): the demo world's zones are signed by knotd and alice's trust
anchor is their DS; an attacker who answers alice's DNS queries for bob's signed reverse name
(here: the nameserver itself, replaced by one serving a forged zone) gets a %drop shunt with
the validator's reason, never IKE with the spoofed key, even for private-or-clear.

    dns 192.0.2.53   alice 192.0.2.10   bob 192.0.2.20   (+ 2001:db8::/64)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from oe import demo, hostkey
from oe.config import DnsConfig
from oe.knotd import NSEC, Knotd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
pytest.importorskip("unbound", reason="python3-unbound is not importable: make the venv from "
                                      "Debian's /usr/bin/python3 --system-site-packages")

ALICE, BOB = demo.ADDRESSES["alice"][0], demo.ADDRESSES["bob"][0]
BOB_REVERSE = "20.2.0.192.in-addr.arpa."

# In alice's namespace: the key lookup oe makes, validating from alice's anchors (oe.conf).
LOOKUP = """
import asyncio, json, sys
from pathlib import Path
from oe.config import load
from oe.dnskeys.fetcher import KeyFetcher
from oe.dnskeys.unbound import UnboundSource
confdir = Path(sys.argv[1])
dns = load(confdir).dns
source = UnboundSource.from_config(dns.nameservers, dns.port, dns.trust_anchors, confdir)
async def main():
    try:
        return await KeyFetcher(dns, source).fetch(sys.argv[2])
    finally:
        source.close()
print(json.dumps(asyncio.run(main()).as_json()))
"""


def daemon_validates() -> bool:
    """Does the daemon's key source (oe.dnskeys.fetcher.make_source) validate?"""
    from oe.dnskeys.fetcher import make_source
    return type(make_source(DnsConfig(nameservers=("127.0.0.1",)), Path("/"))).__name__ \
        == "UnboundSource"


@pytest.fixture
def world(tmp_path):
    made = demo.build(tmp_path / "w", keyed=("alice", "bob"))
    try:
        yield made
    finally:
        for name in list(made.daemons):
            demo.stop_oe(made, name)
        made.close()


def lookup(world, target: str) -> dict:
    out = world.world.run(world.hosts["alice"], sys.executable, "-c", LOOKUP,
                          str(world.confdir("alice")), target)
    return json.loads(out.stdout)


def forge(world, tmp_path, signed: bool) -> None:
    """Replace the world's nameserver by an attacker's, whose zones give bob's names a key of
    the attacker's choosing (alice's own: any key but bob's), unsigned or signed with the
    attacker's own DNSSEC keys (whose DS is in no anchor of alice's)."""
    real = world.knotd
    attacker = hostkey.public_blob(hostkey.load(hostkey.hostkey_path(world.confdir("alice"))))
    zones = demo.zone_texts({"alice": attacker, "bob": attacker})
    real.stop()
    world.knotd = Knotd(tmp_path / "forger", zones, listen=real.listen, prefix=real.prefix,
                        signing={o: NSEC for o in zones} if signed else None)
    world.knotd.start(ready=lambda: demo._serves(world.world, world.hosts["alice"])
                      and world.knotd.signed())


def test_the_demo_world_validates_secure(world):
    for target in (BOB, demo.ADDRESSES["bob"][1]):
        found = lookup(world, target)
        assert (found["verdict"], found["dnssec"], found["source"]) == ("key", "secure",
                                                                        "IPSECKEY")
    absent = lookup(world, demo.ADDRESSES["carol"][0])  # proven absent: NSEC
    assert (absent["verdict"], absent["dnssec"]) == ("not-capable", "secure")


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "wrongly-signed"])
def test_spoofed_key_for_a_signed_name_is_bogus(world, tmp_path, signed):
    forge(world, tmp_path, signed)
    found = lookup(world, BOB)
    assert (found["verdict"], found["dnssec"], found["key_id"]) == ("deny", "bogus", None)
    assert found["error"].startswith(f"DNSSEC validation failed for {BOB_REVERSE}: ")


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "wrongly-signed"])
def test_spoofed_key_leads_to_a_drop_shunt_never_to_ike(world, tmp_path, signed):
    if not daemon_validates():
        pytest.skip("the daemon does not build the validating source yet "
                    "(oe.dnskeys.fetcher.make_source: UnboundSource for dnssec = \"validate\")")
    forge(world, tmp_path, signed)
    world.capture, world.pcap = demo.start_capture(world)
    demo.start_oe(world, "alice")
    demo.start_oe(world, "bob")
    ping = world.world.run(world.hosts["alice"], "ping", "-c", "2", "-i", "0.3", "-W", "2", BOB,
                           check=False)
    assert ping.returncode != 0  # private-or-clear, yet denied: no clear fallback either
    status = json.loads(demo.oe_cmd(world, "alice", "status", "--json").stdout)
    shunts = {s["dst"]: s for s in status["shunts"]}
    assert shunts[BOB]["said"] == "%drop" and shunts[BOB]["group"] == "private-or-clear"
    assert "DNSSEC validation failed" in shunts[BOB]["reason"]
    demo.World.stop(world.capture)
    kinds = demo.wire_summary(world.pcap, ALICE, BOB)
    assert kinds == {}, f"alice spoke to bob with a spoofed key: {kinds}"
