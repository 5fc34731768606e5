"""oe as a DNS-keyed gateway (issue 13), end to end in the gateway world of docs/gateway.md 7.1
(tests/netns/gateway_world.py): clients behind two oe gateways, an oe host, charon with a
subnet, a compromised gateway, knotd with the clients' delegating records. The tests of
docs/gateway.md 7.2.

One world for the module (oe on gw-a, gw-b and h), the tests in the order of 7.2's value; each
uses its own pair of hosts where it can, and puts back what it changes (oe.conf, a stopped
daemon). Every assertion's message carries the oe hosts' log tail, shunts and eroutes.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from cryptography.hazmat.primitives import serialization

from oe import demo
from oe.netns import World, wait_for

import gateway_world as gwd
from gateway_world import (diagnose, has_eroute, restart, sa, sysctl, tunnel, wait_eroute,
                           wait_shunt, world_fixture)  # noqa: F401 (world_fixture: gw)
from charon import pem_private
from test_ike_interop import OePeer

pytestmark = gwd.NEEDS
pytest.importorskip("unbound", reason="python3-unbound is not importable: make the venv from "
                                      "Debian's /usr/bin/python3 --system-site-packages")

A1, A2, A3, A4 = (gwd.CLIENTS[n] for n in ("a1", "a2", "a3", "a4"))
B1, B2, B3, B4 = (gwd.CLIENTS[n] for n in ("b1", "b2", "b3", "b4"))
GW_A, GW_B, H, C, M = (gwd.INET[n] for n in ("gw-a", "gw-b", "h", "c", "m"))
TS_UNACCEPTABLE = 38  # RFC 7296 3.10.1


# ---------------------------------------------------------------- 1. client <-> client


def test_1_client_to_client_through_both_gateways(gw):
    """a1 -> b4: gw-a negotiates for a1 with gw-b, which b4's secure record names, and gw-b
    answers for b4 (its client); TCP data arrives whole."""
    ok, what = demo.tcp_transfer(gw, "a1", "b4", 1 << 20)
    assert ok, what + "\n" + diagnose(gw, "gw-a", "gw-b")
    assert has_eroute(gw, "gw-a", tunnel(A1, B4, GW_B)), diagnose(gw, "gw-a")
    assert has_eroute(gw, "gw-b", tunnel(B4, A1, GW_A)), diagnose(gw, "gw-b")
    child = sa(gw, "gw-a", A1, B4)
    assert (child["peer"], child["initiator"]) == (GW_B, True)
    assert sa(gw, "gw-b", B4, A1)["initiator"] is False


# ---------------------------------------------------------------- 2. client <-> host


def test_2_client_to_host_gateway_initiates_for_its_client(gw):
    assert gw.ping("a1", "h").returncode == 0, diagnose(gw, "gw-a", "h")
    assert has_eroute(gw, "gw-a", tunnel(A1, H, H)), diagnose(gw, "gw-a")
    assert has_eroute(gw, "h", tunnel(H, A1, GW_A)), diagnose(gw, "h")
    [ike] = [i for i in gw.status("h")["ike_sas"] if i["remote_addr"] == GW_A]
    assert ike["initiator"] is False and ike["local_addr"] == H


def test_2_host_to_client_gateway_answers_for_its_client(gw):
    restart(gw, "h")  # its DELETEs end gw-a's tunnel for (a1, h): h must negotiate afresh
    assert wait_for(lambda: sa(gw, "gw-a", A1, H) is None, 10), diagnose(gw, "gw-a")
    assert gw.ping("h", "a1").returncode == 0, diagnose(gw, "h", "gw-a")
    assert has_eroute(gw, "h", tunnel(H, A1, GW_A)), diagnose(gw, "h")
    child = sa(gw, "gw-a", A1, H)
    assert child is not None and child["initiator"] is False, diagnose(gw, "gw-a")


# ---------------------------------------------------------------- 5. refused clients


@pytest.mark.parametrize("client, reason", [
    ("a3", f"record for our client {A3} has wrong key"),
    ("a2", f"record for our client {A2} delegates to {A2}, not us"),
])
def test_5_client_whose_record_does_not_delegate_to_us_is_refused(gw, client, reason):
    gw.ping(client, "b1", count=2)
    found = wait_shunt(gw, "gw-a", gwd.CLIENTS[client], B1)
    assert found is not None and reason in found["reason"], diagnose(gw, "gw-a")
    assert sa(gw, "gw-a", gwd.CLIENTS[client], B1) is None
    assert reason in gw.log("gw-a")


# ---------------------------------------------------------------- 6. unsigned delegation


def test_6_unsigned_delegation_is_refused_unless_allowed(gw):
    gw.ping("b2", "a1", count=2)
    found = wait_shunt(gw, "gw-b", B2, A1)
    assert found is not None and "allow_unsigned_delegation" in found["reason"], \
        diagnose(gw, "gw-b")
    assert sa(gw, "gw-b", B2, A1) is None
    try:
        # Both ends read b2's insecure record: gw-b for its client, gw-a for the TSi.
        for name in ("gw-a", "gw-b"):
            gw.write_conf(name, "allow_unsigned_delegation = true\n")
            demo.oe_cmd(gw, name, "reload")
        # --wait 0: `oe initiate` waits for any outcome towards A1, whatever its source
        out = demo.oe_cmd(gw, "gw-b", "initiate", A1, "--src", B2, "--wait", "0", check=False)
        assert out.returncode == 0, out.stdout + out.stderr + diagnose(gw, "gw-b", "gw-a")
        assert wait_eroute(gw, "gw-b", tunnel(B2, A1, GW_A)), diagnose(gw, "gw-b", "gw-a")
        assert gw.ping("b2", "a1").returncode == 0, diagnose(gw, "gw-b", "gw-a")
    finally:
        for name in ("gw-a", "gw-b"):
            gw.write_conf(name)
            demo.oe_cmd(gw, name, "reload", check=False)


# ---------------------------------------------------------------- 9. what the wires show


def test_9_only_ike_esp_and_dns_cross_the_internet(gw):
    inet = {name: gw.hosts[name].port for name in ("gw-a", "gw-b", "h")}
    lans = {"lan-a": gw.hosts["gw-a"].ports["eth1"], "lan-b": gw.hosts["gw-b"].ports["eth1"]}
    captures = {label: gw.capture(port, label) for label, port in {**inet, **lans}.items()}
    spoofed = "198.51.200.1"
    try:
        ok, what = demo.tcp_transfer(gw, "a1", "b4", 256 << 10, port=5002)
        assert ok, what + diagnose(gw, "gw-a", "gw-b")
        assert gw.ping("a1", "h").returncode == 0, diagnose(gw, "gw-a", "h")
        # a1 claims a source outside lan-a: gw-a's forward chain drops it (RFC 3704)
        gw.run("a1", "ip", "addr", "add", f"{spoofed}/32", "dev", "eth0")
        gw.ping("a1", "b4", count=2, source=spoofed)
    finally:
        gw.run("a1", "ip", "addr", "del", f"{spoofed}/32", "dev", "eth0", check=False)
        for proc, _pcap in captures.values():
            World.stop(proc)
    allowed = {"IKE (udp 500)", "IKE or ESP-in-UDP (udp 4500)", "ESP"}
    link = {"neighbour discovery"}  # IPv6 link-local chatter of the veths (RFC 4861)
    lan_nets = {"lan-a": ipaddress.ip_network(gwd.LANS["gw-a"][1]),
                "lan-b": ipaddress.ip_network(gwd.LANS["gw-b"][1])}
    for label, (_proc, pcap) in captures.items():
        kinds = gwd.wire_kinds(pcap)
        assert kinds, f"nothing captured on {label}"
        for (a, b, kind), count in kinds.items():
            where = f"{label}: {count} {kind} between {a} and {b}"
            assert spoofed not in (a, b) or label == "lan-a", where
            if spoofed in (a, b):
                continue  # a1's own wire: the forward chain drops it behind gw-a's eth1
            if label in inet:
                assert kind in allowed | link or (kind == "DNS" and gwd.DNS in (a, b)), where
            else:  # inside a LAN: clear, but always to or from one of its own clients
                assert kind not in allowed and (kind in link or any(
                    ipaddress.ip_address(x) in lan_nets[label] for x in (a, b))), where
    assert any(spoofed in (a, b) for a, b, _k in gwd.wire_kinds(captures["lan-a"][1])), \
        "the spoofed packets were not even sent"


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


# ---------------------------------------------------------------- 3. both gateways at once


def test_3_both_gateways_initiate_for_one_pair_at_once(gw):
    """With an IKE SA between the gateways (a1 <-> b4), a4 -> b4 and b4 -> a4 at the same
    moment (no tunnel for that pair yet: run before anything else uses it): gw-a and gw-b each
    ask for a CHILD SA on that IKE SA; they must settle on one tunnel, not delete each other's
    in turn (seen: "OE to 198.51.101.40 via 192.0.2.2 ended: deleted by peer" every ping)."""
    assert gw.ping("a1", "b4", count=2).returncode == 0, diagnose(gw, "gw-a", "gw-b")
    ping_both_ways_at_once(gw, "a4", "b4", "gw-b", f"OE to {B4} via {GW_B}")


# ---------------------------------------------------------------- 7. fallback by precedence


def test_7_dead_first_gateway_then_the_next_by_precedence(gw):
    """b3's records: precedence 10 names 192.0.2.99 (nobody), 20 names gw-b."""
    pinger = gw.world.spawn(gw.hosts["a1"], "ping", "-c", "60", "-i", "0.5", B3)
    try:
        assert wait_eroute(gw, "gw-a", tunnel(A1, B3, GW_B), 60), diagnose(gw, "gw-a")
    finally:
        World.stop(pinger)
    assert gwd.DEAD in gw.log("gw-a")
    assert gw.ping("a1", "b3").returncode == 0


# ---------------------------------------------------------------- 3. one IKE SA, many children


def test_3_one_ike_sa_between_gateways_carries_every_client_pair(gw):
    """a1 -> b4, then a4 -> b4: one IKE SA between gw-a and gw-b carries both pairs' CHILD
    SAs (docs/gateway.md 5), on both gateways."""
    for src in ("a1", "a4"):
        assert gw.ping(src, "b4", count=2).returncode == 0, diagnose(gw, "gw-a", "gw-b")
    assert_one_ike_sa_carries(gw, (A1, B4), (A4, B4))


def test_3_both_sides_initiate_for_one_pair_at_once(gw):
    """a4 -> h and h -> a4 at the same moment (a pair without a tunnel yet): gw-a starts a
    CHILD SA for its client, h one for a4 through gw-a; they must settle on one tunnel, not
    delete each other's in turn."""
    ping_both_ways_at_once(gw, "a4", "h", "h", f"OE to {H} via {H}")


# ---------------------------------------------------------------- 1. an FQDN gateway


def test_1_fqdn_gateway_in_the_clients_record(gw):
    """a1 -> b1, whose record names @gw-b.oe.example: gw-a resolves it (secure A) to go there,
    and gw-b must recognise itself in that name for its client b1."""
    assert gw.ping("a1", "b1").returncode == 0, diagnose(gw, "gw-a", "gw-b")
    assert wait_eroute(gw, "gw-a", tunnel(A1, B1, GW_B)), diagnose(gw, "gw-a", "gw-b")
    assert has_eroute(gw, "gw-b", tunnel(B1, A1, GW_A)), diagnose(gw, "gw-b")


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


def assert_one_ike_sa_carries(gw, *pairs) -> None:
    """The pairs' CHILD SAs ride one IKE SA between the gateways, on both ends. (Other IKE
    SAs between them may stand: gw-b negotiating for its client b1 towards a client whose
    record gw-a refuses leaves one without CHILD SAs until the childless rule ends it.)"""
    [carrier] = {sa(gw, "gw-a", src, dst)["sa_id"] for src, dst in pairs}
    for name, peer in (("gw-a", GW_B), ("gw-b", GW_A)):
        ikes = [i for i in gw.status(name)["ike_sas"] if i["remote_addr"] == peer
                and i["state"] == "ESTABLISHED"]
        assert any(i["child_sas"] >= len(pairs) for i in ikes), (ikes, diagnose(gw, name))
    assert carrier in {i["sa_id"] for i in gw.status("gw-a")["ike_sas"]}


def ping_both_ways_at_once(gw, a: str, b: str, other: str, tunnel_line: str) -> None:
    """a pings b and b pings a at the same moment; each gets through, and gw-a's tunnel
    (`tunnel_line`: "OE to X via G") is not deleted by the peer over and over."""
    both = [gw.world.spawn(gw.hosts[src], "ping", "-c", "5", "-i", "0.3", "-W", "3",
                           gw.address(dst)) for src, dst in ((a, b), (b, a))]
    try:
        assert all(proc.wait(30) == 0 for proc in both), diagnose(gw, "gw-a", other)
    finally:
        for proc in both:
            World.stop(proc)
    assert gw.log("gw-a").count(f"{tunnel_line} ended: deleted by peer") <= 1, \
        diagnose(gw, "gw-a", other)
