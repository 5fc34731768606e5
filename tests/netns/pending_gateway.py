"""PENDING gateway tests (docs/gateway.md 7.2): not collected (no test_ prefix), run by name
(`pytest tests/netns/pending_gateway.py`). Each moves to test_gateway.py once the feature it
needs is merged and it passes there. What each needs, as of this branch's last merge:

  1  a1 -> b1 across both gateways   h-init (client initiator, FQDN gateway), h-resp (responder
                                     for a client: TSr = b1, TSi = a1 confirmed by a1's record)
  2  a1 -> h, h -> a1                h-init (client initiator; h reaching a1 via gw-a, a
                                     delegated target), h-resp (gw-a answering for a1)
  5  a3/a2 refused with the reason   h-init (choice.check_client's reasons on the initiator)
  6  b2 refused, allowed on reload   h-init (client check; `oe initiate --src <client>`),
                                     h-resp (gw-a's TSi check with allow_unsigned_delegation)
  9  captures on inet and LANs       h-init and h-resp (the a1 -> b1 and a1 -> h tunnels)
  8  compromised gateway m           h-resp (TSi/TSr delegation checks, "DNS fails to confirm
                                     delegation", TS_UNACCEPTABLE)
  4  charon as gateway peer          h-resp (TSi 198.51.102.5 confirmed by its record)
  7  dead first gateway              h-init (candidates by precedence, fallback)
  3  one IKE SA, several children    h-init + h-child (IKE SA reuse: route_initiate, CreateChild)
  demo scene (7.3)                   h-init + h-resp (alice for dave, bob answering for dave)

Same world, fixture and helpers as test_gateway.py (tests/netns/gateway_world.py).
"""

from __future__ import annotations

import ipaddress
import os
import shutil

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

A1, A2, A3 = (gwd.CLIENTS[n] for n in ("a1", "a2", "a3"))
B1, B2, B3 = (gwd.CLIENTS[n] for n in ("b1", "b2", "b3"))
GW_A, GW_B, H, C, M = (gwd.INET[n] for n in ("gw-a", "gw-b", "h", "c", "m"))
TS_UNACCEPTABLE = 38  # RFC 7296 3.10.1


# ---------------------------------------------------------------- 1. client <-> client


def test_1_client_to_client_through_both_gateways(gw):
    """a1 -> b1: gw-a negotiates for a1 with gw-b, found through b1's record naming
    @gw-b.oe.example (an FQDN gateway, its address secure in DNS); TCP data arrives whole."""
    ok, what = demo.tcp_transfer(gw, "a1", "b1", 1 << 20)
    assert ok, what + "\n" + diagnose(gw, "gw-a", "gw-b")
    assert has_eroute(gw, "gw-a", tunnel(A1, B1, GW_B)), diagnose(gw, "gw-a")
    assert has_eroute(gw, "gw-b", tunnel(B1, A1, GW_A)), diagnose(gw, "gw-b")
    child = sa(gw, "gw-a", A1, B1)
    assert (child["peer"], child["initiator"]) == (GW_B, True)
    assert sa(gw, "gw-b", B1, A1)["initiator"] is False


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
        out = demo.oe_cmd(gw, "gw-b", "initiate", A1, "--src", B2, check=False)
        assert out.returncode == 0, out.stdout + out.stderr + diagnose(gw, "gw-b", "gw-a")
        assert gw.ping("b2", "a1").returncode == 0, diagnose(gw, "gw-b", "gw-a")
        assert has_eroute(gw, "gw-b", tunnel(B2, A1, GW_A)), diagnose(gw, "gw-b")
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
        ok, what = demo.tcp_transfer(gw, "a1", "b1", 256 << 10, port=5002)
        assert ok, what + diagnose(gw, "gw-a", "gw-b")
        assert gw.ping("a1", "h").returncode == 0, diagnose(gw, "gw-a", "h")
        # a1 claims a source outside lan-a: gw-a's forward chain drops it (RFC 3704)
        gw.run("a1", "ip", "addr", "add", f"{spoofed}/32", "dev", "eth0")
        gw.ping("a1", "b1", count=2, source=spoofed)
    finally:
        gw.run("a1", "ip", "addr", "del", f"{spoofed}/32", "dev", "eth0", check=False)
        for proc, _pcap in captures.values():
            World.stop(proc)
    allowed = {"IKE (udp 500)", "IKE or ESP-in-UDP (udp 4500)", "ESP"}
    lan_nets = {"lan-a": ipaddress.ip_network(gwd.LANS["gw-a"][1]),
                "lan-b": ipaddress.ip_network(gwd.LANS["gw-b"][1])}
    for label, (_proc, pcap) in captures.items():
        kinds = gwd.wire_kinds(pcap)
        assert kinds, f"nothing captured on {label}"
        for (a, b, kind), count in kinds.items():
            where = f"{label}: {count} {kind} between {a} and {b}"
            assert spoofed not in (a, b) or label == "lan-a", where
            if label in inet:
                assert kind in allowed or (kind == "DNS" and gwd.DNS in (a, b)), where
            else:  # inside a LAN: clear, but always to or from one of its own clients
                assert any(ipaddress.ip_address(x) in lan_nets[label] for x in (a, b)), where
                assert kind not in allowed, where
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
    if "local_ts" in proposal:
        assert wait_for(lambda: "DNS fails to confirm delegation" in gw.log("gw-a"), 5), \
            diagnose(gw, "gw-a")


# ---------------------------------------------------------------- 4. charon as gateway peer


def test_4_charon_as_gateway_for_its_subnet(gw):
    """charon proposes TSi 198.51.102.5/32 then 198.51.102.0/24 (its subnet), TSr a1: gw-a
    narrows to the host and accepts it because 198.51.102.5's record delegates to c."""
    charon = gw.start_charon()
    out = charon.swanctl("--initiate", "--child", "hh", check=False)
    assert out.returncode == 0, out.stdout[-800:] + diagnose(gw, "gw-a")
    assert wait_eroute(gw, "gw-a", tunnel(A1, gwd.C_CLIENT, C)), diagnose(gw, "gw-a")
    assert gw.ping("c", "a1", source=gwd.C_CLIENT).returncode == 0, diagnose(gw, "gw-a")
    assert f"{gwd.C_CLIENT}/32 === {A1}/32" in charon.swanctl("--list-sas").stdout


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
    for src, dst in (("a1", "b1"), ("b1", "a1"), ("a1", "b3")):
        assert gw.ping(src, dst, count=2).returncode == 0, diagnose(gw, "gw-a", "gw-b")
    for name, src, peer in (("gw-a", A1, GW_B), ("gw-b", B1, GW_A)):
        ikes = [i for i in gw.status(name)["ike_sas"] if i["remote_addr"] == peer
                and i["state"] == "ESTABLISHED"]
        assert len(ikes) == 1 and ikes[0]["child_sas"] >= 2, (ikes, diagnose(gw, name))
    assert {sa(gw, "gw-a", A1, B1)["sa_id"], sa(gw, "gw-a", A1, B3)["sa_id"]} == \
        {ikes_of(gw, "gw-a", GW_B)}


def ikes_of(gw, name: str, peer: str) -> int:
    [ike] = [i for i in gw.status(name)["ike_sas"] if i["remote_addr"] == peer
             and i["state"] == "ESTABLISHED"]
    return ike["sa_id"]


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
