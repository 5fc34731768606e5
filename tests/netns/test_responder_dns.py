"""Issue 15, 8: only the responder's nameserver is silent. Bob cannot look alice's key up, so
he refuses her IKE_SA_INIT as soon as his lookup budget is spent (an unprotected
AUTHENTICATION_FAILED), and alice falls back to her failure shunt then, not after her whole
retransmit budget (measured: 8.0 s to her shunt and 10.9 s to the first ping reply before,
3.5 s and 6.8 s after, the rest being bob's own lookup for his reply); bob logs his
refusal once.

The demo world (oe.demo): alice asks the world's knotd; bob asks a "nameserver" in the dns
namespace that reads every query and never answers; carol runs strongSwan's charon, configured
with bob's key, to see that charon too gives up at once (11.9 s before, 3.5 s after).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time

import pytest

from oe import control, demo, hostkey
from oe.netns import wait_for

from charon import CHARON, Charon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALICE, BOB, CAROL, DNS = (demo.ADDRESSES[n][0] for n in ("alice", "bob", "carol", "dns"))
SILENT_PORT = 5353
SILENT = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
          "s.bind((sys.argv[1], int(sys.argv[2]))); [s.recv(4096) for _ in iter(int, 1)]")
BUDGET = 3.0  # [dns] total_timeout's default: bob's lookup budget


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    made = demo.build(tmp_path_factory.mktemp("respdns"))
    try:
        conf = made.confdir("bob") / "oe.conf"
        conf.write_text(conf.read_text() + f"port = {SILENT_PORT}\n")
        made.world.spawn(made.hosts["dns"], sys.executable, "-c", SILENT, DNS, str(SILENT_PORT))
        demo.start_oe(made, "alice")
        demo.start_oe(made, "bob")
        yield made
    finally:
        for name in list(made.daemons):
            demo.stop_oe(made, name)
        made.close()


def status(world, host) -> dict:
    return control.request(world.rundir(host), "status")


def failure_shunt(world) -> dict | None:
    """Alice's failure shunt towards bob (a %hold has no expiry yet)."""
    for shunt in status(world, "alice")["shunts"]:
        if shunt["dst"] == BOB and shunt["expires_in"] is not None:
            return shunt
    return None


def test_alice_falls_back_within_one_lookup_budget_and_bob_looks_up_once(world):
    start = time.monotonic()
    ping = world.world.spawn(world.hosts["alice"], "ping", "-n", "-c", "1", "-W", "20", BOB,
                             log="ping.log")
    assert wait_for(lambda: failure_shunt(world) is not None, 20)
    elapsed = time.monotonic() - start
    shunt = failure_shunt(world)
    ping.wait(25)
    rtts = re.findall(r"icmp_seq=1 .*time=([\d.]+) ms",
                      (world.hosts["alice"].dir / "ping.log").read_text())
    first = f"{float(rtts[0]) / 1000:.2f} s" if rtts else "never"   # held, then sent
    print(f"alice's failure shunt after {elapsed:.2f} s ({shunt['reason']}), "
          f"first ping reply after {first}")
    assert elapsed < BUDGET + 2.0, (elapsed, shunt)
    assert "AUTHENTICATION_FAILED" in shunt["reason"]
    # The held ping then goes in clear; bob's reply waits for bob's own lookup of alice's key
    # (as initiator), which his silent nameserver spends one more budget on.
    assert rtts and float(rtts[0]) / 1000 < 2 * BUDGET + 2.0, first
    time.sleep(2.0)                       # a retransmit in flight would meet the refusal
    bob = status(world, "bob")
    assert bob["counters"]["ike_init_refused"] >= 1
    log = (world.hosts["bob"].dir / "oe.log").read_text()
    assert log.count(f"refused IKE from {ALICE}") == 1, log


@pytest.mark.skipif(not CHARON.exists() or not shutil.which("swanctl"),
                    reason="strongSwan charon/swanctl not installed (make apt)")
def test_charon_gives_up_at_once_too(world):
    """strongSwan's initiator ends IKE_SA_INIT on any error notify but COOKIE and
    INVALID_KE_PAYLOAD (ike_init.c process_i), so it does not retransmit for its whole budget
    (about 12 s with the 1 s timeout and 3 tries of tests/netns/charon.py)."""
    charon = Charon(world.hosts["carol"].name, world.hosts["carol"].dir / "charon", me=CAROL,
                    peer=BOB, key=hostkey.generate(2048),
                    peer_key=hostkey.load(hostkey.hostkey_path(world.confdir("bob"))))
    charon.start()
    try:
        start = time.monotonic()
        proc = charon.swanctl("--initiate", "--child", "hh", check=False)
        elapsed = time.monotonic() - start
    finally:
        charon.stop()
    print(f"charon gave up after {elapsed:.2f} s")
    assert proc.returncode != 0
    assert "received AUTHENTICATION_FAILED notify error" in charon.log, charon.log[-1500:]
    assert elapsed < BUDGET + 2.0, elapsed
