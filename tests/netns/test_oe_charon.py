"""oe's daemon against strongSwan charon, with charon's key published in DNS for oe to fetch.

    dns 192.0.2.53 (knotd)   alice 192.0.2.10 (oe start)   carol 192.0.2.30 (charon)

carol's RSA key is published as an IPSECKEY at 30.2.0.192.in-addr.arpa; alice's oe finds it
there, with no per-peer configuration. charon is configured statically with alice's public key
(it does not do OE itself). charon + kernel-libipsec forces ESP-in-UDP.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from oe import demo, hostkey
from oe.netns import World, wait_for

from charon import CHARON, Charon

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not CHARON.exists() or not shutil.which("swanctl"),
                       reason="strongSwan charon/swanctl not installed (make apt)"),
]

ALICE, CAROL = demo.ADDRESSES["alice"][0], demo.ADDRESSES["carol"][0]


@pytest.fixture
def charon_world(tmp_path):
    world = demo.build(tmp_path / "w", keyed=("alice", "carol"))
    charon = None
    try:
        world.capture, world.pcap = demo.start_capture(world)
        charon = Charon(
            world.hosts["carol"].name, world.hosts["carol"].dir / "charon", me=CAROL, peer=ALICE,
            key=hostkey.load(hostkey.hostkey_path(world.confdir("carol"))),
            peer_key=hostkey.load(hostkey.hostkey_path(world.confdir("alice"))))
        charon.start()
        demo.start_oe(world, "alice")
        yield world, charon
    finally:
        for name in list(world.daemons):
            demo.stop_oe(world, name)
        if charon is not None:
            charon.stop()
        world.close()


def status(world):
    return json.loads(demo.oe_cmd(world, "alice", "status", "--json").stdout)


def ping(world, host, dst, count=3):
    return world.world.run(world.hosts[host], "ping", "-c", str(count), "-i", "0.2", "-W", "3",
                           dst, check=False)


def assert_encrypted(world):
    World.stop(world.capture)
    kinds = demo.wire_summary(world.pcap, ALICE, CAROL)
    assert {k: n for k, n in kinds.items() if "clear" in k} == {}, kinds
    assert kinds.get("IKE or ESP-in-UDP (udp 4500)", 0) >= 6, kinds


def test_oe_initiates_to_charon_with_its_key_from_dns(charon_world):
    world, charon = charon_world
    assert ping(world, "alice", CAROL).returncode == 0
    [sa] = status(world)["sas"]
    assert (sa["dst"], sa["encap"], sa["initiator"]) == (CAROL, "ESP-in-UDP", True)
    assert sa["packets_in"] >= 3
    assert "hh" in charon.swanctl("--list-sas").stdout
    assert_encrypted(world)


def test_charon_initiates_and_oe_fetches_its_key_to_respond(charon_world):
    world, charon = charon_world
    charon.swanctl("--initiate", "--child", "hh")
    assert wait_for(lambda: status(world)["sas"], 10)
    [sa] = status(world)["sas"]
    assert (sa["dst"], sa["initiator"]) == (CAROL, False)
    assert ping(world, "carol", ALICE).returncode == 0
    assert ping(world, "alice", CAROL).returncode == 0
    assert_encrypted(world)
