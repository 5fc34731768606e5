"""The inbound cleartext rules, checked by the kernel: oe.inbound's nft table loaded in a
namespace, and cleartext UDP sent to it from each kind of source on the link. From a private
source and from an SA peer (the refused pair: peer . us) only IKE (UDP 500, 4500) is taken in clear, IPv4 and IPv6; other
sources are not touched (RFC 4301 section 5.2)."""

import ipaddress
import os
import shutil
import subprocess
import sys

import pytest
from test_inbound_netns import RECEIVE

from oe import inbound
from oe.netns import World

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"),
                                reason="needs root for a network namespace, and nft")

US, US6 = "192.0.2.10", "2001:db8::10"
SOURCES = {"private": ("192.0.2.20", "2001:db8::20"), "peer": ("192.0.2.30", "2001:db8::30"),
           "other": ("192.0.2.40", "2001:db8::40")}
PORTS = (500, 4500, 9999)

SEND = """
import socket, sys
sources, us, us6 = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
for src in sources:
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    for port in (500, 4500, 9999):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((src, 0))
        for _ in range(3):
            s.sendto(f"{src}:{port}".encode(), (us6 if ":" in src else us, port))
        s.close()
"""


def test_cleartext_from_private_sources_and_sa_peers_is_ike_only(tmp_path):
    addrs = [a for pair in SOURCES.values() for a in pair]
    with World("oeinb", tmp_path) as world:
        us = world.host("us", f"{US}/24", f"{US6}/64")
        them = world.host("them", *(f"{a}/24" if ":" not in a else f"{a}/64" for a in addrs))
        script = inbound.ruleset("oe0", [ipaddress.ip_network(a) for a in SOURCES["private"]],
                                 [(ipaddress.ip_address(a), ipaddress.ip_address(us_))
                                  for a, us_ in zip(SOURCES["peer"], (US, US6))])
        world.run(us, "nft", "-f", "-", input=script)
        receiver = subprocess.Popen(["ip", "netns", "exec", us.name, sys.executable, "-c",
                                     RECEIVE, "3", *map(str, PORTS)],
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert receiver.stdout.readline().strip() == "ready"
            world.run(them, sys.executable, "-c", SEND, ",".join(addrs), US, US6)
            got = set(receiver.stdout.readline().split())
        finally:
            receiver.kill()
            receiver.wait()
        counted = world.run(us, "nft", "list", "counter", "inet", "oe", inbound.COUNTER).stdout
    want = {f"{a}:{p}" for a in addrs for p in PORTS}
    want -= {f"{a}:9999" for kind in ("private", "peer") for a in SOURCES[kind]}
    assert got == want
    assert "packets 12 " in counted                   # 3 each from 4 refused sources
