"""The inbound selector check (RFC 4322 12.1, RFC 4301 5.2): an authentic ESP packet whose
inner packet is not what its SA was negotiated for (another destination, protocol or port)
is dropped and counted as policy, never written to the TUN; IPv4 and IPv6, tunnel and
transport mode. Each case sends the right packet first, so a drop is the check's doing."""

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import raw

from oe.datapath import Datapath, SaSpec

SPI = 0x6000
KEY = bytes(range(20))
HOSTS = {4: ("192.0.2.1", "198.51.100.2", "192.0.2.9"),
         6: ("2001:db8::1", "2001:db8:1::2", "2001:db8::9")}   # me, the peer, another of mine


class Sa:
    """Our inbound SA for tcp from the peer's port 22 to our ports 1024-2047 (an SSH client
    SA, as a narrowed CHILD SA installs it), and the peer's outbound SA that seals for it."""

    def __init__(self, version: int, tunnel: bool):
        self.me, self.peer, self.other = HOSTS[version]
        self.ip = IP if version == 4 else IPv6
        self.tunnel = tunnel
        self.dp = Datapath()
        self.dp.add_sa(SaSpec(spi=SPI, direction="in", key=KEY, local=self.me, peer=self.peer,
                              tunnel=tunnel, proto=6, sport=(22, 22), dport=(1024, 2047)))
        self.sender = Datapath()
        self.handle = self.sender.add_sa(SaSpec(spi=SPI, direction="out", key=KEY,
                                                local=self.peer, peer=self.me, tunnel=tunnel))

    def arrives(self, l4, dst=None) -> bool:
        packet = raw(self.ip(src=self.peer, dst=dst or self.me) / l4 / b"data")
        out = self.dp.inbound(self.sender.seal(self.handle, packet), self.peer)
        assert [kind for kind, *_ in out] in ([], ["tun"])
        return bool(out)

    def policy_drops(self) -> int:
        return self.dp.sa_stats(SPI, "in")["policy"]


MODES = [(4, True), (6, True), (4, False), (6, False)]
IDS = ["ipv4-tunnel", "ipv6-tunnel", "ipv4-transport", "ipv6-transport"]


@pytest.mark.parametrize("version,tunnel", MODES, ids=IDS)
def test_wrong_protocol_or_ports_are_dropped(version, tunnel):
    sa = Sa(version, tunnel)
    assert sa.arrives(TCP(sport=22, dport=1024))
    assert sa.arrives(TCP(sport=22, dport=2047))                 # both ends of the range
    wrong = [UDP(sport=22, dport=1024),                          # protocol
             ICMP() if version == 4 else UDP(sport=1, dport=1),  # a protocol without ports
             TCP(sport=23, dport=1024), TCP(sport=21, dport=1024),   # source port
             TCP(sport=22, dport=1023), TCP(sport=22, dport=2048)]   # destination port
    for l4 in wrong:
        assert not sa.arrives(l4), l4.summary()
    assert sa.policy_drops() == len(wrong)
    assert sa.dp.sa_stats(SPI, "in")["packets"] == 2


@pytest.mark.parametrize("version", [4, 6])
def test_wrong_destination_is_dropped_in_tunnel_mode(version):
    """Another address of ours, inside the peer's tunnel: not what the SA carries."""
    sa = Sa(version, True)
    assert sa.arrives(TCP(sport=22, dport=1024))
    assert not sa.arrives(TCP(sport=22, dport=1024), dst=sa.other)
    assert sa.policy_drops() == 1


@pytest.mark.parametrize("version", [4, 6])
def test_wrong_source_is_dropped_in_tunnel_mode(version):
    sa = Sa(version, True)
    packet = raw(sa.ip(src=sa.other, dst=sa.me) / TCP(sport=22, dport=1024))
    assert sa.dp.inbound(sa.sender.seal(sa.handle, packet), sa.peer) == []
    assert sa.policy_drops() == 1


def test_an_inner_packet_of_the_other_family_is_dropped():
    """An IPv4 SA carrying IPv6 inside: no selector of the SA can match it."""
    sa = Sa(4, True)
    v6 = raw(IPv6(src=HOSTS[6][1], dst=HOSTS[6][0]) / TCP(sport=22, dport=1024))
    assert sa.dp.inbound(sa.sender.seal(sa.handle, v6), sa.peer) == []
    assert sa.policy_drops() == 1
