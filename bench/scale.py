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
import signal
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
SETTLE = 1.0
"""Seconds a daemon gets after `oe start` before the first packet (charon is measured long
after its start, too)."""

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

def capture(ns: str, iface: str, pcap: Path) -> subprocess.Popen:
    """tcpdump on `iface` of namespace `ns` until SIGINT (promiscuous on the switch's bridge:
    every host's frames)."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", iface,
                             "--immediate-mode", "-U", "-n", "-w", str(pcap), "ip or ip6"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.stderr.readline()  # "listening on ...": capturing from now on
    return proc


def first_ping(world: demo.OeWorld, work: Path) -> tuple[float, dict[str, float]]:
    """Seconds from alice's first ping to bob's (encrypted) reply, daemons freshly started
    (no key, no SA cached), and that time split into its parts as seen on the wire and on
    alice's TUN (where the ping is trapped and its reply delivered)."""
    for name in ("alice", "bob"):
        demo.start_oe(world, name)
    try:
        time.sleep(SETTLE)
        alice, bob = world.hosts["alice"], world.hosts["bob"]
        wire, tun = work / "wire.pcap", work / "tun.pcap"
        tcpdumps = [capture(world.world.switch, "br0", wire), capture(alice.name, "oe0", tun)]
        out = world.world.run(alice, "ping", "-c", "1", "-W", "10", bob.address,
                              check=False).stdout
        time.sleep(0.2)
        for tcpdump in tcpdumps:
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(10)
        rtt = float(out.split("time=")[1].split()[0]) / 1e3 if "time=" in out else float("nan")
        return rtt, parts(wire, tun, alice.address, bob.address, world.hosts["dns"].address)
    finally:
        for name in ("alice", "bob"):
            demo.stop_oe(world, name)


def parts(wire: Path, tun: Path, a: str, b: str, ns: str) -> dict[str, float]:
    """The first ping's way: trapped on alice's TUN, alice's DNS, IKE_SA_INIT, IKE_AUTH (bob's
    DNS lookups run beside them), the first ESP packet, the reply delivered to alice's TUN;
    each part in seconds."""
    from scapy.all import ICMP, IP, UDP, rdpcap  # scapy is slow to import

    seen: dict[str, float] = {}
    dns_a, dns_b = [], []
    for packet in rdpcap(str(wire)):
        if not packet.haslayer(IP):
            continue
        ip, t = packet[IP], float(packet.time)
        if packet.haslayer(UDP) and ns in (ip.src, ip.dst):
            (dns_a if a in (ip.src, ip.dst) else dns_b).append(t)
        elif packet.haslayer(UDP) and packet[UDP].dport in (500, 4500):
            ike = bytes(packet[UDP].payload)
            ike = ike[4:] if packet[UDP].dport == 4500 else ike
            exchange = {34: "init", 35: "auth"}.get(ike[18]) if len(ike) > 19 else None
            if exchange:
                seen.setdefault(f"{exchange}_{'r' if ike[19] & 0x20 else 'i'}", t)
        elif ip.proto == 50:
            seen.setdefault("esp" if ip.src == a else "esp_reply", t)
    for packet in rdpcap(str(tun)):
        if packet.haslayer(ICMP):
            seen.setdefault("trap" if packet[ICMP].type == 8 else "delivered", float(packet.time))
    dns_a = [t for t in dns_a if t < seen["init_i"]]
    return {
        "trapped -> first DNS query (alice)": min(dns_a) - seen["trap"],
        "DNS lookups (alice, incl. DNSSEC chain)": max(dns_a) - min(dns_a),
        "last DNS answer -> IKE_SA_INIT sent (validate, DH)": seen["init_i"] - max(dns_a),
        "IKE_SA_INIT round trip (bob: DH)": seen["init_r"] - seen["init_i"],
        "IKE_SA_INIT reply -> IKE_AUTH sent (DH, sign)": seen["auth_i"] - seen["init_r"],
        "IKE_AUTH round trip (bob: verify, sign, install)": seen["auth_r"] - seen["auth_i"],
        "  of which bob's DNS lookups of alice": (max(dns_b) - min(dns_b)) if dns_b else 0.0,
        "IKE_AUTH reply -> first ESP (verify, install, release)": seen["esp"] - seen["auth_r"],
        "first ESP -> reply delivered to alice's TUN": seen["delivered"] - seen["esp"],
    }


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
            runs = [first_ping(world, Path(work)) for _ in range(trials)]
        finally:
            world.close()
    swan_times = charon_initiate(trials)
    oe_times = [rtt for rtt, _ in runs]
    oe_med, swan_med = statistics.median(oe_times), statistics.median(swan_times)
    print(f"first packet -> encrypted reply, oe (trap, 2 DNS lookups, IKEv2, SA, hold "
          f"released): median {ms(oe_med)}, min {ms(min(oe_times))}, max {ms(max(oe_times))} "
          f"({trials} fresh daemons)")
    for name in runs[0][1]:
        print(f"  {name:<56} median {ms(statistics.median(p[name] for _, p in runs)):>9}")
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
