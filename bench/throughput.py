"""Tunnel throughput and latency: plain veth, oe's datapath, strongSwan kernel-libipsec.

Not a test: prints figures measured in this run and the ratios oe/strongSwan and oe/plain.
Needs root, iperf3 and strongSwan (charon, swanctl, libcharon-extra-plugins). Usage:

    python bench/throughput.py [--seconds 8] [--only plain,oe,swan]

Each setup is two fresh network namespaces joined by one veth pair (unique names, removed at
the end), 198.51.100.1 <-> 198.51.100.2:
  plain  the veth alone;
  oe     tests/netns/esp_node.py in each namespace: AES-128-GCM, ESP-in-UDP 4500, static keys;
  swan   charon 5.9 with kernel-libipsec in each namespace (a TUN, userspace ESP, always
         ESP-in-UDP), IKEv2 with raw RSA keys and esp_proposals = aes128gcm16, as in
         shared/anchors/swan-pair.sh, initiated explicitly (5.9.8 raises no acquires).
Measured in each: iperf3 TCP, one stream; iperf3 UDP, 1400-byte datagrams, unlimited rate
with a 4 MiB socket buffer (what arrives counts); ping RTT (50 pings, 20 ms apart).
"""

from __future__ import annotations

import argparse
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
TAG = f"{os.getpid() % 100000}"


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, **kw)


def in_ns(ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *args, **kw)


@contextmanager
def namespaces(name: str):
    """Two namespaces and a veth pair; yields (a, b)."""
    a, b = f"tp{name}a{TAG}", f"tp{name}b{TAG}"
    va, vb = f"tp{name}va{TAG}"[:15], f"tp{name}vb{TAG}"[:15]
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, addr in ((a, va, A), (b, vb, B)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            in_ns(ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2")
        yield a, b
    finally:
        for ns in (a, b):
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
        yield a, b


@contextmanager
def oe():
    key_ab, key_ba = os.urandom(20).hex(), os.urandom(20).hex()
    with namespaces("o") as (a, b), processes() as procs, tempfile.TemporaryDirectory() as work:
        for ns, me, peer, out_key, in_key in ((a, A, B, key_ab, key_ba), (b, B, A, key_ba, key_ab)):
            spi_out, spi_in = (0x1001, 0x2001) if ns == a else (0x2001, 0x1001)
            config = {
                "mtu": 1500 - 65, "addresses": [me], "trap": [f"{peer}/32"],
                "sas": [{"spi": spi_out, "direction": "out", "key": out_key, "local": me,
                         "peer": peer},
                        {"spi": spi_in, "direction": "in", "key": in_key, "local": me,
                         "peer": peer}],
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
        yield a, b


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
            yield a, b
        finally:
            for charon in charons:
                charon.stop()


SETUPS = {"plain": plain, "oe": oe, "swan": swan}
TITLES = {"plain": "plain veth", "oe": "oe AES-128-GCM", "swan": "strongSwan libipsec"}


# ---------------------------------------------------------------------------- measures

def iperf(a: str, b: str, seconds: int, udp: bool) -> tuple[float, str]:
    server = subprocess.Popen(["ip", "netns", "exec", b, "iperf3", "-s", "-1", "-B", B],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        args = ["iperf3", "-c", B, "-t", str(seconds), "-J"]
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


def ping_rtt(a: str) -> float:
    in_ns(a, "ping", "-c", "3", "-W", "2", B, check=False)                # warm up (ARP, SAs)
    result = in_ns(a, "ping", "-c", "50", "-i", "0.02", "-W", "2", B, check=False)
    for line in result.stdout.splitlines():
        if "min/avg/max" in line:
            return float(line.split("=")[1].split("/")[1])
    return float("nan")


def measure(name: str, seconds: int) -> dict:
    with SETUPS[name]() as (a, b):
        rtt = ping_rtt(a)
        tcp, tcp_note = iperf(a, b, seconds, udp=False)
        udp, udp_note = iperf(a, b, seconds, udp=True)
    return {"tcp": tcp, "tcp_note": tcp_note, "udp": udp, "udp_note": udp_note, "rtt": rtt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--only", default="plain,oe,swan")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/throughput.py needs root (network namespaces)")
    results = {}
    for name in args.only.split(","):
        print(f"measuring {TITLES[name]} ...", file=sys.stderr, flush=True)
        results[name] = measure(name, args.seconds)
    print(f"{'setup':<22}{'TCP Mbit/s':>12}  {'':<18}{'UDP 1400 B Mbit/s':>19}  {'':<12}"
          f"{'ping RTT ms':>12}")
    for name, r in results.items():
        print(f"{TITLES[name]:<22}{r['tcp']:>12.0f}  {r['tcp_note']:<18}{r['udp']:>19.0f}  "
              f"{r['udp_note']:<12}{r['rtt']:>12.3f}")
    if "oe" in results:
        oe_r = results["oe"]
        for ref in ("swan", "plain"):
            if ref in results:
                r = results[ref]
                print(f"oe/{ref}: TCP x{oe_r['tcp'] / r['tcp']:.2f}, UDP x{oe_r['udp'] / r['udp']:.2f}, "
                      f"RTT {oe_r['rtt'] - r['rtt']:+.3f} ms")


if __name__ == "__main__":
    main()
