"""Issue 15: the eroute and SA counters of `oe status` agree. The packets an SA eroute counts
are the packets its SA sealed, also for packets that waited under a %hold and were rechecked
against the table while they waited."""

import ipaddress

from scapy.layers.inet import ICMP, IP
from scapy.packet import raw

from oe.datapath import Datapath, Direction, SaSpec
from oe.eroute import Eroute, ErouteTable, SaAction, Selector, Shunt

ME, PEER = "192.0.2.1", "198.51.100.2"
KEY = bytes(range(20))


def selector(dst, src="0.0.0.0/0"):
    return Selector(ipaddress.ip_network(src), ipaddress.ip_network(dst))


def test_held_packets_are_counted_once_on_the_sa_eroute():
    trap = Eroute(selector("198.51.100.0/24"), Shunt.TRAP, None, "private-or-clear")
    dp = Datapath()
    dp.replace_eroutes(ErouteTable([trap]))
    for n in range(10):
        dp.outbound(raw(IP(src=ME, dst=PEER) / ICMP(id=1, seq=n) / (b"p" * 56)))
    pair = selector(PEER + "/32", ME + "/32")
    dp.update_eroutes(add=[Eroute(pair, Shunt.HOLD, None, "private-or-clear")])
    assert dp.release_holds() == []                      # rechecked, still held
    handle = dp.add_sa(SaSpec(spi=0x5000, direction=Direction.OUT, key=KEY, local=ME, peer=PEER))
    sa = Eroute(pair, SaAction(ipaddress.ip_address(PEER), 0x5000, handle), None,
                "private-or-clear")
    dp.update_eroutes(add=[sa])
    assert len(dp.release_holds()) == 10
    dp.outbound(raw(IP(src=ME, dst=PEER) / ICMP(id=1, seq=10) / (b"p" * 56)))
    counted = dict(zip(dp.classifier.table.entries, dp.classifier.counters()))
    stats = dp.sa_stats(handle, "out")
    assert counted[sa] == (stats["packets"], stats["bytes"]) == (11, 11 * 84)
