"""oe.net's pure parts: address discovery (docs/gateway.md 1: every usable global address of
the host, per family, from one netlink dump; packet info built and read back) and the LAN a
gateway's subnets lead into (docs/gateway.md 2)."""

from __future__ import annotations

import socket

from oe import net
from oe.net import leading_into


class FakeMessage(dict):
    def __init__(self, index, address, scope=0, flags=0, ifa_flags=None):
        super().__init__(index=index, scope=scope, flags=flags & 0xFF)
        self.attrs = {"IFA_ADDRESS": address, "IFA_FLAGS": ifa_flags}

    def get_attr(self, name):
        return self.attrs.get(name)


class FakeIPRoute:
    dumps = 0
    messages: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def link_lookup(self, ifname):
        return [9] if ifname == "oe0" else []

    def get_addr(self):
        FakeIPRoute.dumps += 1
        return self.messages


def test_every_usable_global_address_per_family_in_one_dump(monkeypatch):
    FakeIPRoute.messages = [
        FakeMessage(1, "127.0.0.1", scope=254),                 # host scope: loopback
        FakeMessage(2, "192.0.2.10"),
        FakeMessage(2, "192.0.2.11"),
        FakeMessage(2, "192.0.2.12", flags=net.IFA_F_DEPRECATED),
        FakeMessage(9, "10.9.9.9"),                             # on the TUN
        FakeMessage(2, "2001:db8::10"),
        FakeMessage(2, "fe80::1", scope=253),                   # link scope
        FakeMessage(2, "2001:db8::99", ifa_flags=net.IFA_F_TEMPORARY),   # RFC 8981
        FakeMessage(2, "2001:db8::98", flags=net.IFA_F_TENTATIVE),
        FakeMessage(3, "192.0.2.10"),                           # the same on another link
    ]
    FakeIPRoute.dumps = 0
    monkeypatch.setattr(net, "IPRoute", FakeIPRoute)
    assert net.host_addresses((), "oe0") == {4: ("192.0.2.10", "192.0.2.11"),
                                             6: ("2001:db8::10",)}
    assert FakeIPRoute.dumps == 1


def test_configured_addresses_are_taken_as_they_are_per_family():
    assert net.host_addresses(("192.0.2.1", "2001:DB8::1", "192.0.2.2")) == {
        4: ("192.0.2.1", "192.0.2.2"), 6: ("2001:db8::1",)}


def test_packet_info_names_our_source_and_reads_a_destination():
    [(level, kind, data)] = net.pktinfo("192.0.2.7")
    assert (level, kind) == (socket.IPPROTO_IP, net.IP_PKTINFO)
    # struct in_pktinfo { ifindex; spec_dst; addr }: received, the header's destination is addr
    received = data[:8] + bytes([198, 51, 100, 1])
    assert net.pktinfo_address([(level, kind, received)]) == "198.51.100.1"
    [(level, kind, data)] = net.pktinfo("2001:db8::7")
    assert net.pktinfo_address([(level, kind, data)]) == "2001:db8::7"
    assert net.pktinfo_address([]) is None


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
