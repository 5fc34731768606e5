"""oe.routing: which CIDRs go into the TUN and which around it (plan, pure), and what the kernel
does with those routes when the TUN goes (in a namespace)."""

import ipaddress
import json
import os
import sys
from pathlib import Path

import pytest

from oe.netns import World
from oe.routing import ALWAYS_EXEMPT, plan


def test_exempt_wins_over_trap_and_link_local_multicast_are_always_exempt():
    routes = dict(plan(["0.0.0.0/0", "::/0", "192.0.2.53/32"], ["192.0.2.53/32", "192.0.2.128/25"]))
    net = ipaddress.ip_network
    assert routes[net("0.0.0.0/0")] == "tun" and routes[net("::/0")] == "tun"
    assert routes[net("192.0.2.53/32")] == "throw"          # a nameserver: never trapped
    assert routes[net("192.0.2.128/25")] == "throw"
    for cidr in ALWAYS_EXEMPT:                               # ND, multicast, loopback
        assert routes[net(cidr)] == "throw"


def test_plan_is_ordered_by_family_then_prefix():
    routes = [str(n) for n, _ in plan(["198.51.100.0/24", "2001:db8::/32", "192.0.2.0/24"], [])]
    v4 = [r for r in routes if ":" not in r]
    assert routes.index(v4[-1]) < routes.index("2001:db8::/32")
    assert v4.index("192.0.2.0/24") < v4.index("198.51.100.0/24")


def test_a_trapped_prefix_beats_a_passing_groups_throw_but_never_a_nameservers():
    """A clear-or-private /32 and a tunnel's host route for that peer share one prefix: the
    route into the TUN wins (the classifier passes what is clear); a nameserver is never
    trapped."""
    routes = dict(plan(["192.0.2.10/32", "192.0.2.53/32"], ["192.0.2.53/32"],
                       clear=["192.0.2.10/32", "192.0.2.0/24", "2001:db8::10/128"]))
    net = ipaddress.ip_network
    assert routes[net("192.0.2.10/32")] == "tun"
    assert routes[net("192.0.2.0/24")] == "throw" and routes[net("2001:db8::10/128")] == "throw"
    assert routes[net("192.0.2.53/32")] == "throw"


def test_private_cidrs_get_a_prohibit_route_beside_their_route_into_the_tun():
    routes = plan(["192.0.2.20/32", "2001:db8::/64", "198.51.100.0/24"], [],
                  prohibit=["192.0.2.20/32", "2001:db8::/64", "192.0.2.20/32"])
    net = ipaddress.ip_network
    for cidr in ("192.0.2.20/32", "2001:db8::/64"):
        assert [kind for n, kind in routes if n == net(cidr)] == ["prohibit", "tun"]
    assert [kind for n, kind in routes if n == net("198.51.100.0/24")] == ["tun"]


_ROUTE_GETS = """
import json, os, subprocess, sys
from oe import routing, tun

def where(dst):
    out = subprocess.run(["ip", "route", "get", dst], capture_output=True, text=True)
    words = out.stdout.split()
    return words[words.index("dev") + 1] if "dev" in words else out.stderr.strip()

fd = tun.open_tun("oe0")
tun.set_up("oe0", 1400)
steering = routing.install("oe0", ["192.0.2.20/32", "2001:db8::20/128", "192.0.2.30/32"],
                           ["192.0.2.53/32"], clear=["192.0.2.30/32"],
                           prohibit=["192.0.2.20/32", "2001:db8::20/128"],
                           table=4322, priority=4322, mark=0x4F45)
dsts = ["192.0.2.20", "2001:db8::20", "192.0.2.30", "192.0.2.53"]
running = {dst: where(dst) for dst in dsts}
os.close(fd)  # what SIGKILL does: the TUN goes, and the kernel takes its routes with it
print(json.dumps({"running": running, "dead": {dst: where(dst) for dst in dsts}}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_prohibit_routes_outlive_the_tun(tmp_path):
    """In a namespace: while the TUN lives, private destinations route into it; once it is gone
    (oe died) they are prohibited, never routed out in clear; a passing group's host with a
    tunnel and a nameserver go to the main table."""
    with World("oert", tmp_path) as world:
        host = world.host("h", "192.0.2.10/24", "2001:db8::10/64")
        out = world.run(host, sys.executable, "-c", _ROUTE_GETS,
                        cwd=Path(__file__).resolve().parent.parent)
    got = json.loads(out.stdout)
    assert got["running"] == {"192.0.2.20": "oe0", "2001:db8::20": "oe0", "192.0.2.30": "oe0",
                              "192.0.2.53": "eth0"}
    prohibited = "RTNETLINK answers: Permission denied"
    assert got["dead"] == {"192.0.2.20": prohibited, "2001:db8::20": prohibited,
                           "192.0.2.30": "eth0", "192.0.2.53": "eth0"}
