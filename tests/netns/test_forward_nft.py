"""The forward chain of a gateway (issue 13, docs/gateway.md 2 and 8), checked by the kernel:
oe.inbound's table with clients loaded in a router namespace between a LAN and a WAN, with
forwarding on as oe.routing turns it on, and cleartext UDP sent across it from each kind of
source. The LAN's clients reach the WAN; a spoofed LAN source, cleartext on a refused pair and
from a private source to a client are dropped; the WAN cannot route through us to a
destination that is not a client; T's cleartext to the gateway itself and to another client
passes (the refused set holds pairs, not peers)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys

import pytest
from test_inbound_netns import RECEIVE

from oe import inbound

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"),
                                reason="needs root for network namespaces, and nft")

C, C2, SPOOF, NOT_CLIENT = "198.51.100.10", "198.51.100.11", "198.51.101.66", "198.18.0.1"
C6, SPOOF6 = "2001:db8:5::10", "2001:db8:6::66"
GW, T, OTHER, PRIVATE = "192.0.2.1", "192.0.2.30", "192.0.2.40", "203.0.113.5"
T6 = "2001:db8::30"
SUBNETS = ("198.51.100.0/24", "2001:db8:5::/64")

SEND = """
import socket, sys
for flow in sys.argv[1:]:
    src, dst = flow.split(">")
    s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    for _ in range(3):
        s.sendto(flow.encode(), (dst, 9999))
    s.close()
"""


def sh(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture
def gateway():
    """lan (clients) -- lan0 [gw] eth0 -- wan (targets, a private source, a non-client)."""
    prefix = f"oefwd{os.getpid() % 100000}"
    names = {role: f"{prefix}-{role}" for role in ("lan", "gw", "wan")}
    made = []
    try:
        for name in names.values():
            sh("ip", "netns", "add", name)
            made.append(name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "link", "add", "lan0", "netns", names["gw"], "type", "veth", "peer", "name",
           "eth0", "netns", names["lan"])
        sh("ip", "link", "add", "eth0", "netns", names["gw"], "type", "veth", "peer", "name",
           "eth0", "netns", names["wan"])
        addresses = {"lan": [f"{C}/24", f"{C2}/24", f"{SPOOF}/32", f"{NOT_CLIENT}/32",
                             f"{C6}/64", f"{SPOOF6}/128"],
                     "wan": [f"{T}/24", f"{OTHER}/24", f"{PRIVATE}/32", f"{T6}/64"]}
        for role, addrs in addresses.items():
            for address in addrs:
                sh("ip", "-n", names[role], "addr", "add", address, "dev", "eth0", "nodad")
            sh("ip", "-n", names[role], "link", "set", "eth0", "up")
        for address, dev in (("198.51.100.1/24", "lan0"), ("2001:db8:5::1/64", "lan0"),
                             (f"{GW}/24", "eth0"), ("2001:db8::1/64", "eth0")):
            sh("ip", "-n", names["gw"], "addr", "add", address, "dev", dev, "nodad")
        for dev in ("lan0", "eth0"):
            sh("ip", "-n", names["gw"], "link", "set", dev, "up")
        gw = ("ip", "-n", names["gw"], "route", "add")
        sh(*gw, f"{PRIVATE}/32", "dev", "eth0")
        sh(*gw, f"{NOT_CLIENT}/32", "dev", "lan0")
        for role, via, via6 in (("lan", "198.51.100.1", "2001:db8:5::1"),
                                ("wan", GW, "2001:db8::1")):
            sh("ip", "-n", names[role], "route", "add", "default", "via", via)
            sh("ip", "-n", names[role], "-6", "route", "add", "default", "via", via6)
        # forwarding as oe.routing.enable_forwarding sets it: per input interface
        for dev in ("lan0", "eth0"):
            sh("ip", "netns", "exec", names["gw"], "sysctl", "-qw",
               f"net.ipv4.conf.{dev}.forwarding=1", f"net.ipv6.conf.{dev}.force_forwarding=1")
        yield names
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def received(names: dict[str, str], flows: list[str]) -> set[str]:
    receivers = [subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", RECEIVE,
                                   "3", "9999"], stdout=subprocess.PIPE, text=True)
                 for name in names.values()]
    got: set[str] = set()
    try:
        for receiver in receivers:
            assert receiver.stdout.readline().strip() == "ready"
        for role in ("lan", "wan"):
            mine = [f for f in flows
                    if any(f.startswith(a.split("/")[0] + ">")
                           for a in _addresses(names[role]))]
            sh("ip", "netns", "exec", names[role], sys.executable, "-c", SEND, *mine)
        for receiver in receivers:
            got |= set(receiver.stdout.readline().split())
    finally:
        for receiver in receivers:
            receiver.kill()
            receiver.wait()
    return got


def _addresses(namespace: str) -> list[str]:
    out = sh("ip", "-n", namespace, "-o", "addr", "show", "dev", "eth0").stdout
    return [line.split()[3] for line in out.splitlines()]


def test_the_forward_chain_passes_clients_and_drops_spoofed_refused_and_transit(gateway):
    refused = [(ipaddress.ip_address(T), ipaddress.ip_address(C)),
               (ipaddress.ip_address(T6), ipaddress.ip_address(C6))]
    clients = inbound.Clients(subnets=tuple(ipaddress.ip_network(s) for s in SUBNETS),
                              lan=("lan0",), opened=("eth0",))
    script = inbound.ruleset("oe0", [ipaddress.ip_network(f"{PRIVATE}/32")], refused, clients)
    sh("ip", "netns", "exec", gateway["gw"], "nft", "-f", "-", input=script)
    passes = [f"{C}>{T}", f"{C6}>{T6}", f"{OTHER}>{C}",   # clients and replies to them
              f"{T}>{C2}", f"{T}>{GW}"]                   # pairs: T <-> C refuses only T > C
    dropped = [f"{SPOOF}>{T}", f"{SPOOF6}>{T6}",           # RFC 3704: not a client's source
               f"{NOT_CLIENT}>{T}",                        # ... though routed to the LAN
               f"{T}>{C}", f"{T6}>{C6}",                   # RFC 4301 5.2: T <-> C is ESP
               f"{PRIVATE}>{C}",                           # a private source, in clear
               f"{OTHER}>{NOT_CLIENT}"]                    # nobody routes through us in clear
    got = received(gateway, passes + dropped)
    assert got == set(passes)
    counters = sh("ip", "netns", "exec", gateway["gw"], "nft", "list", "table", "inet",
                  "oe").stdout
    spoofed = counters[counters.index(f"counter {inbound.SPOOFED}"):]
    cleartext = counters[counters.index(f"counter {inbound.COUNTER}"):]
    assert "packets 9 " in spoofed.splitlines()[1]         # 3 each from 3 spoofed sources
    assert "packets 9 " in cleartext.splitlines()[1]       # 3 each: T>C, T6>C6, private>C
