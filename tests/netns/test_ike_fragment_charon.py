"""IKE fragmentation (RFC 7383) with strongSwan charon 5.9 across a 1280-byte link that drops
IP fragments. Issue 17: "IKE_AUTH with 4096-bit keys, certificates later, or many selectors
must cross the same 1280 path; negotiate IKEV2_FRAGMENTATION_SUPPORTED and fragment,
interoperating with charon (which supports it)."

    [ns oei<pid>] oe 203.0.113.1 --veth, MTU 1280-- 203.0.113.2 charon [ns oec<pid>]
                     2001:db8:5::1   IP fragments   2001:db8:5::2
                                      dropped

Both RSA keys have 4096 bits and one side of the CHILD SA has 41 selectors, so the IKE_AUTH
messages do not fit 1280 bytes: sent whole, the kernel cuts them into IP fragments, which
nftables drops on arrival (before reassembly), as the middleboxes of RFC 7383 section 1 do.
With IKEV2_FRAGMENTATION_SUPPORTED both ways, oe and charon send SKF fragments of at most 1280
bytes instead (charon's default fragment_size and oe's). charon + kernel-libipsec fakes NAT
detection, so IKE_AUTH travels on 4500, where the capture below watches it.
"""

from __future__ import annotations

import re
import shutil
import struct

import pytest
import test_ike_interop
from test_ike_interop import ADDRS, Topology, run

pytestmark = [*test_ike_interop.pytestmark,
              pytest.mark.skipif(not shutil.which("nft"), reason="nftables not installed")]

MTU = 1280
IKE, ESP = "aes128-sha256-x25519", "aes128gcm16"
NETS = {4: ([f"198.51.100.{n}" for n in range(1, 41)], [f"192.0.2.{n}" for n in range(1, 41)]),
        6: ([f"2001:db8:6::{n:x}" for n in range(1, 41)],
            [f"2001:db8:7::{n:x}" for n in range(1, 41)])}
"""Selectors beyond the two hosts, oe's and charon's: 40 more on each side (16 or 40 bytes
each in a TS payload)."""


class SmallLink(Topology):
    """The interop topology with the veth at MTU 1280 and IP fragments dropped on arrival in
    both namespaces (prerouting at priority -450 runs before any reassembly)."""

    def _network(self) -> None:
        super()._network()
        for ns, dev in ((self.ns_oe, self.veth_oe), (self.ns_charon, self.veth_charon)):
            run("ip", "-n", ns, "link", "set", dev, "mtu", str(MTU))
            for rule in ("add table inet oefrag",
                         "add chain inet oefrag pre "
                         "{ type filter hook prerouting priority -450 ; }",
                         "add rule inet oefrag pre ip frag-off & 0x3fff != 0 counter drop",
                         "add rule inet oefrag pre exthdr frag exists counter drop"):
                run("ip", "netns", "exec", ns, "nft", rule)

    def fragments_dropped(self) -> int:
        """IP fragments nftables dropped in both namespaces."""
        listed = "".join(run("ip", "netns", "exec", ns, "nft", "list", "table", "inet",
                             "oefrag").stdout for ns in (self.ns_oe, self.ns_charon))
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", listed))


def hosts(addrs: list[str]) -> str:
    """charon's spelling of a list of host selectors."""
    return ",".join(f"{a}/{128 if ':' in a else 32}" for a in addrs)


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def small_link(tmp_path, request):
    family = request.param
    oe_addr, charon_addr, _ = ADDRS[family]
    oe_nets, charon_nets = NETS[family]
    t = SmallLink(tmp_path, IKE, ESP, family=family, key_bits=4096, charon_kw={
        "local_ts": hosts([charon_addr, *charon_nets]),
        "remote_ts": hosts([oe_addr, *oe_nets])})
    try:
        t.up()
        yield t
    finally:
        t.down()


def ike_auth(packets: list, oe_addr: str) -> list[tuple[bool, int, int, int]]:
    """(from oe, IP datagram size, Fragment Number, Total Fragments) of every captured
    IKE_AUTH datagram; (.., 0, 0) for a whole SK message. A datagram the kernel cut into IP
    fragments shows as its first fragment only, with the size it had before the cut."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    out = []
    for p in packets:
        ip = p[IP] if p.haslayer(IP) else p[IPv6] if p.haslayer(IPv6) else None
        if ip is None or not p.haslayer(UDP):
            continue
        ike = bytes(p[UDP].payload)
        if ike[:4] != bytes(4) or len(ike) < 4 + 28 + 8 or ike[4 + 18] != 35:
            continue  # not IKE behind the non-ESP marker, or not IKE_AUTH
        numbers = struct.unpack_from("!HH", ike, 4 + 28 + 4) if ike[4 + 16] == 53 else (0, 0)
        header = 20 if isinstance(ip, IP) else 40
        out.append((ip.src == oe_addr, header + p[UDP].len, *numbers))
    return out


@pytest.mark.parametrize("oe_role", ["initiator", "responder"])
def test_ike_auth_with_4096_bit_keys_crosses_a_1280_link_as_fragments(small_link, oe_role):
    t = small_link
    assert t.oe is not None
    t.restart_capture(f"ike-{oe_role}.pcap")
    if oe_role == "initiator":
        t.oe.command("initiate", local_ts=[t.oe_addr, *NETS[4 if "." in t.oe_addr else 6][0]])
    else:
        t.swanctl("--initiate", "--child", "hh")
    try:
        t.oe.expect("IkeSaEstablished")
        child = t.oe.expect("ChildSaEstablished")["child"]
    finally:
        auth = ike_auth(t.captured(), t.oe_addr)
        print(f"\noe {oe_role}, {t.oe_addr}: IKE_AUTH datagrams "
              f"(from oe, IP size, number, total): {auth}; "
              f"IP fragments dropped: {t.fragments_dropped()}")
    sas = t.swanctl("--list-sas")
    assert "ESTABLISHED" in sas and "INSTALLED" in sas, sas
    ours = child["local_ts"] if oe_role == "initiator" else child["remote_ts"]
    assert len(ours) == 41 if oe_role == "initiator" else len(ours) == 1

    from_oe = [a for a in auth if a[0]]
    from_charon = [a for a in auth if not a[0]]
    # the initiator's request carries the 41 selectors and a 4096-bit AUTH; charon's answer
    # to oe echoes them; oe narrows charon's to its address and answers whole
    big = from_charon if oe_role == "responder" else from_oe + from_charon
    assert big and all(total >= 2 for _, _, _, total in big), auth
    assert all(size <= MTU for _, size, _, _ in auth), auth
    assert t.fragments_dropped() == 0
