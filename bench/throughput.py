"""Tunnel throughput and latency: plain veth, oe (its datapath alone and the whole product),
strongSwan kernel-libipsec and wireguard-go.

Not a test: prints figures measured in this run and the ratios of oe to each reference.
Needs root, iperf3, strongSwan (charon, swanctl, libcharon-extra-plugins) and, for `wg`,
wireguard-go and wireguard-tools (bookworm-backports' wireguard-go has the TUN and UDP
offloads: the one to measure against; not a project dependency). Usage:

    python bench/throughput.py [--seconds 8] [--only plain,oe,oeesp,oed,oedudp,swan,wg]
                               [--bridge]

Each setup is two fresh network namespaces joined by one veth pair (with --bridge, through a
bridge in a third namespace, as in `oe demo`'s world; unique names, removed at the end),
198.51.100.1 <-> 198.51.100.2:
  plain  the veth alone;
  oe     tests/netns/esp_node.py in each namespace: AES-128-GCM, ESP-in-UDP 4500, static keys
         (the datapath alone);
  oeesp  the same with raw ESP (IP protocol 50), what OE negotiates where no NAT is;
  oed    the product: `oe start` on alice and bob of `oe demo`'s world (knotd with signed
         zones, private-or-clear 0.0.0.0/0), the SA negotiated by OE on the first packet (IKEv2,
         keys from DNS, DNSSEC-validated); alice and bob meet through a bridge, not one veth;
         no NAT, so raw ESP (oe.conf [esp] encapsulation = "auto", the default);
  oedudp the product with [esp] encapsulation = "udp" on both: ESP-in-UDP as in `oe`;
  swan   charon 5.9 with kernel-libipsec in each namespace (a TUN, userspace ESP, always
         ESP-in-UDP), IKEv2 with raw RSA keys and esp_proposals = aes128gcm16, as in
         shared/anchors/swan-pair.sh, initiated explicitly (5.9.8 raises no acquires);
  wg     wireguard-go in each namespace as in shared/anchors/wg-pair.sh (ChaCha20-Poly1305,
         TUN mtu 1420), measured between the tunnel addresses 203.0.113.1 -> 203.0.113.2.
Measured in each: iperf3 TCP, one stream and 4 parallel streams; iperf3 UDP, 1400-byte
datagrams, unlimited rate with a 4 MiB socket buffer (what arrives counts); ping RTT (50 pings,
20 ms apart).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "tests" / "netns" / "esp_node.py"
sys.path.insert(0, str(NODE.parent))

from charon import Charon  # noqa: E402  (tests/netns/charon.py: charon in a namespace)
A, B = "198.51.100.1", "198.51.100.2"
WG_A, WG_B = "203.0.113.1", "203.0.113.2"
TAG = f"{os.getpid() % 100000}"
BRIDGE = False
"""--bridge: the two namespaces meet through a bridge in a third, as in `oe demo`'s world."""


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, **kw)


def in_ns(ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *args, **kw)


@contextmanager
def namespaces(name: str):
    """Two namespaces and a veth pair (with BRIDGE, a veth pair from each to a bridge in a
    third namespace); yields (a, b)."""
    a, b, s = f"tp{name}a{TAG}", f"tp{name}b{TAG}", f"tp{name}s{TAG}"
    va, vb = f"tp{name}va{TAG}"[:15], f"tp{name}vb{TAG}"[:15]
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        if BRIDGE:
            sh("ip", "netns", "add", s)
            sh("ip", "-n", s, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", s, "link", "set", "br0", "up")
            for ns, dev, port in ((a, va, "pa"), (b, vb, "pb")):
                sh("ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port,
                   "netns", s)
                sh("ip", "-n", s, "link", "set", port, "master", "br0", "up")
        else:
            sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb,
               "netns", b)
        for ns, dev, addr in ((a, va, A), (b, vb, B)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            in_ns(ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2")
        yield a, b
    finally:
        for ns in (a, b, s):
            sh("ip", "netns", "del", ns, check=False)


@contextmanager
def processes():
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# ------------------------------------------------------------------------------ setups

@contextmanager
def plain():
    with namespaces("p") as (a, b):
        yield a, b, B


@contextmanager
def oe(encap: str = "udp", threads: int = 2):
    """The datapath alone; threads=1: one loop thread for both directions (bench/rtt_floor.py)."""
    key_ab, key_ba = os.urandom(20).hex(), os.urandom(20).hex()
    with namespaces("o") as (a, b), processes() as procs, tempfile.TemporaryDirectory() as work:
        for ns, me, peer, out_key, in_key in ((a, A, B, key_ab, key_ba), (b, B, A, key_ba, key_ab)):
            spi_out, spi_in = (0x1001, 0x2001) if ns == a else (0x2001, 0x1001)
            config = {
                "mtu": 1500 - 65, "threads": threads, "addresses": [me],
                "trap": [f"{peer}/32"],
                "sas": [{"spi": spi_out, "direction": "out", "key": out_key, "local": me,
                         "peer": peer, "encap": encap},
                        {"spi": spi_in, "direction": "in", "key": in_key, "local": me,
                         "peer": peer, "encap": encap}],
                "eroutes": [[f"{peer}/32", {"spi": spi_out, "peer": peer}]],
            }
            path = Path(work) / f"{ns}.json"
            path.write_text(json.dumps(config))
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(NODE),
                                     str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
            procs.append(proc)
            if "ready" not in proc.stdout.readline():
                raise RuntimeError(f"esp_node did not start in {ns}")
        yield a, b, B


@contextmanager
def oe_daemons(encapsulation: str = "auto"):
    """`oe demo`'s world with oe started on alice and bob; the first ping negotiates the SA
    (encapsulation: oe.conf [esp] encapsulation on both)."""
    from oe import demo

    conf = {name: f'[esp]\nencapsulation = "{encapsulation}"\n' for name in ("alice", "bob")}
    with tempfile.TemporaryDirectory(prefix="oe-bench-") as work:
        world = demo.build(Path(work), conf=conf)
        try:
            for name in ("alice", "bob"):
                demo.start_oe(world, name)
            alice, bob = world.hosts["alice"], world.hosts["bob"]
            in_ns(alice.name, "ping", "-c", "2", "-W", "5", bob.address, check=False)
            yield alice.name, bob.name, bob.address
        finally:
            for name in list(world.daemons):
                demo.stop_oe(world, name)
            world.close()


@contextmanager
def swan():
    """charon + kernel-libipsec in each namespace (tests/netns/charon.py), IKE initiated by a."""
    with namespaces("s") as (a, b), tempfile.TemporaryDirectory() as work:
        keys = {ns: rsa.generate_private_key(public_exponent=65537, key_size=2048)
                for ns in (a, b)}
        charons = []
        try:
            for ns, me, peer, other in ((a, A, B, b), (b, B, A, a)):
                charon = Charon(ns, Path(work) / ns, me=me, peer=peer, key=keys[ns],
                                peer_key=keys[other])
                charons.append(charon)
                charon.start()
            charons[0].swanctl("--initiate", "--child", "hh")
            yield a, b, B
        finally:
            for charon in charons:
                charon.stop()


@contextmanager
def wg():
    """wireguard-go in each namespace (as shared/anchors/wg-pair.sh), peers on the veth."""
    keys = [sh("wg", "genkey").stdout.strip() for _ in range(2)]
    pubs = [sh("wg", "pubkey", input=key).stdout.strip() for key in keys]
    with namespaces("w") as (a, b), processes() as procs:
        sides = ((a, keys[0], pubs[1], B, WG_A), (b, keys[1], pubs[0], A, WG_B))
        for i, (ns, key, peer_pub, peer, inner) in enumerate(sides):
            # wireguard-go's UAPI socket is named by the device, not per namespace: unique names
            dev = f"wg{'ab'[i]}{TAG}"
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "wireguard-go", dev],
                                          env={**os.environ, "WG_PROCESS_FOREGROUND": "1"},
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            for _ in range(50):
                if sh("ip", "-n", ns, "link", "show", dev, check=False).returncode == 0:
                    break
                time.sleep(0.1)
            in_ns(ns, "wg", "set", dev, "private-key", "/dev/stdin", "listen-port", "51820",
                  "peer", peer_pub, "endpoint", f"{peer}:51820", "allowed-ips", "203.0.113.0/24",
                  input=key)
            sh("ip", "-n", ns, "addr", "add", f"{inner}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "mtu", "1420", "up")
        yield a, b, WG_B


SETUPS = {"plain": plain, "oe": oe, "oeesp": functools.partial(oe, encap="esp"),
          "oed": oe_daemons, "oedudp": functools.partial(oe_daemons, encapsulation="udp"),
          "swan": swan, "wg": wg}
TITLES = {"plain": "plain veth", "oe": "oe datapath (static keys)",
          "oeesp": "oe datapath, raw ESP", "oed": "oe daemons (OE), default",
          "oedudp": "oe daemons, encap udp", "swan": "strongSwan libipsec",
          "wg": "wireguard-go"}
REFERENCES = ("swan", "wg", "plain")


# ---------------------------------------------------------------------------- measures

def iperf(a: str, b: str, server_addr: str, seconds: int, udp: bool,
          streams: int = 1) -> tuple[float, str]:
    server = subprocess.Popen(["ip", "netns", "exec", b, "iperf3", "-s", "-1", "-B",
                               server_addr],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        args = ["iperf3", "-c", server_addr, "-t", str(seconds), "-J", "-P", str(streams)]
        if udp:
            # A deep receive buffer, so the count is what the tunnel delivers rather than
            # what a busy iperf3 server found time to read.
            args += ["-u", "-l", "1400", "-b", "0", "-w", "4M"]
        result = in_ns(a, *args, check=False, timeout=seconds + 30)
        data = json.loads(result.stdout)
        if "error" in data:
            return 0.0, data["error"]
        end = data["end"]
        if udp:
            summary = end.get("sum_received") or end["sum"]
            lost = end["sum"].get("lost_percent", 0.0)
            return summary["bits_per_second"] / 1e6, f"{lost:.1f} % lost"
        retransmits = end["sum_sent"].get("retransmits", 0)
        return end["sum_received"]["bits_per_second"] / 1e6, f"{retransmits} retransmits"
    finally:
        server.wait(timeout=seconds + 30) if server.poll() is None else None


def ping_rtt(a: str, server_addr: str) -> float:
    in_ns(a, "ping", "-c", "3", "-W", "2", server_addr, check=False)      # warm up (ARP, SAs)
    result = in_ns(a, "ping", "-c", "50", "-i", "0.02", "-W", "2", server_addr, check=False)
    for line in result.stdout.splitlines():
        if "min/avg/max" in line:
            return float(line.split("=")[1].split("/")[1])
    return float("nan")


def measure(name: str, seconds: int) -> dict:
    with SETUPS[name]() as (a, b, server_addr):
        rtt = ping_rtt(a, server_addr)
        tcp, tcp_note = iperf(a, b, server_addr, seconds, udp=False)
        tcp4, tcp4_note = iperf(a, b, server_addr, seconds, udp=False, streams=4)
        udp, udp_note = iperf(a, b, server_addr, seconds, udp=True)
    return {"tcp": tcp, "tcp_note": tcp_note, "tcp4": tcp4, "tcp4_note": tcp4_note,
            "udp": udp, "udp_note": udp_note, "rtt": rtt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--only", default=",".join(SETUPS))
    parser.add_argument("--bridge", action="store_true",
                        help="join the namespaces through a bridge, as oed's world does")
    args = parser.parse_args()
    global BRIDGE
    BRIDGE = args.bridge
    if os.geteuid() != 0:
        sys.exit("bench/throughput.py needs root (network namespaces)")
    results = {}
    for name in args.only.split(","):
        print(f"measuring {TITLES[name]} ...", file=sys.stderr, flush=True)
        results[name] = measure(name, args.seconds)
    print(f"{'setup':<27}{'TCP Mbit/s':>11} {'':<17}{'TCP x4':>8} {'':<17}"
          f"{'UDP 1400 B':>11} {'':<12}{'RTT ms':>8}")
    for name, r in results.items():
        print(f"{TITLES[name]:<27}{r['tcp']:>11.0f} {r['tcp_note']:<17}{r['tcp4']:>8.0f} "
              f"{r['tcp4_note']:<17}{r['udp']:>11.0f} {r['udp_note']:<12}{r['rtt']:>8.3f}")
    for mine in ("oe", "oeesp", "oed", "oedudp"):
        for ref in REFERENCES + (("oe",) if mine != "oe" else ()):
            if mine in results and ref in results:
                m, r = results[mine], results[ref]
                print(f"{mine}/{ref}: TCP x{ratio(m['tcp'], r['tcp'])}, "
                      f"TCP x4 x{ratio(m['tcp4'], r['tcp4'])}, UDP x{ratio(m['udp'], r['udp'])}, "
                      f"RTT {m['rtt'] - r['rtt']:+.3f} ms")


def ratio(mine: float, ref: float) -> str:
    return f"{mine / ref:.2f}" if ref else "-"


if __name__ == "__main__":
    main()
