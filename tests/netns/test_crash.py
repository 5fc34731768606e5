"""oe dies (SIGKILL: no clean-up at all) in the middle of a `private` flow.

The TUN and every route into it vanish with the process; what is left in oe's table must keep
private destinations unreachable, never clear (docs/architecture.md section 1), and a new `oe start` must
bring the flow back encrypted with no manual step, although the peer still holds the old SAs.
The wire is watched on alice's bridge port throughout.
"""

from __future__ import annotations

import os
import time

import pytest

from oe import demo
from oe.netns import World, wait_for
from test_oe_e2e import ALICE, ALICE6, BOB, BOB6, cleartext, make_world, status  # noqa: F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

PRIVATE_BOB = {"alice": {"private": f"{BOB}\n{BOB6}\n"}}


def kill_oe(world, name: str) -> None:
    """SIGKILL the daemon by its pid (`ip netns exec` execs, so the pid is oe's own)."""
    proc = world.daemons.pop(name)
    os.kill(proc.pid, 9)
    proc.wait()


def pingers(world, src: str, *dsts: str) -> list:
    return [world.world.spawn(world.hosts[src], "ping", "-i", "0.05", dst, log=f"ping-{dst}.log")
            for dst in dsts]


def sa_to(world, name: str, dst: str) -> dict | None:
    return next((sa for sa in status(world, name)["sas"] if sa["dst"] == dst), None)


def carries_both_ways(world, name: str, dst: str, old_spi: str | None = None) -> bool:
    """An SA to dst (other than the one with inbound SPI old_spi) that has carried packets
    both ways."""
    sa = sa_to(world, name, dst)
    return (sa is not None and sa["spi_in"] != old_spi and sa["packets_in"] > 0
            and sa["packets_out"] > 0)


def test_sigkill_during_a_private_flow_leaks_nothing_and_restart_recovers(make_world):
    """alice pings bob (IPv4 and IPv6, both private) through a SIGKILL of her oe and a restart:
    no cleartext ICMP ever leaves; afterwards the flows are encrypted on new SAs, and bob, who
    still held the old ones, retired them on alice's INITIAL_CONTACT."""
    world = make_world(groups=PRIVATE_BOB)
    flows = pingers(world, "alice", BOB, BOB6)
    for dst in (BOB, BOB6):
        assert wait_for(lambda d=dst: carries_both_ways(world, "alice", d), 10)
    old = {dst: sa_to(world, "bob", dst)["spi_in"] for dst in (ALICE, ALICE6)}

    kill_oe(world, "alice")
    time.sleep(1.0)                                  # ~20 pings per family try to leave
    alice = world.hosts["alice"]
    assert "oe0" not in world.world.run(alice, "ip", "link").stdout

    demo.start_oe(world, "alice")
    for dst in (BOB, BOB6):
        assert wait_for(lambda d=dst: carries_both_ways(world, "alice", d), 15), \
            f"no new SA to {dst} carries the flow: {status(world, 'alice')['sas']}"
    for dst in (ALICE, ALICE6):
        [sa] = [sa for sa in status(world, "bob")["sas"] if sa["dst"] == dst]
        assert sa["spi_in"] != old[dst]              # the old SAs are gone from bob
    assert "INITIAL_CONTACT" in (world.hosts["bob"].dir / "oe.log").read_text()
    time.sleep(0.5)
    for proc in flows:
        World.stop(proc, sig=2)

    World.stop(world.capture)
    for a, b in ((ALICE, BOB), (ALICE6, BOB6)):
        kinds = demo.wire_summary(world.pcap, a, b)
        assert cleartext(kinds) == {}, f"a private flow leaked {a} -> {b}: {kinds}"
        assert kinds.get("ESP", 0) > 40, kinds


def test_peer_sending_on_old_sas_recovers_after_restart(make_world):
    """bob's flow to alice (private on alice's side) goes on ESP with SPIs the restarted alice
    no longer knows: she drops it and stays silent, so bob's liveness check ends the old SAs,
    his %trap renegotiates, and his pings are answered encrypted again, never in clear."""
    world = make_world(groups=PRIVATE_BOB, conf={"bob": "[ike]\ndpd_delay = 1.0\n"})
    [flow] = pingers(world, "bob", ALICE)
    assert wait_for(lambda: carries_both_ways(world, "bob", ALICE), 10)

    old = sa_to(world, "bob", ALICE)["spi_in"]

    kill_oe(world, "alice")
    time.sleep(0.5)
    demo.start_oe(world, "alice")
    assert wait_for(lambda: carries_both_ways(world, "bob", ALICE, old), 40), \
        f"bob's flow did not recover: {status(world, 'bob')['sas']}"
    World.stop(flow, sig=2)

    World.stop(world.capture)
    kinds = demo.wire_summary(world.pcap, ALICE, BOB)
    assert cleartext(kinds) == {}, f"a private flow leaked: {kinds}"
    assert kinds.get("ESP", 0) > 40, kinds
