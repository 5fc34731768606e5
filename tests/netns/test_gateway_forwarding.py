"""A gateway's forwarding (issue 13, docs/gateway.md 2 and 8), with the real daemon: oe turns
forwarding on only with [gateway] subnets, only on the interfaces the clients need, records
the old values and puts them back on `oe stop`, and after a crash on `oe flush`. A client
behind the gateway reaches a `clear` target in clear; its flow to a `private` target is
trapped (the gateway holds or shunts the pair client -> target); a spoofed LAN source is
dropped by the forward chain; after a crash the client's private flow is prohibited, never
clear.

The demo world (alice, bob, carol on one bridge) plus a LAN made here: dave, the client,
behind alice on a veth pair (alice's lan0).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from oe import demo
from oe.netns import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALICE, BOB, CAROL, DNS = (demo.ADDRESSES[n][0] for n in ("alice", "bob", "carol", "dns"))
LAN, GW_LAN, DAVE, SPOOF = "198.51.100.0/24", "198.51.100.1", "198.51.100.10", "198.51.101.66"
LAN6, GW_LAN6 = "2001:db8:5::/64", "2001:db8:5::1"
GROUPS = {"private-or-clear": "0.0.0.0/0\n::/0\n", "clear": f"{DNS}/32\n{BOB}/32\n",
          "private": f"{CAROL}/32\n"}
FORWARDING = ("net.ipv4.conf.lan0.forwarding", "net.ipv4.conf.eth0.forwarding",
              "net.ipv4.conf.all.forwarding", "net.ipv6.conf.lan0.force_forwarding",
              "net.ipv6.conf.all.forwarding")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    made = demo.build(tmp_path_factory.mktemp("gwfwd"),
                      groups={"alice": GROUPS, "bob": GROUPS},
                      conf={"alice": f'[gateway]\nsubnets = ["{LAN}", "{LAN6}"]\n'})
    dave = f"{made.world.prefix}-dave"
    try:
        subprocess.run(["ip", "netns", "add", dave], check=True)
        alice = made.hosts["alice"].name
        for argv in (["link", "add", "lan0", "netns", alice, "type", "veth", "peer", "name",
                      "eth0", "netns", dave],
                     ["-n", alice, "addr", "add", f"{GW_LAN}/24", "dev", "lan0"],
                     ["-n", alice, "addr", "add", f"{GW_LAN6}/64", "dev", "lan0", "nodad"],
                     ["-n", alice, "link", "set", "lan0", "up"],
                     ["-n", dave, "link", "set", "lo", "up"],
                     ["-n", dave, "addr", "add", f"{DAVE}/24", "dev", "eth0"],
                     ["-n", dave, "addr", "add", f"{SPOOF}/32", "dev", "eth0"],
                     ["-n", dave, "link", "set", "eth0", "up"],
                     ["-n", dave, "route", "add", "default", "via", GW_LAN],
                     *(["-n", made.hosts[h].name, "route", "add", LAN, "via", ALICE]
                       for h in ("bob", "carol"))):
            subprocess.run(["ip", *argv], check=True, capture_output=True)
        yield made, dave
    finally:
        for name in list(made.daemons):
            demo.stop_oe(made, name)
        subprocess.run(["ip", "netns", "del", dave], capture_output=True)
        made.close()


def sysctls(world, host: str) -> dict[str, str]:
    out = world.world.run(world.hosts[host], "sysctl", *(n for n in FORWARDING
                                                         if host == "alice" or "lan0" not in n))
    return dict(line.split(" = ") for line in out.stdout.splitlines())


def in_dave(dave: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", dave, *argv], capture_output=True, text=True,
                          timeout=30)


def status(world) -> dict:
    return json.loads(demo.oe_cmd(world, "alice", "status", "--json").stdout)


def test_a_host_without_subnets_keeps_its_forwarding(world):
    """Never touched without [gateway] subnets (bob is a host)."""
    made, _ = world
    before = sysctls(made, "bob")
    demo.start_oe(made, "bob")
    try:
        assert sysctls(made, "bob") == before
        assert set(before.values()) == {"0"}
    finally:
        demo.stop_oe(made, "bob")


def test_a_gateway_forwards_for_its_clients_and_puts_it_back(world):
    made, dave = world
    before = sysctls(made, "alice")
    assert set(before.values()) == {"0"}
    check = demo.oe_cmd(made, "alice", "check")
    assert f"gateway for {LAN}, {LAN6} on lan0" in check.stdout
    assert "would set net.ipv4.conf.lan0.forwarding = 1 (now 0)" in check.stdout
    assert "would set net.ipv6.conf.eth0.force_forwarding = 1 (now 0)" in check.stdout
    demo.start_oe(made, "alice")
    on = sysctls(made, "alice")
    assert on["net.ipv4.conf.lan0.forwarding"] == on["net.ipv4.conf.eth0.forwarding"] == "1"
    assert on["net.ipv6.conf.lan0.force_forwarding"] == "1"  # per interface (Linux 6.17 on)
    assert on["net.ipv4.conf.all.forwarding"] == on["net.ipv6.conf.all.forwarding"] == "0"

    # a `clear` target: forwarded in clear, nothing negotiated for it
    ping = in_dave(dave, "ping", "-c", "2", "-i", "0.3", "-W", "2", BOB)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # a `private` target: the client's flow meets the trap (carol publishes no key)
    in_dave(dave, "ping", "-c", "2", "-i", "0.3", "-W", "1", CAROL)
    assert wait_for(lambda: any((s["src"], s["dst"]) == (DAVE, CAROL)
                                for s in status(made)["shunts"]), 10), status(made)["shunts"]
    assert not any(s["dst"] == BOB for s in status(made)["shunts"])
    # ... after the client check (docs/gateway.md 3): dave publishes no record delegating to alice
    reasons = [s["reason"] for s in status(made)["shunts"]
               if (s["src"], s["dst"]) == (DAVE, CAROL)]
    assert reasons[0].startswith(f"no record for our client {DAVE} delegates us"), reasons
    # a spoofed LAN source: dropped by the forward chain (RFC 3704)
    assert status(made)["counters"]["spoofed_dropped"] == 0
    in_dave(dave, "ping", "-c", "1", "-W", "1", "-I", SPOOF, BOB)
    assert status(made)["counters"]["spoofed_dropped"] == 1

    # `oe reload` without [gateway]: forwarding and the forward chain go; with it, back
    conf = made.confdir("alice") / "oe.conf"
    gateway = conf.read_text()
    conf.write_text(gateway.replace(f'[gateway]\nsubnets = ["{LAN}", "{LAN6}"]\n', ""))
    assert "applied: [gateway] subnets" in demo.oe_cmd(made, "alice", "reload").stdout
    assert sysctls(made, "alice") == before
    table = made.world.run(made.hosts["alice"], "nft", "list", "table", "inet", "oe").stdout
    assert "chain input" in table and "chain forward" not in table
    conf.write_text(gateway)
    demo.oe_cmd(made, "alice", "reload")
    assert sysctls(made, "alice") == on

    # a crash leaves forwarding on; `oe flush` puts it back from the record in the run dir
    made.daemons["alice"].send_signal(signal.SIGKILL)
    made.daemons.pop("alice").wait(10)
    assert sysctls(made, "alice")["net.ipv4.conf.lan0.forwarding"] == "1"
    # ... and the client's private flow fails closed: the prohibit route answers
    ping = in_dave(dave, "ping", "-c", "1", "-W", "2", CAROL)
    assert ping.returncode != 0 and f"From {GW_LAN} icmp_seq=1 Packet filtered" in ping.stdout, \
        ping.stdout
    flushed = demo.oe_cmd(made, "alice", "flush")
    assert "restored net.ipv6.conf.eth0.force_forwarding" in flushed.stdout
    assert sysctls(made, "alice") == before

    # and `oe stop` puts it back itself
    demo.start_oe(made, "alice")
    assert sysctls(made, "alice")["net.ipv4.conf.lan0.forwarding"] == "1"
    demo.stop_oe(made, "alice")
    assert sysctls(made, "alice") == before
