"""PENDING gateway test (docs/gateway.md 7.2): not collected (no test_ prefix), run by name
(`pytest tests/netns/pending_gateway.py`). Each moves to test_gateway.py once the feature it
needs is merged and it passes there. What it needs:

  1-fqdn  a1 -> b1, b1's record names @gw-b.oe.example. gw-a resolves the name and goes to gw-b
          (h-init, 5.1), but gw-b refuses b1 as its client: "record for our client
          198.51.101.10 delegates to @gw-b.oe.example, not us". Needs check_client (dnskeys/
          delegation.py, used by the initiator and the responder) to accept an @FQDN gateway
          whose secure A/AAAA hold our address (docs/gateway.md 3 step 2; h-resp 4.5 lists it
          as not built for the responder).

Same world, fixture and helpers as test_gateway.py (tests/netns/gateway_world.py).
"""

from __future__ import annotations

import pytest

import gateway_world as gwd
from gateway_world import (diagnose, has_eroute, tunnel, wait_eroute,
                           world_fixture)  # noqa: F401 (world_fixture: gw)

pytestmark = gwd.NEEDS
pytest.importorskip("unbound", reason="python3-unbound is not importable: make the venv from "
                                      "Debian's /usr/bin/python3 --system-site-packages")

A1 = gwd.CLIENTS["a1"]
B1 = gwd.CLIENTS["b1"]
GW_A, GW_B = gwd.INET["gw-a"], gwd.INET["gw-b"]


# ---------------------------------------------------------------- 1. an FQDN gateway


def test_1_fqdn_gateway_in_the_clients_record(gw):
    """a1 -> b1, whose record names @gw-b.oe.example: gw-a resolves it (secure A) to go there,
    and gw-b must recognise itself in that name for its client b1."""
    assert gw.ping("a1", "b1").returncode == 0, diagnose(gw, "gw-a", "gw-b")
    assert wait_eroute(gw, "gw-a", tunnel(A1, B1, GW_B)), diagnose(gw, "gw-a", "gw-b")
    assert has_eroute(gw, "gw-b", tunnel(B1, A1, GW_A)), diagnose(gw, "gw-b")
