"""oe.routing: which CIDRs go into the TUN and which around it (plan, pure), and what the kernel
does with those routes when the TUN goes (in a namespace)."""

import ipaddress
import json
import os
import sys
from pathlib import Path

import pytest

from oe.netns import World
from oe import routing
from oe.routing import ALWAYS_EXEMPT, plan


def test_exempt_wins_over_trap_and_link_local_multicast_are_always_exempt():
    routes = dict(plan(["0.0.0.0/0", "::/0", "192.0.2.53/32"], ["192.0.2.53/32", "192.0.2.128/25"]))
    net = ipaddress.ip_network
    assert routes[net("0.0.0.0/0")] == "tun" and routes[net("::/0")] == "tun"
    assert routes[net("192.0.2.53/32")] == "throw"          # a nameserver: never trapped
    assert routes[net("192.0.2.128/25")] == "throw"
    for cidr in ALWAYS_EXEMPT:                               # ND, multicast, loopback
        assert routes[net(cidr)] == "throw"


def test_plan_is_ordered_by_family_then_prefix():
    routes = [str(n) for n, _ in plan(["198.51.100.0/24", "2001:db8::/32", "192.0.2.0/24"], [])]
    v4 = [r for r in routes if ":" not in r]
    assert routes.index(v4[-1]) < routes.index("2001:db8::/32")
    assert v4.index("192.0.2.0/24") < v4.index("198.51.100.0/24")


def test_a_trapped_prefix_beats_a_passing_groups_throw_but_never_a_nameservers():
    """A clear-or-private /32 and a tunnel's host route for that peer share one prefix: the
    route into the TUN wins (the classifier passes what is clear); a nameserver is never
    trapped."""
    routes = dict(plan(["192.0.2.10/32", "192.0.2.53/32"], ["192.0.2.53/32"],
                       clear=["192.0.2.10/32", "192.0.2.0/24", "2001:db8::10/128"]))
    net = ipaddress.ip_network
    assert routes[net("192.0.2.10/32")] == "tun"
    assert routes[net("192.0.2.0/24")] == "throw" and routes[net("2001:db8::10/128")] == "throw"
    assert routes[net("192.0.2.53/32")] == "throw"


def test_private_cidrs_get_a_prohibit_route_beside_their_route_into_the_tun():
    routes = plan(["192.0.2.20/32", "2001:db8::/64", "198.51.100.0/24"], [],
                  prohibit=["192.0.2.20/32", "2001:db8::/64", "192.0.2.20/32"])
    net = ipaddress.ip_network
    for cidr in ("192.0.2.20/32", "2001:db8::/64"):
        assert [kind for n, kind in routes if n == net(cidr)] == ["prohibit", "tun"]
    assert [kind for n, kind in routes if n == net("198.51.100.0/24")] == ["tun"]


# In a namespace: oe0 up, oe's routes installed, where() says which device a destination takes
# (or why none); the test's own lines follow and print JSON.
_ROUTED = """
import json, os, subprocess
from oe import routing, tun

def where(dst):
    out = subprocess.run(["ip", "route", "get", dst], capture_output=True, text=True)
    words = out.stdout.split()
    return words[words.index("dev") + 1] if "dev" in words else out.stderr.strip()

fd = tun.open_tun("oe0")
tun.set_up("oe0", 1400)
steering = routing.install("oe0", ["192.0.2.20/32", "2001:db8::20/128", "192.0.2.30/32"],
                           ["192.0.2.53/32"], clear=["192.0.2.30/32"],
                           prohibit=["192.0.2.20/32", "2001:db8::20/128"],
                           table=4322, priority=4322, mark=0x4F45)
dsts = ["192.0.2.20", "2001:db8::20", "192.0.2.30", "192.0.2.53"]
running = {dst: where(dst) for dst in dsts}
"""
PROHIBITED = "RTNETLINK answers: Permission denied"
RUNNING = {"192.0.2.20": "oe0", "2001:db8::20": "oe0", "192.0.2.30": "oe0", "192.0.2.53": "eth0"}
CLOSED = {"192.0.2.20": PROHIBITED, "2001:db8::20": PROHIBITED, "192.0.2.30": "eth0",
          "192.0.2.53": "eth0"}


def routed(tmp_path, lines: str) -> dict:
    with World("oert", tmp_path) as world:
        host = world.host("h", "192.0.2.10/24", "2001:db8::10/64")
        out = world.run(host, sys.executable, "-c", _ROUTED + lines,
                        cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_prohibit_routes_outlive_the_tun(tmp_path):
    """In a namespace: while the TUN lives, private destinations route into it; once it is gone
    (oe died) they are prohibited, never routed out in clear; a passing group's host with a
    tunnel and a nameserver go to the main table."""
    got = routed(tmp_path, """
os.close(fd)  # what SIGKILL does: the TUN goes, and the kernel takes its routes with it
print(json.dumps({"running": running, "dead": {dst: where(dst) for dst in dsts}}))
""")
    assert got == {"running": RUNNING, "dead": CLOSED}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_stop_leaves_private_destinations_prohibited(tmp_path):
    """`oe stop` fails closed (docs/architecture.md section 1): fail_closed() takes the routes into the
    TUN away but leaves the prohibit routes beneath the private CIDRs, so at once, with the
    TUN still up, and after it is gone, a private destination is unreachable, never routed
    out in clear."""
    got = routed(tmp_path, """
left = routing.fail_closed(steering)
stopped = {dst: where(dst) for dst in dsts}
os.close(fd)
print(json.dumps({"left": left, "stopped": stopped, "gone": {dst: where(dst) for dst in dsts}}))
""")
    assert sorted(got["left"]) == ["192.0.2.20/32", "2001:db8::20/128"]
    assert got["stopped"] == got["gone"] == CLOSED


def sysctls(root: Path, values: dict[str, str]) -> Path:
    """A fake /proc/sys holding `values` ("net.ipv4.conf.eth0.forwarding": "0", ...)."""
    for name, value in values.items():
        path = root / name.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return root


def read(root: Path, name: str) -> str:
    return (root / name.replace(".", "/")).read_text().strip()


HOST = {**{f"net.ipv4.conf.{i}.{k}": v for i in ("all", "eth0", "lan0", "oe0")
           for k, v in (("forwarding", "0"), ("rp_filter", "1"))},
        **{f"net.ipv6.conf.{i}.{k}": v for i in ("all", "eth0", "lan0", "oe0")
           for k, v in (("forwarding", "0"), ("force_forwarding", "0"), ("accept_ra", "1"))}}


def test_forwarding_is_enabled_per_input_interface_recorded_and_restored(tmp_path):
    """issue 13, docs/gateway.md 2: Linux forwards by the *input* device's flag (IPv4
    `forwarding`, IPv6 `force_forwarding`, both checked on 6.18): the LAN for the clients'
    packets, the TUN for the decrypted ones, the WAN for replies in clear; `all` untouched.
    The old values are recorded before anything changes, and restored from the record."""
    root, record = sysctls(tmp_path / "sys", HOST), tmp_path / "run" / "forwarding.json"
    changed = routing.enable_forwarding({4, 6}, ["lan0"], "oe0", ["eth0"], record, root=root)
    assert changed == [(f"net.ipv{v}.conf.{i}.{k}", "0") for v, k in ((4, "forwarding"),
                                                                      (6, "force_forwarding"))
                       for i in ("lan0", "oe0", "eth0")]
    assert all(read(root, name) == "1" for name, _ in changed)
    assert read(root, "net.ipv4.conf.all.forwarding") == "0"
    assert read(root, "net.ipv6.conf.all.forwarding") == "0"
    assert read(root, "net.ipv6.conf.eth0.accept_ra") == "1"     # RAs still learned
    assert routing.opened(changed, ["eth0"]) == ("eth0",)
    assert routing.restore_forwarding(record, root=root) == [name for name, _ in changed][::-1]
    assert all(read(root, name) == "0" for name, _ in changed) and not record.exists()
    assert routing.restore_forwarding(record, root=root) == []    # nothing recorded: nothing


def test_a_device_name_with_a_dot_is_one_directory(tmp_path):
    """A VLAN device eth0.100 is /proc/sys/net/ipv4/conf/eth0.100/, not .../eth0/100/."""
    root = sysctls(tmp_path / "sys", {})
    (root / "net/ipv4/conf/eth0.100").mkdir(parents=True)
    (root / "net/ipv4/conf/eth0.100/forwarding").write_text("0\n")
    (root / "net/ipv4/conf/oe0").mkdir(parents=True)
    (root / "net/ipv4/conf/oe0/forwarding").write_text("0\n")
    changed = routing.enable_forwarding({4}, ["eth0.100"], "oe0", [], tmp_path / "r", root=root)
    assert changed == [("net.ipv4.conf.eth0.100.forwarding", "0"),
                       ("net.ipv4.conf.oe0.forwarding", "0")]
    assert (root / "net/ipv4/conf/eth0.100/forwarding").read_text() == "1"


def test_only_the_families_with_subnets_and_only_what_changes(tmp_path):
    """An IPv4-only gateway leaves IPv6 alone; a flag already on is not recorded (restoring
    it would not be ours to do), and an interface already forwarding is not `opened`."""
    root = sysctls(tmp_path / "sys", {**HOST, "net.ipv4.conf.eth0.forwarding": "1"})
    changed = routing.enable_forwarding({4}, ["lan0"], "oe0", ["eth0"], tmp_path / "r",
                                        root=root)
    assert [name for name, _ in changed] == ["net.ipv4.conf.lan0.forwarding",
                                             "net.ipv4.conf.oe0.forwarding"]
    assert routing.opened(changed, ["eth0"]) == ()
    assert read(root, "net.ipv6.conf.lan0.force_forwarding") == "0"
    assert routing.enable_forwarding(set(), ["lan0"], "oe0", ["eth0"], tmp_path / "r2",
                                     root=root) == []


def test_without_per_interface_ipv6_forwarding_all_forwards_and_ras_stay(tmp_path):
    """Kernels before force_forwarding forward IPv6 only with all.forwarding, which would drop
    the RA-learned default routes of an interface with accept_ra 1: raised to 2 first."""
    old = {k: v for k, v in HOST.items() if "force_forwarding" not in k}
    root = sysctls(tmp_path / "sys", old)
    changed = routing.enable_forwarding({6}, ["lan0"], "oe0", ["eth0"], tmp_path / "r", root=root)
    assert changed == [("net.ipv6.conf.eth0.accept_ra", "1"),
                       ("net.ipv6.conf.all.forwarding", "0")]
    assert read(root, "net.ipv6.conf.eth0.accept_ra") == "2"
    assert routing.opened(changed, ["eth0"]) == ("eth0",)


def test_rp_filter_is_loosened_only_where_strict_and_never_for_all(tmp_path):
    """docs/gateway.md 2: the kernel uses max(all, interface); all = 2 would make the LAN
    loose too (RFC 3704 ingress filtering gone). The WAN gets 2 where it is strict, by its own
    value or by all's; the LAN is not passed in and stays strict."""
    root = sysctls(tmp_path / "sys", {**HOST, "net.ipv4.conf.eth0.rp_filter": "0",
                                      "net.ipv4.conf.oe0.rp_filter": "0"})
    assert routing.loosen_rp_filter(["eth0"], root=root) == ["net.ipv4.conf.eth0.rp_filter"]
    assert read(root, "net.ipv4.conf.eth0.rp_filter") == "2"
    assert read(root, "net.ipv4.conf.all.rp_filter") == "1"
    assert read(root, "net.ipv4.conf.lan0.rp_filter") == "1"
    sysctls(root, {"net.ipv4.conf.all.rp_filter": "0"})
    assert routing.loosen_rp_filter(["oe0"], root=root) == []          # 0 and 0: off already
