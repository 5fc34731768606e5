"""oe.net's pure helpers (the rest is netlink and sockets, met in the namespace tests)."""

from oe.net import leading_into

ROUTES = [("198.51.100.0/24", "lan0"), ("2001:db8:5:1::/64", "lan1"), ("192.0.2.0/24", "eth0"),
          ("10.0.0.0/8", "lan2"), ("198.51.100.0/24", "oe0"), ("2001:db8::/64", "eth0")]


def test_the_lan_is_where_routes_lead_into_a_subnet():
    """issue 13: `<lan>` for forwarding and ingress filtering (docs/gateway.md 2): connected
    routes inside a subnet (a /64 of a /48), or holding it (a /8 via a LAN router), never the
    TUN, never a route of the other family."""
    assert leading_into(ROUTES, ("198.51.100.0/24", "2001:db8:5::/48", "10.1.0.0/16"),
                        exclude="oe0") == ("lan0", "lan1", "lan2")
    assert leading_into(ROUTES, ("203.0.113.0/24",)) == ()
    assert leading_into(ROUTES, ()) == ()
