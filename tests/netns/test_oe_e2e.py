"""oe end to end: real daemons (`oe start`), real knotd, real TUN devices, namespaces on a bridge.

    dns 192.0.2.53   alice 192.0.2.10   bob 192.0.2.20   carol 192.0.2.30   (+ 2001:db8::/64)

alice and bob have keys in DNS, carol has none. tcpdump on the bridge sees every packet, so
"nothing leaks" is checked on the wire, not inferred. The policy-group fates are FreeS/WAN's
(README: Policy groups).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from oe import demo
from oe.netns import World, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALICE, BOB, CAROL = (demo.ADDRESSES[n][0] for n in ("alice", "bob", "carol"))
ALICE6, BOB6, CAROL6 = (demo.ADDRESSES[n][1] for n in ("alice", "bob", "carol"))
POC = {"private-or-clear": "0.0.0.0/0\n::/0\n"}


@pytest.fixture
def make_world(tmp_path):
    """build(...) a world, start oe on the named hosts, capture the wire; always torn down."""
    made = []

    def make(oe_on=("alice", "bob"), **kwargs):
        world = demo.build(tmp_path / f"w{len(made)}", **kwargs)
        made.append(world)
        world.capture, world.pcap = demo.start_capture(world)
        for name in oe_on:
            demo.start_oe(world, name)
        return world

    yield make
    for world in made:
        for name in list(world.daemons):
            demo.stop_oe(world, name)
        world.close()


def ping(world, src, dst, count=3, check=True):
    proc = world.world.run(world.hosts[src], "ping", "-c", str(count), "-i", "0.2", "-W", "3",
                           dst, check=False)
    if check:
        assert proc.returncode == 0, f"{src} ping {dst}: {proc.stdout}{proc.stderr}"
    return proc


def status(world, name):
    return json.loads(demo.oe_cmd(world, name, "status", "--json").stdout)


def wire(world, a, b):
    """Packets between a and b by kind, once tcpdump has written everything."""
    World.stop(world.capture)
    return demo.wire_summary(world.pcap, a, b)


def cleartext(kinds):
    return {k: n for k, n in kinds.items() if "clear" in k}


IKE_SA_INIT, CREATE_CHILD_SA = 34, 36


def ike_requests(pcap):
    """The exchange types of the IKE requests on the wire, in order (the IKE header is clear:
    RFC 7296 3.1; on 4500 after the non-ESP marker, RFC 3948 2.2)."""
    from scapy.all import UDP, rdpcap  # scapy is slow to import
    out = []
    for packet in rdpcap(str(pcap)):
        if UDP not in packet or not {500, 4500} & {packet[UDP].sport, packet[UDP].dport}:
            continue
        data = bytes(packet[UDP].payload)
        if 4500 in (packet[UDP].sport, packet[UDP].dport):
            if data[:4] != bytes(4):
                continue  # ESP-in-UDP
            data = data[4:]
        if len(data) >= 28 and not data[19] & 0x20:
            out.append(data[18])
    return out


def test_private_or_clear_both_sides_encrypt_both_ways(make_world):
    """p-o-c <-> p-o-c with keys: IPv4 and IPv6, ping and TCP, either side first: all ESP."""
    world = make_world()
    first = ping(world, "alice", BOB)
    assert " 0% packet loss" in first.stdout   # the held first packet is released, not lost
    ping(world, "bob", ALICE)
    ping(world, "alice", BOB6)
    ok, what = demo.tcp_transfer(world, "alice", "bob", 8 << 20)
    assert ok, what
    sas = status(world, "alice")["sas"]
    assert {(sa["dst"], sa["encap"], sa["algorithm"]) for sa in sas} == {
        (BOB, "ESP", "AES_GCM_16_128"), (BOB6, "ESP", "AES_GCM_16_128")}
    assert all(sa["bytes_out"] > 0 and sa["bytes_in"] > 0 for sa in sas)
    bob_sas = {sa["dst"]: sa for sa in status(world, "bob")["sas"]}
    assert set(bob_sas) == {ALICE, ALICE6}
    kinds = wire(world, ALICE, BOB)
    assert cleartext(kinds) == {} and kinds.get("ESP", 0) > 1000, kinds
    assert cleartext(demo.wire_summary(world.pcap, ALICE6, BOB6)) == {}


@pytest.mark.parametrize("forcing", ["alice", "bob"])
def test_forced_udp_encapsulation_on_one_side_puts_both_ways_in_udp(make_world, forcing):
    """[esp] encapsulation = "udp" on either end, no NAT: both SAs are ESP-in-UDP (the other
    end believes a NAT is in the way, RFC 7296 2.23), raw ESP never goes on the wire and
    nothing in clear. The dual-stack TUN is sized for IPv4 (README: Tunnel throughput)."""
    world = make_world(conf={forcing: '[esp]\nencapsulation = "udp"\n'})
    ping(world, "alice", BOB)
    ping(world, "bob", ALICE)
    tun = world.world.run(world.hosts["alice"], "ip", "link", "show", "oe0").stdout
    assert " mtu 1435 " in tun, tun
    for name, peer in (("alice", BOB), ("bob", ALICE)):
        [sa] = [sa for sa in status(world, name)["sas"] if sa["dst"] == peer]
        assert sa["encap"] == "ESP-in-UDP", sa
    kinds = wire(world, ALICE, BOB)
    assert cleartext(kinds) == {} and "ESP" not in kinds, kinds
    assert kinds.get("IKE or ESP-in-UDP (udp 4500)", 0) >= 6, kinds


def test_fates_without_a_key_and_block(make_world):
    """private -> no key: dropped, nothing on the wire; p-o-c -> no key: clear; block: ICMP."""
    world = make_world(oe_on=("alice",), groups={
        "alice": {"private-or-clear": "0.0.0.0/0\n::/0\n", "private": f"{CAROL}\n",
                  "block": f"{BOB6}\n"}})
    assert ping(world, "alice", CAROL, check=False).returncode != 0
    ping(world, "alice", CAROL6)                                  # falls back to clear
    blocked = ping(world, "alice", BOB6, count=1, check=False)
    assert blocked.returncode != 0 and "Administratively prohibited" in blocked.stdout
    shunts = {s["dst"]: s for s in status(world, "alice")["shunts"]}
    assert shunts[CAROL]["said"] == "%drop" and shunts[CAROL]["group"] == "private"
    assert "no IPSECKEY, TXT X-IPsec-Server or KEY record at 30.2.0.192.in-addr.arpa" in \
        shunts[CAROL]["reason"]
    assert shunts[CAROL6]["said"] == "%pass" and shunts[CAROL6]["group"] == "private-or-clear"
    assert 0 < shunts[CAROL]["expires_in"] <= 900
    kinds = wire(world, ALICE, CAROL)
    assert kinds == {}, f"a private flow leaked: {kinds}"
    assert demo.wire_summary(world.pcap, ALICE6, CAROL6).get("ICMP in clear", 0) >= 6
    # `oe initiate` forgets the failure shunt and tries again at once (whack --oppohere).
    first = shunts[CAROL]["expires_in"]
    again = demo.oe_cmd(world, "alice", "initiate", CAROL, check=False)
    assert f"initiating OE for {ALICE} -> {CAROL}" in again.stdout
    assert again.returncode == 2 and f"OE with {CAROL} failed" in again.stderr  # issue 15, 6
    assert wait_for(lambda: any(s["dst"] == CAROL and s["said"] == "%drop"
                                and s["expires_in"] > first for s in
                                status(world, "alice")["shunts"]), 10)
    bad = demo.oe_cmd(world, "alice", "initiate", "not-an-address", check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "oe: 'not-an-address' is not an IPv4 or IPv6 address")


def test_clear_or_private_answers_but_never_initiates(make_world):
    """bob (clear-or-private) pings alice in clear; alice traps the reply and initiates."""
    world = make_world(groups={"bob": {"clear-or-private": "0.0.0.0/0\n"}})
    ping(world, "bob", ALICE, count=5)
    assert wait_for(lambda: status(world, "bob")["sas"], 10)
    [sa] = status(world, "bob")["sas"]
    assert sa["dst"] == ALICE and sa["initiator"] is False
    ping(world, "bob", ALICE)                                      # now encrypted
    assert status(world, "bob")["sas"][0]["packets_out"] >= 3
    assert status(world, "alice")["sas"][0]["initiator"] is True


@pytest.mark.parametrize("entries", [f"{ALICE}\n{ALICE6}\n", "192.0.2.0/24\n2001:db8::/64\n"],
                         ids=["host", "wider"])
def test_clear_or_private_responder_replies_encrypted(make_world, entries):
    """bob lists alice in clear-or-private (as /32 and /128, or within wider CIDRs); alice
    initiates: bob answers OE and every reply of his goes on the SA, never in clear. (His host
    route into the TUN for alice and the group's throw route may share one prefix: the host
    route must win.)"""
    world = make_world(groups={"bob": {"clear-or-private": entries}})
    for dst in (BOB, BOB6):
        assert " 0% packet loss" in ping(world, "alice", dst, count=4).stdout
    sas = {sa["dst"]: sa for sa in status(world, "bob")["sas"]}
    assert set(sas) == {ALICE, ALICE6}
    assert not any(sa["initiator"] for sa in sas.values())
    assert {dst: sa["packets_out"] >= 4 for dst, sa in sas.items()} == {ALICE: True, ALICE6: True}
    kinds = wire(world, ALICE, BOB)
    assert cleartext(kinds) == {} and kinds.get("ESP", 0) >= 8, kinds
    kinds6 = demo.wire_summary(world.pcap, ALICE6, BOB6)
    assert cleartext(kinds6) == {} and kinds6.get("ESP", 0) >= 8, kinds6


def test_clear_group_refuses_inbound_oe(make_world):
    """bob lists alice as clear: he never answers her IKE, and she falls back to clear."""
    world = make_world(groups={"bob": {"clear": f"{ALICE}\n"}})
    ping(world, "alice", BOB, count=1, check=False)
    # alice's IKE gives up after its retransmission budget (~8 s), then %pass
    assert wait_for(lambda: any(s["said"] == "%pass" for s in status(world, "alice")["shunts"]),
                    20)
    [shunt] = [s for s in status(world, "alice")["shunts"] if s["dst"] == BOB]
    assert shunt["reason"].startswith("IKE timeout")
    ping(world, "alice", BOB)
    assert status(world, "bob")["sas"] == []
    assert "refused IKE from 192.0.2.10" in (world.hosts["bob"].dir / "oe.log").read_text()


def test_private_flow_never_leaks_through_reload_and_stop(make_world):
    """A capture across negotiation, steady state, `oe reload` and `oe stop` of the initiator."""
    world = make_world(groups={"alice": {"private": f"{BOB}\n"}})
    pinger = world.world.spawn(world.hosts["alice"], "ping", "-i", "0.05", BOB, log="ping.log")
    assert wait_for(lambda: status(world, "alice")["sas"], 10)
    spis = [(sa["spi_in"], sa["spi_out"]) for sa in status(world, "alice")["sas"]]
    for _ in range(2):
        assert "reloaded" in demo.oe_cmd(world, "alice", "reload").stdout
        time.sleep(0.3)
    # the very SA survived the reloads (not a new one negotiated in their wake)
    assert [(sa["spi_in"], sa["spi_out"]) for sa in status(world, "alice")["sas"]] == spis
    demo.stop_oe(world, "alice")
    time.sleep(0.5)                                                # pings keep trying after stop
    World.stop(pinger, sig=2)
    after = ping(world, "alice", BOB, count=1, check=False)       # still inside the capture
    assert after.returncode != 0                                   # fail closed while oe is down
    kinds = wire(world, ALICE, BOB)
    assert cleartext(kinds) == {}, f"a private flow leaked: {kinds}"
    assert kinds.get("ESP", 0) > 10


def test_bad_reload_changes_nothing(make_world):
    world = make_world(oe_on=("alice",))
    before = status(world, "alice")["eroutes"]
    policies = world.confdir("alice") / "policies"
    (policies / "private").write_text("192.0.2.0/24\nnot-an-address\n")
    proc = demo.oe_cmd(world, "alice", "reload", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"oe: {policies}/private:2: host name 'not-an-address' is not "
                                   "allowed: write an address or CIDR (names are not resolved "
                                   "when policy loads)")
    assert status(world, "alice")["eroutes"] == before


def test_restarted_peer_is_recovered(make_world):
    """bob's oe dies (SIGKILL) and comes back: alice's liveness check notices, OE resumes."""
    world = make_world(conf={"alice": "[ike]\ndpd_delay = 1.0\n"})
    ping(world, "alice", BOB)
    world.daemons["bob"].kill()
    world.daemons.pop("bob").wait()
    demo.start_oe(world, "bob")
    # alice's SA points at an instance that is gone; DPD ends it and the %trap is back
    assert wait_for(lambda: ping(world, "alice", BOB, count=1, check=False).returncode == 0, 40)
    [sa] = status(world, "bob")["sas"]
    assert sa["dst"] == ALICE


def test_oe_start_errors_are_one_line(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([*demo.OE, "--confdir", str(tmp_path), "--rundir", str(tmp_path / "r"),
                           "start"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "hostkey.pem" in proc.stderr


def test_sas_in_use_are_rekeyed_and_idle_ones_deleted(make_world):
    """Short lifetimes: a busy SA is rekeyed at its soft limit, an idle one deleted (both ends),
    after which the %trap is back and the next packet negotiates again."""
    world = make_world(conf={"alice": "[ike]\nsa_lifetime = 6.0\nrekey_margin = 3.0\n"})
    pinger = world.world.spawn(world.hosts["alice"], "ping", "-i", "0.2", BOB, log="ping.log")
    assert wait_for(lambda: status(world, "alice")["sas"], 10)
    [first] = status(world, "alice")["sas"]
    assert wait_for(lambda: status(world, "alice")["sas"][0]["spi_out"] != first["spi_out"], 15)
    rekeyed = status(world, "alice")
    [sa] = rekeyed["sas"]
    # A rekey, not expiry and a new negotiation: the same tunnel lives on (its age ran on),
    # and with pings every 0.2 s there was no moment without an SA (no second acquire).
    assert sa["age"] > first["age"] and sa["spi_in"] != first["spi_in"]
    assert rekeyed["datapath"]["acquires"] == 1
    World.stop(pinger, sig=2)
    assert wait_for(lambda: status(world, "alice")["sas"] == [], 15)   # idle: deleted
    assert wait_for(lambda: status(world, "bob")["sas"] == [], 5)      # bob honoured the DELETE
    log = (world.hosts["alice"].dir / "oe.log").read_text()
    assert "idle, deleting" in log
    ping(world, "alice", BOB)                                          # %trap again: renegotiated
    assert len(status(world, "alice")["sas"]) == 1
    # On the wire: two IKE SAs (the first, and the one after the idle deletion), and the
    # rekey a CREATE_CHILD_SA inside the first (RFC 7296 2.8)
    wire(world, ALICE, BOB)
    requests = ike_requests(world.pcap)
    assert requests.count(IKE_SA_INIT) == 2 and requests.count(CREATE_CHILD_SA) >= 1, requests


def test_oe_start_daemon_detaches_once_serving(make_world):
    world = make_world(oe_on=())
    started = demo.oe_cmd(world, "alice", "start", "--daemon")
    assert "oe started in the background" in started.stdout
    assert "oe.log" in started.stdout
    assert status(world, "alice")["eroutes"]
    assert "stopping" in demo.oe_cmd(world, "alice", "stop").stdout
    log = world.rundir("alice") / "oe.log"
    assert wait_for(lambda: "oe stopped" in log.read_text(), 10)
    assert "oe started" in log.read_text()
    assert not (world.rundir("alice") / "oe.ctl").exists()
    # Everything it installed is gone (no private group here, so nothing stays prohibited).
    alice = world.hosts["alice"]
    assert "oe0" not in world.world.run(alice, "ip", "link").stdout
    for family in ("-4", "-6"):
        assert "4322" not in world.world.run(alice, "ip", family, "rule").stdout
        assert world.world.run(alice, "ip", family, "route", "show", "table", "4322",
                               check=False).stdout == ""


def test_narrowed_policy_encrypts_only_its_port(make_world):
    """alice: `private 192.0.2.20 tcp 0 5001` and nothing else; bob answers OE but never starts
    it (clear-or-private). A ping to bob is in no group: clear, although routed through oe.
    TCP to port 5001 traps, negotiates and is encrypted."""
    world = make_world(groups={"alice": {"private": f"{BOB} tcp 0 5001\n"},
                               "bob": {"clear-or-private": "0.0.0.0/0\n"}})
    ping(world, "alice", BOB)
    assert status(world, "alice")["sas"] == []
    ok, what = demo.tcp_transfer(world, "alice", "bob", 1 << 20, port=5001)
    assert ok, what
    [sa] = status(world, "alice")["sas"]
    assert sa["dst"] == BOB and sa["packets_out"] > 0
    kinds = wire(world, ALICE, BOB)
    assert kinds.get("ICMP in clear", 0) == 6 and "TCP in clear" not in kinds, kinds


def test_narrowed_private_entry_within_a_clear_host_is_still_encrypted(make_world):
    """alice: `clear 192.0.2.20` and, more specific, `private 192.0.2.20 tcp 0 5001`. Both name
    one destination prefix: it must be routed into the TUN (where the classifier passes the ping
    and traps the TCP), not thrown around it by the clear entry."""
    world = make_world(groups={"alice": {"clear": f"{BOB}\n", "private": f"{BOB} tcp 0 5001\n"},
                               "bob": {"clear-or-private": "0.0.0.0/0\n"}})
    ping(world, "alice", BOB)
    ok, what = demo.tcp_transfer(world, "alice", "bob", 1 << 20, port=5001)
    assert ok, what
    kinds = wire(world, ALICE, BOB)
    assert kinds.get("ICMP in clear", 0) == 6 and "TCP in clear" not in kinds, kinds
    [sa] = status(world, "alice")["sas"]
    assert sa["dst"] == BOB and sa["packets_out"] > 0
