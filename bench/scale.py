"""Scale and latency of oe's control plane (issue 14), measured in one run. Not a test.

    python bench/scale.py [--parts latency,nokey] [--trials 5] [--nokey 100,1000]

Needs root (network namespaces), knotd, and strongSwan for the charon reference.

latency  `oe demo`'s world (knotd signing the reverse zones, alice and bob running oe with
         private-or-clear 0.0.0.0/0): alice's first ping to bob, i.e. trap, both DNS lookups,
         IKEv2, SA install and hold release, as ping reports its round trip; the daemons are
         restarted between trials so each one starts cold (no key, no SA cached). Beside it,
         two charons in namespaces (as bench/throughput.py's `swan`): `swanctl --initiate`
         of the same IKEv2 + CHILD SA with raw RSA keys, timed, then terminated.
nokey    the same world; carol answers for 2001:db8::1:0/112 (a local route: every address
         of it is hers) and publishes no key, so each of those addresses is a destination
         without a key (NXDOMAIN from the signed zone, the everyday case of private-or-clear
         0.0.0.0/0). alice sends one UDP datagram to each of N of them at once, then one
         more to each: the added delay of first and later packets (median, 99th percentile;
         sender and receiver share this machine's clock), and the shunts oe holds. During
         the burst alice pings bob for the first time (keyed): how long the negotiation that
         matters waits behind the burst. And the cost of one control-plane event with 100
         and with 10,000 shunts standing (bench/control.py's measure, in process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import control  # noqa: E402  (bench/control.py)
import throughput  # noqa: E402  (bench/throughput.py: namespaces, charon)
from oe import demo  # noqa: E402

NOKEY_NET = "2001:db8::1:0"
PORT = 9

SENDER = r"""
import socket, sys, time, ipaddress, json
base, count, port = ipaddress.ip_address(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
for i in range(count):
    s.sendto(str(time.time()).encode(), (str(base + i), port))
print(json.dumps({"sent": count}))
"""

RECEIVER = r"""
import socket, sys, time, json, select
port, count, wait = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("::", port))
print("ready", flush=True)
delays, deadline = [], None
while len(delays) < count:
    timeout = None if deadline is None else deadline - time.time()
    if timeout is not None and timeout <= 0:
        break
    if not select.select([s], [], [], timeout)[0]:
        break
    data, _ = s.recvfrom(64)
    delays.append(time.time() - float(data))
    deadline = deadline or time.time() + wait
print(json.dumps(delays))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


# ------------------------------------------------------------------------------ latency

def first_ping(world: demo.OeWorld) -> float:
    """Seconds from alice's first ping to bob's (encrypted) reply, daemons started cold."""
    for name in ("alice", "bob"):
        demo.start_oe(world, name)
    try:
        alice, bob = world.hosts["alice"], world.hosts["bob"]
        out = world.world.run(alice, "ping", "-c", "1", "-W", "10", bob.address,
                              check=False).stdout
        return float(out.split("time=")[1].split()[0]) / 1e3 if "time=" in out else float("nan")
    finally:
        for name in ("alice", "bob"):
            demo.stop_oe(world, name)


def charon_initiate(trials: int) -> list[float]:
    A, B = throughput.A, throughput.B
    times = []
    with throughput.namespaces("l") as (a, b), tempfile.TemporaryDirectory() as work:
        keys = {ns: rsa.generate_private_key(public_exponent=65537, key_size=2048)
                for ns in (a, b)}
        charons = []
        try:
            for ns, me, peer, other in ((a, A, B, b), (b, B, A, a)):
                charon = throughput.Charon(ns, Path(work) / ns, me=me, peer=peer, key=keys[ns],
                                           peer_key=keys[other])
                charons.append(charon)
                charon.start()
            for _ in range(trials):
                start = time.perf_counter()
                charons[0].swanctl("--initiate", "--child", "hh")
                times.append(time.perf_counter() - start)
                charons[0].swanctl("--terminate", "--ike", "hh")
                time.sleep(0.3)
        finally:
            for charon in charons:
                charon.stop()
    return times


def latency(trials: int) -> None:
    with tempfile.TemporaryDirectory(prefix="oe-scale-") as work:
        world = demo.build(Path(work))
        try:
            oe_times = [first_ping(world) for _ in range(trials)]
        finally:
            world.close()
    swan_times = charon_initiate(trials)
    oe_med, swan_med = statistics.median(oe_times), statistics.median(swan_times)
    print(f"first packet -> encrypted reply, oe (trap, 2 DNS lookups, IKEv2, SA, hold "
          f"released): median {ms(oe_med)}, min {ms(min(oe_times))}, max {ms(max(oe_times))} "
          f"({trials} cold starts)")
    print(f"swanctl --initiate between two charons (IKEv2 + CHILD SA, keys given): median "
          f"{ms(swan_med)}, min {ms(min(swan_times))}, max {ms(max(swan_times))}")
    print(f"oe/charon: x{oe_med / swan_med:.2f}")


# -------------------------------------------------------------------------------- nokey

def shunts(world: demo.OeWorld) -> int:
    status = json.loads(demo.oe_cmd(world, "alice", "status", "--json").stdout)
    return len(status.get("shunts", []))


def burst(world: demo.OeWorld, count: int) -> tuple[list[float], float]:
    """One datagram to each of `count` key-less destinations, received at carol; returns the
    delays and alice's first ping to bob sent while the burst is being resolved."""
    alice, carol, bob = world.hosts["alice"], world.hosts["carol"], world.hosts["bob"]
    receiver = subprocess.Popen(["ip", "netns", "exec", carol.name, sys.executable, "-c",
                                 RECEIVER, str(PORT), str(count), "5"],
                                stdout=subprocess.PIPE, text=True)
    receiver.stdout.readline()
    world.world.run(alice, sys.executable, "-c", SENDER, NOKEY_NET, str(count), str(PORT))
    ping = world.world.run(alice, "ping", "-c", "1", "-W", "60", bob.address, check=False,
                           timeout=90).stdout
    out, _ = receiver.communicate(timeout=120)
    keyed = float(ping.split("time=")[1].split()[0]) / 1e3 if "time=" in ping else float("nan")
    return json.loads(out), keyed


def nokey(counts: list[int]) -> None:
    print(f"{'N':>7} {'delivered':>10} {'first p50':>10} {'first p99':>10} {'later p50':>10} "
          f"{'later p99':>10} {'shunts':>7} {'keyed ping during burst':>24}")
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="oe-scale-") as work:
            world = demo.build(Path(work))
            try:
                carol, alice = world.hosts["carol"], world.hosts["alice"]
                world.world.run(carol, "ip", "-6", "route", "add", "local",
                                f"{NOKEY_NET}/112", "dev", "lo")
                world.world.run(alice, "ip", "-6", "route", "add", f"{NOKEY_NET}/112", "via",
                                carol.address6())
                for name in ("alice", "bob"):
                    demo.start_oe(world, name)
                first, keyed = burst(world, count)
                held = shunts(world)
                later, _ = burst(world, count)
            finally:
                for name in list(world.daemons):
                    demo.stop_oe(world, name)
                world.close()
        print(f"{count:>7,} {len(first):>10,} {ms(percentile(first, 0.5)):>10} "
              f"{ms(percentile(first, 0.99)):>10} {ms(percentile(later, 0.5)):>10} "
              f"{ms(percentile(later, 0.99)):>10} {held:>7,} {ms(keyed):>24}")
    small, large = control.per_event(100, True), control.per_event(10_000, True)
    print(f"one control-plane event (acquire, no key, shunt installed): {small * 1e3:.3f} ms "
          f"with 100 shunts, {large * 1e3:.3f} ms with 10,000 (x{large / small:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="latency,nokey")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--nokey", default="100,1000")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/scale.py needs root (network namespaces)")
    parts = args.parts.split(",")
    if "latency" in parts:
        latency(args.trials)
    if "nokey" in parts:
        nokey([int(n) for n in args.nokey.split(",")])


if __name__ == "__main__":
    main()
