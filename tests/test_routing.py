"""oe.routing.plan: which CIDRs go into the TUN and which around it (pure, no netlink)."""

import ipaddress

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
