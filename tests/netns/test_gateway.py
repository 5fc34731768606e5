"""oe as a DNS-keyed gateway (issue 13), end to end in the gateway world of docs/gateway.md 7.1
(tests/netns/gateway_world.py): clients behind two oe gateways, an oe host, charon with a
subnet, knotd with the clients' delegating records. The tests of docs/gateway.md 7.2 that pass
on this branch; the others wait in tests/netns/pending_gateway.py, which says what each needs.

One world for the module (oe on gw-a, gw-b and h); each test uses its own pair of hosts where
it can, and puts back what it changes (oe.conf, a stopped daemon).
"""

from __future__ import annotations

import pytest

from oe import demo

import gateway_world as gwd
from gateway_world import sysctl, world_fixture  # noqa: F401 (world_fixture: gw)

pytestmark = gwd.NEEDS
pytest.importorskip("unbound", reason="python3-unbound is not importable: make the venv from "
                                      "Debian's /usr/bin/python3 --system-site-packages")


# ---------------------------------------------------------------- 10. forwarding


def test_10_forwarding_only_where_subnets_are_and_restored_on_stop(gw):
    """h has no [gateway] subnets: oe leaves its forwarding alone. gw-a forwards from its LAN,
    and from the WAN too (the clients' replies; its forward chain lets only packets to a
    client through, docs/gateway.md 2.1), until oe stops: then it is as it was (off)."""
    for key in ("net.ipv4.conf.all.forwarding", "net.ipv4.conf.eth0.forwarding"):
        assert sysctl(gw, "h", key) == "0", key
    assert sysctl(gw, "gw-a", "net.ipv4.conf.eth1.forwarding") == "1"
    demo.stop_oe(gw, "gw-a")
    try:
        for dev in ("all", "eth0", "eth1"):
            assert sysctl(gw, "gw-a", f"net.ipv4.conf.{dev}.forwarding") == "0", dev
        assert gw.ping("a1", "b1", count=1).returncode != 0  # no oe, no forwarding
    finally:
        demo.start_oe(gw, "gw-a")
