"""Scale and latency of oe's control plane (issue 14), measured in one run. Not a test.

    python bench/scale.py [--parts farm,latency,nokey] [--farm 100,1000,10000] [--rate 50]
                          [--trials 5] [--nokey 100,1000]

Needs root (network namespaces), knotd, and strongSwan for the charon reference.

farm     a peer farm: one oe daemon answering OE on N addresses of its own (2001:db8:2::/64,
         one IPSECKEY each in a zone knotd signs) and an initiator daemon (alice) that sends
         one UDP datagram to each of them, meeting --rate new peers per second: every
         datagram is trapped, its key looked up, IKEv2 run and the datagram released into its
         SA. Figures per N: time until the
         last datagram arrived (all SAs up), new peers per second, first-packet latency
         (median, 99th percentile), RSS of both daemons and memory per peer, CPU seconds per
         negotiation (both daemons), and the classifier's lookups per second over alice's
         table with N SAs in it (in process, as bench/eroute.py). alice's [limits] hold N
         packets and queued acquires; her acquire rate is --rate too (default 50 negotiations
         per second, burst as many), about what two daemons on 2 cores sustain: all N at once
         overloads both and ends in IKE retransmission timeouts.
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
import ipaddress
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import control  # noqa: E402  (bench/control.py)
import eroute  # noqa: E402  (bench/eroute.py: lookups per second)
import throughput  # noqa: E402  (bench/throughput.py: namespaces, charon)
from oe import demo, hostkey  # noqa: E402
from oe.knotd import NSEC, Knotd  # noqa: E402
from oe.netns import World  # noqa: E402

NOKEY_NET = "2001:db8::1:0"
FARM_NET = ipaddress.ip_network("2001:db8:2::/64")
FARM_ZONE = ".".join(FARM_NET.network_address.reverse_pointer.split(".")[16:])
NS6 = "2001:db8::53"
PORT = 9
SEND_RATE = 2000
"""New destinations per second the sender meets (faster, and the TUN's 500-packet queue
drops the first packets before oe sees them)."""
SETTLE = 1.0
"""Seconds a daemon gets after `oe start` before the first packet (charon is measured long
after its start, too)."""

SENDER = r"""
import socket, sys, time, ipaddress, json
base, count, port = ipaddress.ip_address(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rate = float(sys.argv[4])  # datagrams per second: the TUN's queue holds 500
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
start = time.time()
for i in range(count):
    time.sleep(max(0.0, start + i / rate - time.time()))
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
    delays.append((float(data), time.time()))
    deadline = deadline or time.time() + wait
print(json.dumps(delays))  # (sent, arrived) of each datagram
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


# --------------------------------------------------------------------------------- farm

def farm_world(work: Path, count: int, rate: int = 50) -> tuple[demo.OeWorld, list[str]]:
    """dns, alice (initiator) and farm (the N peers) on one bridge; keys, signed zones,
    anchors and oe.conf as `oe demo` makes them."""
    world = World("oesf", work).open()
    knotd = None
    try:
        hosts = {name: world.host(name, f"192.0.2.{octet}/24", f"2001:db8::{octet}/64")
                 for name, octet in (("dns", 53), ("alice", 10), ("farm", 20))}
        peers = [str(FARM_NET.network_address + 1 + n) for n in range(count)]
        batch = work / "farm.batch"
        batch.write_text("".join(f"address add {p}/128 dev eth0 nodad\n" for p in peers))
        world.run(hosts["farm"], "ip", "-batch", str(batch), timeout=300)
        world.run(hosts["alice"], "ip", "-6", "route", "add", str(FARM_NET), "via",
                  "2001:db8::20")
        blobs = {name: hostkey.public_blob(hostkey.keygen(
                 hostkey.hostkey_path(hosts[name].dir / "conf"), force=True))
                 for name in ("alice", "farm")}
        origins = (demo.REVERSE_ZONES[1], FARM_ZONE)
        zones = demo.zone_texts(blobs, origins=origins,
                                addresses={"alice": ("2001:db8::10",), "farm": tuple(peers)})
        knotd = Knotd(hosts["dns"].dir / "knot", zones, listen=[(NS6, 53)],
                      prefix=("ip", "netns", "exec", hosts["dns"].name),
                      signing={origin: NSEC for origin in origins})
        knotd.start(wait=120, ready=knotd.signed)
        anchors = "".join(knotd.anchor(origin) for origin in origins)
        room = count + 100
        limits = {"alice": f"[limits]\nacquire_rate = {rate}.0\nacquire_burst = {rate}\n"
                           f"holds = {room}\nqueued_acquires = {room}\n",
                  "farm": f"[limits]\nhalf_open = {room}\n"}
        for name in ("alice", "farm"):
            confdir = hosts[name].dir / "conf"
            demo.policy_conf(confdir, NS6, {"private-or-clear": "::/0\n"}, limits[name])
            (confdir / demo.ANCHORS).write_text(anchors)
            with open(confdir / "oe.conf", "a") as conf:
                conf.write(f'trust_anchors = ["{demo.ANCHORS}"]\n')
        return demo.OeWorld(world, hosts, knotd), peers
    except BaseException:
        if knotd is not None:
            knotd.stop()
        world.close()
        raise


def rss(pid: int) -> int:
    """Resident bytes of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def classifier_rate(peers: list[str]) -> float:
    """Lookups per second of the compiled classifier over alice's table with one /128 SA per
    peer beside her policy (private-or-clear ::/0), packets to those peers."""
    from oe.datapath import Classifier
    from oe.eroute import Eroute, ErouteTable, SaAction, Selector, Shunt
    from test_classifier import pack

    me = ipaddress.ip_address("2001:db8::10")
    entries = [Eroute(Selector(ipaddress.ip_network("::/0"), ipaddress.ip_network("::/0")),
                      Shunt.TRAP)]
    entries += [Eroute(Selector(ipaddress.ip_network(me), ipaddress.ip_network(peer)),
                       SaAction(ipaddress.ip_address(peer), 0x1000 + n, n + 1))
                for n, peer in enumerate(peers)]
    classifier = Classifier(ErouteTable(entries))
    packets = [(me, ipaddress.ip_address(peers[n % len(peers)]), 17, 4000, 9)
               for n in range(200_000)]
    blob, out = pack(packets), eroute.array.array("i", [0]) * len(packets)
    return eroute.rate(lambda: classifier.lookup_many(blob, out), len(packets))


def farm(counts: list[int], rate: int) -> None:
    print(f"{'N':>7} {'all up':>9} {'peers/s':>8} {'first p50':>10} {'first p99':>10} "
          f"{'RSS alice':>10} {'RSS farm':>9} {'per peer':>9} {'CPU/neg':>9} "
          f"{'lookups/s':>12}")
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="oe-farm-") as work:
            world, peers = farm_world(Path(work), count, rate)
            try:
                for name in ("alice", "farm"):
                    demo.start_oe(world, name)
                time.sleep(SETTLE)
                pids = {name: world.daemons[name].pid for name in ("alice", "farm")}
                before = {name: (rss(pid), cpu(pid)) for name, pid in pids.items()}
                alice, farm_host = world.hosts["alice"], world.hosts["farm"]
                receiver = subprocess.Popen(
                    ["ip", "netns", "exec", farm_host.name, sys.executable, "-c", RECEIVER,
                     str(PORT), str(count), str(count / rate + 60)],
                    stdout=subprocess.PIPE, text=True)
                receiver.stdout.readline()
                start = time.time()
                world.world.run(alice, sys.executable, "-c", SENDER, peers[0], str(count),
                                str(PORT), str(rate), timeout=count / rate + 600)
                out, _ = receiver.communicate(timeout=3600)
                times = json.loads(out)
                delays = [arrived - sent for sent, arrived in times]
                took = max(arrived for _, arrived in times) - start if times else float("nan")
                after = {name: (rss(pid), cpu(pid)) for name, pid in pids.items()}
                status = json.loads(demo.oe_cmd(world, "alice", "status", "--json").stdout)
            finally:
                for name in list(world.daemons):
                    demo.stop_oe(world, name)
                world.close()
        grown = sum(after[n][0] - before[n][0] for n in pids)
        spent = sum(after[n][1] - before[n][1] for n in pids)
        print(f"{count:>7,} {took:>8.1f}s {len(delays) / took:>8.0f} "
              f"{ms(percentile(delays, 0.5)):>10} {ms(percentile(delays, 0.99)):>10} "
              f"{after['alice'][0] / 2**20:>8.0f}MB {after['farm'][0] / 2**20:>7.0f}MB "
              f"{grown / count / 1024:>7.1f}kB {spent / count * 1e3:>7.2f}ms "
              f"{classifier_rate(peers):>12,.0f}")
        shunted = [shunt["reason"] for shunt in status.get("shunts", [])]
        if len(delays) < count or shunted:
            print(f"        ({count - len(delays)} datagrams never arrived; alice holds "
                  f"{len(status.get('sas', []))} SAs and {len(shunted)} failure shunts"
                  + "".join(f"; {n} x {why}" for why, n in Counter(shunted).most_common(3))
                  + ")")


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
    world.world.run(alice, sys.executable, "-c", SENDER, NOKEY_NET, str(count), str(PORT),
                    str(SEND_RATE), timeout=600)
    ping = world.world.run(alice, "ping", "-c", "1", "-W", "60", bob.address, check=False,
                           timeout=90).stdout
    out, _ = receiver.communicate(timeout=120)
    keyed = float(ping.split("time=")[1].split()[0]) / 1e3 if "time=" in ping else float("nan")
    return [arrived - sent for sent, arrived in json.loads(out)], keyed


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
    parser.add_argument("--parts", default="farm,latency,nokey")
    parser.add_argument("--farm", default="100,1000,10000")
    parser.add_argument("--rate", type=int, default=50,
                        help="alice's [limits] acquire_rate and acquire_burst in the farm")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--nokey", default="100,1000")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/scale.py needs root (network namespaces)")
    parts = args.parts.split(",")
    if "farm" in parts:
        farm([int(n) for n in args.farm.split(",")], args.rate)
    if "latency" in parts:
        latency(args.trials)
    if "nokey" in parts:
        nokey([int(n) for n in args.nokey.split(",")])


if __name__ == "__main__":
    main()
