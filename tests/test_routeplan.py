"""Which routes steer into oe and whose cleartext is refused (oe.routeplan), in memory."""

import ipaddress

from oe.commands import RefuseInClear, Steer
from oe.opportunist import Opportunist, Pair
from oe.policygroups import combine, parse_group, prospective_table
from oe.routeplan import RoutePlan

ME = "192.0.2.10"


def world():
    groups = {"private-or-clear": "0.0.0.0/0\n", "clear-or-private": "198.51.100.0/24\n",
              "private": "203.0.113.0/24\n"}
    table = prospective_table(combine([parse_group(g, t, f"policies/{g}")
                                       for g, t in groups.items()]))
    return Opportunist(table), RoutePlan()


def test_steer_traps_trapping_groups_passes_the_rest_and_prohibits_private():
    oe, plan = world()
    steer = plan.steer(oe.base, ["192.0.2.53"])
    assert "0.0.0.0/0" in steer.trap and "203.0.113.0/24" in steer.trap
    assert steer.clear == ("198.51.100.0/24",)
    assert steer.private == ("203.0.113.0/24",) and steer.exempt == ("192.0.2.53/32",)


def test_a_tunnel_routes_its_peer_and_refuses_its_cleartext_once_installed():
    oe, plan = world()
    pair = Pair.of(ME, "198.51.100.2")
    oe.tunnel_up(pair, ipaddress.ip_address("198.51.100.2"), 1, 0x1001, 0x2002, "AES", False,
                 False, 0.0)
    assert plan.follow(oe.tunnels.values(), routes=False, inbound=False) == []   # not yet
    plan.steer(oe.base, [])
    commands = plan.follow(oe.tunnels.values(), routes=True, inbound=True)
    assert isinstance(commands[0], Steer) and commands[0].trap[0] == "198.51.100.2/32"
    assert commands[1] == RefuseInClear(frozenset({(pair.dst, pair.src)}), frozenset())
    assert plan.follow(oe.tunnels.values(), routes=True, inbound=True) == []     # no change
    oe.tunnel_down(pair, 0x1001, "gone", 1.0)
    commands = plan.follow(oe.tunnels.values(), routes=True, inbound=True)
    assert "198.51.100.2/32" not in commands[0].trap
    assert commands[1] == RefuseInClear(frozenset(), frozenset({(pair.dst, pair.src)}))


def test_our_clients_subnets_are_never_trapped():
    """issue 13: the gateway's own traffic to its LAN, and LAN-to-LAN forwarding, must not
    enter the TUN, whatever the groups say (docs/gateway.md 2)."""
    oe, plan = world()
    steer = plan.steer(oe.base, ["192.0.2.53"], subnets=["198.51.100.0/24", "2001:db8:5::/48"])
    assert steer.exempt == ("192.0.2.53/32", "198.51.100.0/24", "2001:db8:5::/48")
    oe.tunnel_up(Pair.of(ME, "203.0.113.7"), ipaddress.ip_address("203.0.113.7"), 1, 0x1001,
                 0x2002, "AES", False, False, 0.0)
    again = plan.follow(oe.tunnels.values(), routes=True, inbound=False)[0]
    assert again.exempt == steer.exempt                 # follow keeps them


def test_a_client_tunnel_refuses_the_targets_cleartext_to_the_client_only():
    """RFC 4301 5.2 per pair: a tunnel C <-> T refuses T's cleartext to C, not to the gateway
    itself nor to another client C2 (docs/gateway.md 2)."""
    oe, plan = world()
    plan.steer(oe.base, [], subnets=["198.51.100.0/24"])
    client = Pair.of("198.51.100.10", "203.0.113.7")
    oe.tunnel_up(client, ipaddress.ip_address("192.0.2.99"), 1, 0x1001, 0x2002, "AES", False,
                 False, 0.0)
    refuse = plan.follow(oe.tunnels.values(), routes=True, inbound=True)[-1]
    assert refuse.add == frozenset({(client.dst, client.src)})
