"""oe.netns worlds with more than one bridge: LANs behind a router (the gateway world of
docs/gateway.md 7.1 is built from these), and nothing left behind when building one fails."""

import os
import subprocess

import pytest

from oe.netns import NetnsError, World

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_clients_on_two_lans_reach_each_other_through_a_router(tmp_path):
    """    a1 ── lan-a ── r ── lan-b ── b1     (r: eth0 on lan-a, eth1 on lan-b)"""
    with World("oert", tmp_path) as world:
        world.bridge("lan-a")
        world.bridge("lan-b")
        r = world.host("r", "198.51.100.1/24", "2001:db8:a::1/64", bridge="lan-a")
        port = world.attach(r, "lan-b", "198.51.101.1/24", "2001:db8:b::1/64", ifname="eth1")
        a1 = world.host("a1", "198.51.100.10/24", "2001:db8:a::10/64", bridge="lan-a")
        b1 = world.host("b1", "198.51.101.10/24", "2001:db8:b::10/64", bridge="lan-b")
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            world.run(r, "sysctl", "-qw", key)
        world.route(a1, "default via 198.51.100.1")
        world.route(a1, "default via 2001:db8:a::1")
        world.route(b1, "198.51.100.0/24 via 198.51.101.1")
        world.route(b1, "2001:db8:a::/64 via 2001:db8:b::1")

        assert r.addresses == ("198.51.100.1/24", "2001:db8:a::1/64", "198.51.101.1/24",
                               "2001:db8:b::1/64")
        assert r.ports == {"eth0": r.port, "eth1": port} and port != r.port
        master = subprocess.run(["ip", "-n", world.switch, "-o", "link", "show", port],
                                capture_output=True, text=True).stdout
        assert "master lan-b" in master
        for dst in ("198.51.101.10", "2001:db8:b::10"):
            # (the first IPv6 packet may wait for the router's link-local address, DAD)
            ping = world.run(a1, "ping", "-c3", "-i0.5", "-W2", dst, check=False)
            assert ping.returncode == 0, dst
        # b1 has no default route: only what it was given
        assert world.run(b1, "ping", "-c1", "-W1", "192.0.2.1", check=False).returncode != 0
        prefix = world.prefix
    assert not {ns for ns in namespaces() if ns.startswith(f"{prefix}-")}


def test_failed_attach_or_route_cleans_up(tmp_path):
    prefixes = []
    with pytest.raises(NetnsError, match="no-such-bridge"):
        with World("oert", tmp_path) as world:
            prefixes.append(world.prefix)
            world.attach(world.host("r", "192.0.2.1/24"), "no-such-bridge", "198.51.100.1/24")
    with pytest.raises(NetnsError, match="route add"):
        with World("oert", tmp_path) as world:
            world.route(world.host("a", "192.0.2.10/24"), "default via 198.51.100.1")
    # (only this world's namespaces: other test runs may make theirs meanwhile)
    assert not {ns for ns in namespaces() if ns.startswith(f"{prefixes[0]}-")}


def test_two_worlds_of_one_process_at_once_do_not_share_names(tmp_path):
    with World("oert", tmp_path / "1") as first, World("oert", tmp_path / "2") as second:
        assert first.prefix != second.prefix
        first.host("a", "192.0.2.10/24")
        second.host("a", "192.0.2.10/24")
        prefixes = (first.prefix, second.prefix)
    assert not {ns for ns in namespaces() if ns.startswith(prefixes)}
