"""Operator mistakes must be safe (issue 15, "Destructive or unsafe"): a second `oe start`, a
second oe in the same namespace, a table oe does not own, and the fail-closed state `oe stop`
leaves behind with a `private` group, and the command that removes it on purpose.

One world for the module (demo.build): alice runs oe and talks OE with bob; carol gets a host
key here and is where oe is started and stopped by the tests that need a namespace without oe.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from oe import demo
from oe.netns import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALICE, BOB, CAROL, DNS = (demo.ADDRESSES[n][0] for n in ("alice", "bob", "carol", "dns"))
BOB6 = demo.ADDRESSES["bob"][1]
PRIVATE = "198.51.100.0/24"
FOREIGN = "203.0.113.0/24"
ALICE_GROUPS = {"private-or-clear": "0.0.0.0/0\n::/0\n", "clear": f"{DNS}/32\n"}
CAROL_GROUPS = {"private-or-clear": "0.0.0.0/0\n::/0\n", "private": f"{PRIVATE}\n"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from oe import hostkey

    made = demo.build(tmp_path_factory.mktemp("ops"), groups={"alice": ALICE_GROUPS,
                                                                 "carol": CAROL_GROUPS})
    try:
        hostkey.keygen(hostkey.hostkey_path(made.confdir("carol")), force=True)
        demo.start_oe(made, "alice")
        demo.start_oe(made, "bob")
        yield made
    finally:
        for name in list(made.daemons):
            demo.stop_oe(made, name)
        made.close()


def oe(world, host, *argv, confdir=None, rundir=None):
    return world.world.run(world.hosts[host], *demo.OE, "--confdir",
                           str(confdir or world.confdir(host)), "--rundir",
                           str(rundir or world.rundir(host)), *argv, check=False, timeout=60)


def state(world, host) -> dict[str, str]:
    """What oe installs in a namespace besides its TUN: rules, table 4322, `inet oe`."""
    def run(*argv):
        proc = world.world.run(world.hosts[host], *argv, check=False)
        return proc.stdout if proc.returncode == 0 else ""
    return {"rules4": run("ip", "-4", "rule", "show", "priority", "4322"),
            "rules6": run("ip", "-6", "rule", "show", "priority", "4322"),
            "table4": run("ip", "-4", "route", "show", "table", "4322"),
            "table6": run("ip", "-6", "route", "show", "table", "4322"),
            "nft": run("nft", "list", "table", "inet", "oe")}


def stop_detached(world, host, rundir) -> None:
    """Stop an `oe start --daemon` that should not have started (the code before the fix)."""
    pid_file = rundir / "oe.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    oe(world, host, "stop", rundir=rundir)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20)


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_refused_second_start_leaves_the_running_daemon_reachable(world):
    """Item 1: the refused start used to delete the running daemon's oe.ctl and oe.pid."""
    rundir = world.rundir("alice")
    proc = oe(world, "alice", "start")
    assert (rundir / "oe.ctl").exists() and (rundir / "oe.pid").exists()
    assert oe(world, "alice", "status").returncode == 0
    assert proc.returncode == 2 and "another oe is running" in one_line(proc)


def test_a_second_oe_in_the_namespace_is_refused_and_the_first_still_encrypts(world, tmp_path):
    """Item 2: another tun_name and run dir, same namespace: it must not start, and must not
    take the first one's rule, routes or inbound table with it when it exits."""
    confdir, rundir = tmp_path / "conf", tmp_path / "run"
    shutil.copytree(world.confdir("alice"), confdir)
    (confdir / "oe.conf").write_text('tun_name = "oe1"\n' + (confdir / "oe.conf").read_text())
    before = state(world, "alice")
    assert before["rules6"] and before["table6"] and before["nft"]
    proc = oe(world, "alice", "start", "--daemon", confdir=confdir, rundir=rundir)
    stop_detached(world, "alice", rundir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "another oe" in one_line(proc) and "network namespace" in proc.stderr
    assert state(world, "alice") == before
    ping = world.world.run(world.hosts["alice"], "ping", "-c", "2", "-i", "0.3", "-W", "3",
                           BOB6, check=False)
    assert ping.returncode == 0, ping.stdout
    sas = json.loads(oe(world, "alice", "status", "--json").stdout)["sas"]
    assert any(sa["dst"] == BOB6 for sa in sas), sas


@pytest.mark.parametrize("argv, why", [
    ([DNS], f"{DNS} is in group clear (%pass): oe does not negotiate with it"),
    ([ALICE], f"{ALICE} is this host's own address"),
    ([BOB, "--src", "2001:db8::10"], "--src 2001:db8::10 and DST 192.0.2.20 are not the same "
                                     "address family"),
])
def test_initiate_says_why_nothing_will_happen(world, argv, why):
    """Item 6: these printed "initiating" and exited 0."""
    proc = oe(world, "alice", "initiate", *argv)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert why in one_line(proc)


def test_initiate_reports_the_outcome_with_its_exit_status(world):
    """Item 6: it exited 0 whatever became of the negotiation; carol publishes no key."""
    up = oe(world, "alice", "initiate", BOB)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"OE with {BOB} is up" in up.stdout
    failed = oe(world, "alice", "initiate", CAROL)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    line = one_line(failed)
    assert f"OE with {CAROL} failed" in line and "%pass" in line


def test_ike_ports_held_by_another_program_are_refused(world):
    """Item 2: UDP 500 belongs to someone else (another IKE daemon): oe must not share it."""
    carol = world.hosts["carol"]
    holder = world.world.spawn(carol, sys.executable, "-c",
                               "import socket, time; s = socket.socket(socket.AF_INET, "
                               "socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, "
                               "socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 500)); "
                               "time.sleep(120)")
    try:
        assert wait_for(lambda: ":500 " in world.world.run(carol, "ss", "-uln").stdout, 10)
        proc = oe(world, "carol", "start", "--daemon")
        stop_detached(world, "carol", world.rundir("carol"))
    finally:
        world.world.stop(holder)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "UDP port 500" in one_line(proc)
    assert not state(world, "carol")["rules4"]


def test_a_table_holding_routes_oe_did_not_put_there_is_refused(world):
    """Item 3: oe empties its table on stop; a route of someone else's there would go too."""
    carol = world.hosts["carol"]
    world.world.run(carol, "ip", "route", "add", FOREIGN, "via", demo.ADDRESSES["dns"][0],
                    "table", "4322")
    try:
        proc = oe(world, "carol", "start")  # in the foreground: the refusal is all it prints
        stop_detached(world, "carol", world.rundir("carol"))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        line = one_line(proc)
        assert "table 4322" in line and FOREIGN in line
        assert FOREIGN in state(world, "carol")["table4"]
        assert not state(world, "carol")["rules4"]
    finally:
        world.world.run(carol, "ip", "route", "del", FOREIGN, "table", "4322", check=False)


def test_stop_fails_closed_and_flush_removes_it_on_purpose(world):
    """Item 4: `oe stop` with a private group leaves the prohibit and throw routes, the rule and
    the inbound drop on purpose; `oe flush` (no daemon) and `oe stop --flush` remove them."""
    demo.start_oe(world, "carol")
    refused = oe(world, "carol", "flush")
    assert refused.returncode == 2 and "running" in one_line(refused)
    assert state(world, "carol")["rules4"]
    demo.stop_oe(world, "carol")
    left = state(world, "carol")
    assert f"prohibit {PRIVATE}" in left["table4"] and left["rules4"] and "@private4" in left["nft"]

    flushed = oe(world, "carol", "flush")
    assert flushed.returncode == 0, flushed.stderr
    assert state(world, "carol") == {"rules4": "", "rules6": "", "table4": "", "table6": "",
                                     "nft": ""}

    demo.start_oe(world, "carol")
    assert state(world, "carol")["rules4"]
    stopped = oe(world, "carol", "stop", "--flush")
    world.daemons.pop("carol").wait(15)
    assert stopped.returncode == 0, stopped.stderr
    assert state(world, "carol") == {"rules4": "", "rules6": "", "table4": "", "table6": "",
                                     "nft": ""}


@pytest.mark.parametrize("conf, message", [
    ('[dns]\nnameservers = ["dns.google"]\n', "[dns] nameservers: 'dns.google' is not an IP"),
    ('[ike]\nproposals = ["bogus"]\n', "[ike] proposals: unknown algorithm 'bogus'"),
    ('addresses = ["192.0.2.300"]\n', "addresses: '192.0.2.300' is not an IPv4 or IPv6"),
    (f'addresses = ["{ALICE}"]\n', f"addresses: {ALICE} is not an address of this host"),
])
def test_a_bad_value_is_one_line_at_start_and_nothing_in_the_log(world, tmp_path, conf, message):
    """Internal errors (issue 15): before, `oe start --daemon` said "oe exited while starting;
    see oe.log", and oe.log held a traceback (ValueError, OSError 99)."""
    confdir, rundir = tmp_path / "conf", tmp_path / "run"
    shutil.copytree(world.confdir("carol"), confdir)
    world_conf = (confdir / "oe.conf").read_text()  # names the world's nameserver
    (confdir / "oe.conf").write_text(conf if "[dns]" in conf else conf + world_conf)
    proc = oe(world, "carol", "start", "--daemon", confdir=confdir, rundir=rundir)
    stop_detached(world, "carol", rundir)
    assert proc.returncode == 2 and message in one_line(proc), proc.stdout + proc.stderr
    assert not (rundir / "oe.log").exists()
    assert not state(world, "carol")["rules4"]


def test_readiness_is_notified_once_routes_and_datapath_are_up(world, tmp_path):
    """contrib/oe.service is Type=notify: READY=1 only when oe serves (its rule and TUN in
    place), STOPPING=1 when it begins to stop. systemd is not PID 1 here, so the test plays
    its part: a datagram socket at $NOTIFY_SOCKET (sd_notify(3))."""
    import socket

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        proc = world.world.spawn(world.hosts["carol"], *demo.OE, "--confdir",
                                 str(world.confdir("carol")), "--rundir",
                                 str(world.rundir("carol")), "start", log="oe.log",
                                 env={**os.environ, "NOTIFY_SOCKET": str(path)})
        world.daemons["carol"] = proc
        try:
            ready = sock.recv(4096).decode().splitlines()
            assert ready[0] == "READY=1" and f"MAINPID={proc.pid}" in ready, ready
            assert state(world, "carol")["rules4"] and state(world, "carol")["nft"]
            assert oe(world, "carol", "status").returncode == 0
        finally:
            demo.stop_oe(world, "carol")
            oe(world, "carol", "flush")
        assert sock.recv(4096) == b"STOPPING=1"


def test_check_names_a_rule_of_someone_else_at_our_priority(world):
    """`oe check`: a rule at rule_priority that is not oe's would be deleted with oe's."""
    carol = world.hosts["carol"]
    assert oe(world, "carol", "check").returncode == 0
    world.world.run(carol, "ip", "rule", "add", "priority", "4322", "lookup", "100")
    try:
        proc = oe(world, "carol", "check")
        assert proc.returncode == 2 and one_line(proc) == (
            f"oe: {world.confdir('carol')}/oe.conf: rule_priority: 4322 is taken by a rule of "
            f"table 100 (`ip rule`): choose a free one")
    finally:
        world.world.run(carol, "ip", "rule", "del", "priority", "4322", "lookup", "100")
