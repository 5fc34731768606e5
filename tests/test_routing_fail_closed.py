"""`oe stop` fails closed (design.md section 6): routing.fail_closed() takes the routes into
the TUN away but leaves the prohibit routes beneath the private CIDRs, so from that moment,
with the TUN still up and after it is gone, a private destination is unreachable, never
routed out in clear; what is not private goes to the main table."""

import json
import os
import sys
from pathlib import Path

import pytest

from oe.netns import World

_STOP = """
import json, os, subprocess
from oe import routing, tun

def where(dst):
    out = subprocess.run(["ip", "route", "get", dst], capture_output=True, text=True)
    words = out.stdout.split()
    return words[words.index("dev") + 1] if "dev" in words else out.stderr.strip()

fd = tun.open_tun("oe0")
tun.set_up("oe0", 1400)
steering = routing.install("oe0", ["192.0.2.20/32", "2001:db8::20/128", "198.51.100.0/24"], [],
                           prohibit=["192.0.2.20/32", "2001:db8::20/128"],
                           table=4322, priority=4322, mark=0x4F45)
dsts = ["192.0.2.20", "2001:db8::20", "198.51.100.7"]
running = {dst: where(dst) for dst in dsts}
left = routing.fail_closed(steering)
stopped = {dst: where(dst) for dst in dsts}
os.close(fd)
print(json.dumps({"running": running, "left": left, "stopped": stopped,
                  "gone": {dst: where(dst) for dst in dsts}}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_stop_leaves_private_destinations_prohibited(tmp_path):
    with World("oefc", tmp_path) as world:
        host = world.host("h", "192.0.2.10/24", "2001:db8::10/64", "198.51.100.10/24")
        out = world.run(host, sys.executable, "-c", _STOP,
                        cwd=Path(__file__).resolve().parent.parent)
    got = json.loads(out.stdout)
    assert got["running"] == dict.fromkeys(("192.0.2.20", "2001:db8::20", "198.51.100.7"), "oe0")
    assert sorted(got["left"]) == ["192.0.2.20/32", "2001:db8::20/128"]
    prohibited = "RTNETLINK answers: Permission denied"
    want = {"192.0.2.20": prohibited, "2001:db8::20": prohibited, "198.51.100.7": "eth0"}
    assert got["stopped"] == want          # the TUN still up: its routes are gone already
    assert got["gone"] == want
