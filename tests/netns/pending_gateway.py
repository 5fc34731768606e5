"""PENDING gateway tests (docs/gateway.md 7.2): not collected (no test_ prefix), run by name
(`pytest tests/netns/pending_gateway.py`). Each moves to test_gateway.py once the feature it
needs is merged and it passes there. As of this branch's last merge (main with h-gwnet, h-addr,
h-resp, h-child; h-init at 3fcab24), what each needs:

  1-fqdn  a1 -> b1, b1's record names @gw-b.oe.example. gw-a resolves the name and goes to gw-b
          (h-init, 5.1), but gw-b refuses b1 as its client: "record for our client
          198.51.101.10 delegates to @gw-b.oe.example, not us". Needs check_client (dnskeys/
          delegation.py, used by the initiator and the responder) to accept an @FQDN gateway
          whose secure A/AAAA hold our address (docs/gateway.md 3 step 2; h-resp 4.5 lists it
          as not built for the responder).
  7       a1 -> b3, records 10: 192.0.2.99 (dead), 20: gw-b. gw-a's fallback works (h-init:
          "gateway 192.0.2.99 failed (IKE timeout ...); trying 192.0.2.2"), but gw-b answers
          TS_UNACCEPTABLE: check_client takes only choose's chosen record (192.0.2.99), so a
          backup gateway never accepts its client. Needs check_client over the lookup's
          candidates (any record naming us with our key; RFC 4322 3.2).
  3-both  with an IKE SA between the gateways, a4 -> b4 and b4 -> a4 at once: 1 run in 3 the
          two CHILD SAs for the pair delete each other in turn ("OE to 198.51.101.40 via
          192.0.2.2 ended: deleted by peer" at every ping). Needs helper child's stale-tunnel
          rule (Opportunist.tunnel_up -> DeleteChild) to keep one of two simultaneous CHILD
          SAs of one pair on one IKE SA (e.g. the one with the lower nonce, RFC 7296 2.8's
          rule for simultaneous rekeys) instead of both sides deleting theirs.

Same world, fixture and helpers as test_gateway.py (tests/netns/gateway_world.py).
"""

from __future__ import annotations

import pytest

from oe.netns import World

import gateway_world as gwd
from gateway_world import (diagnose, has_eroute, tunnel, wait_eroute,
                           world_fixture)  # noqa: F401 (world_fixture: gw)

pytestmark = gwd.NEEDS
pytest.importorskip("unbound", reason="python3-unbound is not importable: make the venv from "
                                      "Debian's /usr/bin/python3 --system-site-packages")

A1 = gwd.CLIENTS["a1"]
B1, B3, B4 = (gwd.CLIENTS[n] for n in ("b1", "b3", "b4"))
GW_A, GW_B = gwd.INET["gw-a"], gwd.INET["gw-b"]


# ---------------------------------------------------------------- 1. an FQDN gateway


def test_1_fqdn_gateway_in_the_clients_record(gw):
    """a1 -> b1, whose record names @gw-b.oe.example: gw-a resolves it (secure A) to go there,
    and gw-b must recognise itself in that name for its client b1."""
    assert gw.ping("a1", "b1").returncode == 0, diagnose(gw, "gw-a", "gw-b")
    assert wait_eroute(gw, "gw-a", tunnel(A1, B1, GW_B)), diagnose(gw, "gw-a", "gw-b")
    assert has_eroute(gw, "gw-b", tunnel(B1, A1, GW_A)), diagnose(gw, "gw-b")


# ---------------------------------------------------------------- 7. fallback by precedence


def test_7_dead_first_gateway_then_the_next_by_precedence(gw):
    """b3's records: precedence 10 names 192.0.2.99 (nobody), 20 names gw-b."""
    pinger = gw.world.spawn(gw.hosts["a1"], "ping", "-c", "60", "-i", "0.5", B3)
    try:
        assert wait_eroute(gw, "gw-a", tunnel(A1, B3, GW_B), 60), diagnose(gw, "gw-a")
    finally:
        World.stop(pinger)
    assert gwd.DEAD in gw.log("gw-a")
    assert gw.ping("a1", "b3").returncode == 0


# ---------------------------------------------------------------- 3. both gateways at once


def test_3_both_gateways_initiate_for_one_pair_at_once(gw):
    """With an IKE SA between the gateways (a1 <-> b4), a4 -> b4 and b4 -> a4 at the same
    moment (no tunnel for that pair yet: run before anything else uses it): gw-a and gw-b each
    ask for a CHILD SA on that IKE SA; they must settle on one tunnel, not delete each other's
    in turn (seen: "OE to 198.51.101.40 via 192.0.2.2 ended: deleted by peer" every ping)."""
    assert gw.ping("a1", "b4", count=2).returncode == 0, diagnose(gw, "gw-a", "gw-b")
    both = [gw.world.spawn(gw.hosts[src], "ping", "-c", "5", "-i", "0.3", "-W", "3",
                           gwd.CLIENTS[dst]) for src, dst in (("a4", "b4"), ("b4", "a4"))]
    try:
        assert all(proc.wait(30) == 0 for proc in both), diagnose(gw, "gw-a", "gw-b")
    finally:
        for proc in both:
            World.stop(proc)
    assert gw.log("gw-a").count(f"OE to {B4} via {GW_B} ended: deleted by peer") <= 1, \
        diagnose(gw, "gw-a", "gw-b")
