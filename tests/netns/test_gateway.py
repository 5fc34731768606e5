"""oe as a DNS-keyed gateway (issue 13), end to end in the gateway world of docs/gateway.md 7.1
(tests/netns/gateway_world.py): clients behind two oe gateways, an oe host, charon with a
subnet, knotd with the clients' delegating records. The tests of docs/gateway.md 7.2 that pass
on this branch; the others wait in tests/netns/pending_gateway.py, which says what each needs.

One world for the module (oe on gw-a, gw-b and h); each test uses its own pair of hosts where
it can, and puts back what it changes (oe.conf, a stopped daemon).
"""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives import serialization

from oe import demo
from oe.netns import World, wait_for

import gateway_world as gwd
from gateway_world import (diagnose, has_eroute, sysctl, tunnel, wait_eroute,
                           world_fixture)  # noqa: F401 (world_fixture: gw)
from charon import pem_private
from test_ike_interop import OePeer

pytestmark = gwd.NEEDS
pytest.importorskip("unbound", reason="python3-unbound is not importable: make the venv from "
                                      "Debian's /usr/bin/python3 --system-site-packages")

A1, A2 = gwd.CLIENTS["a1"], gwd.CLIENTS["a2"]
B1 = gwd.CLIENTS["b1"]
GW_A, H, C, M = (gwd.INET[n] for n in ("gw-a", "h", "c", "m"))
TS_UNACCEPTABLE = 38  # RFC 7296 3.10.1


# ---------------------------------------------------------------- 2. client <-> host


def test_2_client_to_host_gateway_initiates_for_its_client(gw):
    assert gw.ping("a1", "h").returncode == 0, diagnose(gw, "gw-a", "h")
    assert has_eroute(gw, "gw-a", tunnel(A1, H, H)), diagnose(gw, "gw-a")
    assert has_eroute(gw, "h", tunnel(H, A1, GW_A)), diagnose(gw, "h")
    [ike] = [i for i in gw.status("h")["ike_sas"] if i["remote_addr"] == GW_A]
    assert ike["initiator"] is False and ike["local_addr"] == H


# ---------------------------------------------------------------- 8. compromised gateway


@pytest.fixture
def mallory(gw):
    d = gw.hosts["m"].dir
    (d / "m.pem").write_bytes(pem_private(gw.keys["m"]))
    (d / "gw-a.pub").write_bytes(gw.keys["gw-a"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    peer = OePeer(gw.hosts["m"].name, ["--local", M, "--peer", GW_A, "--key", str(d / "m.pem"),
                                       "--peer-pub", str(d / "gw-a.pub")])
    try:
        peer.expect("ready")
        yield peer
    finally:
        peer.stop()


@pytest.mark.parametrize("proposal, client", [({"local_ts": [B1]}, B1),
                                              ({"remote_ts": [A2]}, A2)],
                         ids=["tsi-of-another-gateway", "tsr-not-delegating"])
def test_8_compromised_gateway_cannot_speak_for_clients_not_its_own(gw, mallory, proposal,
                                                                    client):
    """m holds a valid key with a secure record of its own, yet b1's record names gw-b (TSi),
    and a2's names nobody but a2 (TSr): gw-a answers TS_UNACCEPTABLE, keeps the IKE SA and
    installs nothing."""
    mallory.send("initiate", **proposal)
    mallory.expect("IkeSaEstablished")
    failed = mallory.expect("ChildSaFailed")
    assert failed["notify"] == TS_UNACCEPTABLE, failed
    assert not [s for s in gw.status("gw-a")["sas"] if s["peer"] == M]
    assert [i for i in gw.status("gw-a")["ike_sas"] if i["remote_addr"] == M]
    whose = "his" if "local_ts" in proposal else "our"
    said = (f"gateway {M} wants connection with {client} as {whose} client, but DNS fails to "
            f"confirm delegation")
    assert wait_for(lambda: said in gw.log("gw-a"), 5), diagnose(gw, "gw-a")


# ---------------------------------------------------------------- 4. charon as gateway peer


def test_4_charon_as_gateway_for_its_subnet(gw):
    """charon proposes TSi 198.51.102.5/32 then 198.51.102.128/25 (part of its subnet), TSr a1:
    gw-a narrows to the host and accepts it because 198.51.102.5's record delegates to c."""
    charon = gw.start_charon()
    out = charon.swanctl("--initiate", "--child", "hh", check=False)
    assert out.returncode == 0, out.stdout[-800:] + diagnose(gw, "gw-a")
    assert wait_eroute(gw, "gw-a", tunnel(A1, gwd.C_CLIENT, C)), diagnose(gw, "gw-a")
    assert gw.ping("c", "a1", source=gwd.C_CLIENT).returncode == 0, diagnose(gw, "gw-a")
    listed = charon.swanctl("--list-sas").stdout
    assert re.search(rf"local\s+{re.escape(gwd.C_CLIENT)}/32\s+remote\s+{re.escape(A1)}/32",
                     listed), listed


# ---------------------------------------------------------------- 10. forwarding


def test_10_forwarding_only_where_subnets_are_and_restored_on_stop(gw):
    """h has no [gateway] subnets: oe leaves its forwarding alone. gw-a forwards from its LAN,
    and from the WAN too (the clients' replies; its forward chain lets only packets to a
    client through, docs/gateway.md 2.1), until oe stops: then it is as it was (off)."""
    for key in ("net.ipv4.conf.all.forwarding", "net.ipv4.conf.eth0.forwarding"):
        assert sysctl(gw, "h", key) == "0", key
    assert sysctl(gw, "gw-a", "net.ipv4.conf.eth1.forwarding") == "1"
    demo.stop_oe(gw, "gw-a")
    try:
        for dev in ("all", "eth0", "eth1"):
            assert sysctl(gw, "gw-a", f"net.ipv4.conf.{dev}.forwarding") == "0", dev
        assert gw.ping("a1", "b1", count=1).returncode != 0  # no oe, no forwarding
    finally:
        demo.start_oe(gw, "gw-a")


# ---------------------------------------------------------------- the demo's gateway scene


def test_demo_gateway_scene_dave_reaches_bob_through_alice(tmp_path):
    """docs/gateway.md 7.3: dave (no oe) behind alice pings bob; both eroutes name the pair
    dave <-> bob, and alice's wire shows none of dave's packets, only ESP and IKE."""
    world = demo.build(tmp_path / "demo", gateway=True)
    try:
        for name in ("alice", "bob"):
            demo.start_oe(world, name)
        capture, pcap = demo.start_capture(world)
        ok, text = demo.gateway_scene(world)
        World.stop(capture)
        assert ok, text
        bob = demo.ADDRESSES["bob"][0]
        assert demo.wire_summary(pcap, demo.DAVE, bob) == {}
        kinds = demo.wire_summary(pcap, demo.ADDRESSES["alice"][0], bob)
        assert kinds and not [k for k in kinds if "clear" in k], kinds
    finally:
        for name in list(world.daemons):
            demo.stop_oe(world, name)
        world.close()
