"""PENDING gateway tests (docs/gateway.md 7.2): not collected (no test_ prefix), run by name
(`pytest tests/netns/pending_gateway.py`). Each moves to test_gateway.py once the features it
needs are merged and it passes there. What each needs, as of this branch's last merge (h-addr,
h-gwnet, h-child, h-resp; not h-init):

  1  a1 -> b1 across both gateways   h-init: b1's record names @gw-b.oe.example (FQDN gateway,
                                     section 5 FetchGateway), on gw-a as initiator and on gw-b
                                     for its client b1 (check_client resolving the FQDN)
  2  h -> a1 (gw-a answering)        h-init: h must reach a1 through a1's gateway (delegated
                                     target; today "oe does not negotiate with delegated
                                     gateways yet")
  5  a3/a2 refused with the reason   h-init: gw-a checks its client's record before initiating
                                     (today it initiates for any source in its subnets)
  6  b2 refused, allowed on reload   h-init: client check on gw-b, `oe initiate --src <client>`
  9  captures on inet and LANs       h-init: the a1 -> b1 tunnel (test 1)
  7  dead first gateway              h-init: candidates by precedence and fallback
  3  one IKE SA, several children    h-init (b1, b3 as delegated targets) on h-child's reuse

Same world, fixture and helpers as test_gateway.py (tests/netns/gateway_world.py).
"""

from __future__ import annotations

import ipaddress

import pytest

from oe import demo
from oe.netns import World, wait_for

import gateway_world as gwd
from gateway_world import (diagnose, has_eroute, restart, sa, tunnel, wait_eroute, wait_shunt,
                           world_fixture)  # noqa: F401 (world_fixture: gw)

pytestmark = gwd.NEEDS
pytest.importorskip("unbound", reason="python3-unbound is not importable: make the venv from "
                                      "Debian's /usr/bin/python3 --system-site-packages")

A1, A2, A3 = (gwd.CLIENTS[n] for n in ("a1", "a2", "a3"))
B1, B2, B3 = (gwd.CLIENTS[n] for n in ("b1", "b2", "b3"))
GW_A, GW_B, H = (gwd.INET[n] for n in ("gw-a", "gw-b", "h"))


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
