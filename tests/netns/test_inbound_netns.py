"""Inbound policy for cleartext, end to end: a packet that arrives in clear claiming the
source of a peer we hold an SA with, or of a `private` destination, is dropped (FreeS/WAN's
BUGS: "A packet which shows up at Y, in clear text, claiming to be from S ... will be
forwarded... even if there is an IPSEC tunnel between X and Y which ought to be encrypting all
such packets"). Peers we have no SA with and whose group allows clear still get through.

The cleartext is sent from the claimed host itself, on a socket carrying oe's bypass mark (so
it leaves in clear although an SA exists): the strongest form of the spoof, a correct source
address on the correct link.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from oe import demo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALICE, BOB, CAROL = (demo.ADDRESSES[n][0] for n in ("alice", "bob", "carol"))
ALICE6, BOB6 = demo.ADDRESSES["alice"][1], demo.ADDRESSES["bob"][1]
PORT = 9999

SEND = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x4F45)   # skip oe's table: leave in clear
for _ in range(5):
    s.sendto(sys.argv[2].encode(), (sys.argv[1], %d))
""" % PORT

# RECEIVE <seconds> <port>...: what arrives on the UDP ports, IPv4 and IPv6, in that time
RECEIVE = """
import socket, sys, time
got = set()
socks = []
for port in map(int, sys.argv[2:]):
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port)); s.setblocking(False); socks.append(s)
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for s in socks:
        try:
            got.add(s.recv(100).decode())
        except BlockingIOError:
            pass
    time.sleep(0.01)
print(" ".join(sorted(got)), flush=True)
"""


@pytest.fixture
def world(tmp_path):
    world = demo.build(tmp_path / "w", groups={
        "alice": {"private-or-clear": "0.0.0.0/0\n::/0\n", "private": f"{CAROL}\n"},
        "bob": {"private-or-clear": "0.0.0.0/0\n::/0\n"}})
    try:
        for name in ("alice", "bob"):
            demo.start_oe(world, name)
        yield world
    finally:
        for name in list(world.daemons):
            demo.stop_oe(world, name)
        world.close()


def test_cleartext_from_a_protected_source_is_dropped(world):
    w = world.world
    for dst in (BOB, BOB6):   # an SA each way, IPv4 and IPv6
        proc = w.run(world.hosts["alice"], "ping", "-c", "2", "-i", "0.2", "-W", "3", dst,
                     check=False)
        assert proc.returncode == 0, proc.stdout
    receiver = subprocess.Popen(["ip", "netns", "exec", world.hosts["alice"].name,
                                 sys.executable, "-c", RECEIVE, "4", str(PORT)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        _send_all(w, world)
        got = receiver.stdout.readline().split()
    finally:
        receiver.kill()
        receiver.wait()
    assert got == ["dns-in-clear"], f"accepted in clear: {got}"
    status = json.loads(demo.oe_cmd(world, "alice", "status", "--json").stdout)
    assert status["counters"]["cleartext_dropped"] >= 15      # 5 each from bob, bob6, carol
    assert set(status["limits"]) == {"holds", "shunts", "half_open", "lookups",
                                     "queued_acquires", "acquire_lookups"}
    assert status["limits"]["holds"] == {"max": 1024, "in_use": 0, "dropped": 0}


def _send_all(w, world):
    w.run(world.hosts["bob"], sys.executable, "-c", SEND, ALICE, "bob-in-clear")
    w.run(world.hosts["bob"], sys.executable, "-c", SEND, ALICE6, "bob6-in-clear")
    w.run(world.hosts["carol"], sys.executable, "-c", SEND, ALICE, "carol-in-clear")
    # dns: private-or-clear for alice, no SA: clear is its fate and must still arrive
    w.run(world.hosts["dns"], sys.executable, "-c", SEND, ALICE, "dns-in-clear")
