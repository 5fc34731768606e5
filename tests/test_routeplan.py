"""Which routes steer into oe and whose cleartext is refused (oe.routeplan), in memory."""

import ipaddress

from oe.commands import RefuseInClear, Reroute
from oe.flows import Pair
from oe.opportunist import Opportunist
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


def up(oe, dst, src=ME, peer=None, spi=0x1001):
    pair = Pair.of(src, dst)
    oe.tunnel_up(pair, ipaddress.ip_address(peer or dst), 1, spi, spi + 1, "AES", False,
                 False, 0.0)
    return pair


def test_a_tunnel_routes_its_peer_and_refuses_its_cleartext_once_installed():
    oe, plan = world()
    pair = up(oe, "198.51.100.2")
    assert plan.follow(oe.take_tunnel_changes(), routes=False, inbound=False) == []  # not yet
    assert plan.steer(oe.base, []).trap[0] == "198.51.100.2/32"  # the routes, once in place
    assert plan.follow({}, routes=True, inbound=True) == [
        RefuseInClear(frozenset({(pair.dst, pair.src)}), frozenset())]
    oe.tunnel_down(pair, 0x1001, "gone", 1.0)
    pair = up(oe, "198.51.100.2", spi=0x3001)
    # a clear-or-private CIDR's prefix: the peer's host route goes into the TUN
    assert plan.follow(oe.take_tunnel_changes(), routes=True, inbound=True) == []  # the same
    assert plan.follow(oe.take_tunnel_changes(), routes=True, inbound=True) == []  # no change
    oe.tunnel_down(pair, 0x3001, "gone", 1.0)
    commands = plan.follow(oe.take_tunnel_changes(), routes=True, inbound=True)
    assert commands[0] == Reroute((), ("198.51.100.2/32",))
    assert commands[1] == RefuseInClear(frozenset(), frozenset({(pair.dst, pair.src)}))


def test_each_event_reroutes_only_the_peers_it_changed():
    """issue 14: a new tunnel among thousands adds one host route, never the whole table again
    (the route plan's cost per event must not grow with the number of tunnels)."""
    oe, plan = world()
    plan.steer(oe.base, ["192.0.2.53"])
    for n in range(1, 200):
        up(oe, f"10.0.{n // 250}.{n % 250 + 1}", spi=0x1000 + 2 * n)
    plan.follow(oe.take_tunnel_changes(), routes=True, inbound=True)
    up(oe, "10.9.9.9", spi=0x9000)
    assert plan.follow(oe.take_tunnel_changes(), routes=True, inbound=False) == [
        Reroute((("10.9.9.9/32", "tun"),), ())]
    # two tunnels to one peer (a gateway's clients): its route goes with the last
    a = up(oe, "10.7.7.7", src="198.51.100.5", peer="10.7.7.7", spi=0xa000)
    b = up(oe, "10.7.7.7", src="198.51.100.6", peer="10.7.7.7", spi=0xa010)
    assert plan.follow(oe.take_tunnel_changes(), routes=True, inbound=False) == [
        Reroute((("10.7.7.7/32", "tun"),), ())]
    oe.tunnel_down(a, 0xa000, "gone", 1.0)
    assert plan.follow(oe.take_tunnel_changes(), routes=True, inbound=False) == []
    oe.tunnel_down(b, 0xa010, "gone", 1.0)
    assert plan.follow(oe.take_tunnel_changes(), routes=True, inbound=False) == [
        Reroute((), ("10.7.7.7/32",))]


def test_a_peer_route_gives_back_what_the_policy_routes_there():
    """A peer on a passing group's own prefix takes it into the TUN and gives the throw route
    back when it goes; a nameserver's (exempt) or a trapping prefix is never touched."""
    groups = {"private-or-clear": "0.0.0.0/0\n", "clear": "198.51.100.9/32\n",
              "private": "203.0.113.9/32\n"}
    table = prospective_table(combine([parse_group(g, t, f"policies/{g}")
                                       for g, t in groups.items()]))
    oe, plan = Opportunist(table), RoutePlan()
    plan.steer(oe.base, ["192.0.2.53"])
    pairs = [up(oe, dst, spi=0x100 * n) for n, dst in
             enumerate(("198.51.100.9", "192.0.2.53", "203.0.113.9"), 1)]
    assert plan.follow(oe.take_tunnel_changes(), routes=True, inbound=False) == [
        Reroute((("198.51.100.9/32", "tun"),), ())]
    for n, pair in enumerate(pairs, 1):
        oe.tunnel_down(pair, 0x100 * n, "gone", 1.0)
    assert plan.follow(oe.take_tunnel_changes(), routes=True, inbound=False) == [
        Reroute((("198.51.100.9/32", "throw"),), ())]
    # a full steer after all this routes exactly the peers there are now
    pair = up(oe, "10.1.1.1", spi=0x900)
    plan.follow(oe.take_tunnel_changes(), routes=False, inbound=False)
    assert "10.1.1.1/32" in plan.steer(oe.base, ["192.0.2.53"]).trap
    assert plan.follow({}, routes=True, inbound=False) == []


def test_our_clients_subnets_are_never_trapped():
    """issue 13: the gateway's own traffic to its LAN, and LAN-to-LAN forwarding, must not
    enter the TUN, whatever the groups say (docs/gateway.md 2)."""
    oe, plan = world()
    steer = plan.steer(oe.base, ["192.0.2.53"], subnets=["198.51.100.0/24", "2001:db8:5::/48"])
    assert steer.exempt == ("192.0.2.53/32", "198.51.100.0/24", "2001:db8:5::/48")


def test_a_client_tunnel_refuses_the_targets_cleartext_to_the_client_only():
    """RFC 4301 5.2 per pair: a tunnel C <-> T refuses T's cleartext to C, not to the gateway
    itself nor to another client C2 (docs/gateway.md 2)."""
    oe, plan = world()
    plan.steer(oe.base, [], subnets=["198.51.100.0/24"])
    client = Pair.of("198.51.100.10", "203.0.113.7")
    oe.tunnel_up(client, ipaddress.ip_address("192.0.2.99"), 1, 0x1001, 0x2002, "AES", False,
                 False, 0.0)
    refuse = plan.follow(oe.take_tunnel_changes(), routes=True, inbound=True)[-1]
    assert refuse.add == frozenset({(client.dst, client.src)})
