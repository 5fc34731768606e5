"""Ping RTT: plain veth, a forwarder with no crypto (bench/tunfwd.c), oe's datapath; at two
ping intervals.

Not a test: prints figures measured in this run (the README's "Tunnel throughput" note on RTT).
The forwarder has oe's wake-ups (poll, then read, per direction) and nothing else: what it
adds over the plain veth is the floor a TUN + UDP datapath can reach on this machine. Needs
root and a C compiler. Usage:

    python bench/rtt_floor.py [--count 200] [--intervals 0.001,0.02] [--rounds 2]

Each setup is two fresh namespaces on one veth pair (bench/throughput.py), set up anew for each
round, measured in turn so that a drift in the machine's load touches all alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput as tp  # noqa: E402  (bench/throughput.py: namespaces and the oe setup)

SOURCE = Path(__file__).resolve().parent / "tunfwd.c"
INNER_A, INNER_B = "203.0.113.1", "203.0.113.2"


@contextmanager
def forwarder(binary: str, threads: int):
    """tunfwd in each namespace: inner addresses on a TUN, carried in UDP over the veth."""
    with tp.namespaces("f") as (a, b), tp.processes() as procs:
        for ns, me, peer, inner, other in ((a, tp.A, tp.B, INNER_A, INNER_B),
                                           (b, tp.B, tp.A, INNER_B, INNER_A)):
            proc = subprocess.Popen(["ip", "netns", "exec", ns, binary, "tf0", me, peer,
                                     str(threads)], stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            if "ready" not in proc.stdout.readline():
                raise RuntimeError(f"tunfwd did not start in {ns}")
            tp.sh("ip", "-n", ns, "addr", "add", f"{inner}/32", "dev", "tf0")
            tp.sh("ip", "-n", ns, "link", "set", "tf0", "mtu", "1400", "up")
            tp.sh("ip", "-n", ns, "route", "add", f"{other}/32", "dev", "tf0", "src", inner)
        yield a, b, INNER_B


def rtts(ns: str, addr: str, count: int, interval: float) -> list[float]:
    """Each echo's RTT in ms, sorted."""
    tp.in_ns(ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", addr, check=False)  # ARP, caches
    out = tp.in_ns(ns, "ping", "-c", str(count), "-i", str(interval), "-W", "2", addr,
                   check=False).stdout
    return sorted(float(line.split("time=")[1].split()[0])
                  for line in out.splitlines() if "time=" in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--intervals", default="0.001,0.02")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/rtt_floor.py needs root (network namespaces)")
    intervals = [float(i) for i in args.intervals.split(",")]
    with tempfile.TemporaryDirectory() as work:
        binary = str(Path(work) / "tunfwd")
        tp.sh("cc", "-O2", "-pthread", "-o", binary, str(SOURCE))
        setups = {"plain veth": tp.plain,
                  "forwarder, 2 threads": lambda: forwarder(binary, 2),
                  "forwarder, 1 thread": lambda: forwarder(binary, 1),
                  "oe datapath, 2 threads": lambda: tp.oe(threads=2),
                  "oe datapath, 1 thread": lambda: tp.oe(threads=1)}
        samples: dict[tuple[str, float], list[float]] = {}
        for _ in range(args.rounds):
            for name, setup in setups.items():
                print(f"measuring {name} ...", file=sys.stderr, flush=True)
                with setup() as (a, _b, addr):
                    for interval in intervals:
                        samples.setdefault((name, interval), []).extend(
                            rtts(a, addr, args.count, interval))
    print(f"{'setup':<25}{'interval':>9}{'median ms':>11}{'p90 ms':>8}{'min ms':>8}"
          f"{'+median':>9}")
    for (name, interval), values in samples.items():
        values.sort()
        median = statistics.median(values)
        base = statistics.median(samples["plain veth", interval])
        print(f"{name:<25}{interval * 1000:>7g}ms{median:>11.3f}"
              f"{values[int(0.9 * (len(values) - 1))]:>8.3f}{values[0]:>8.3f}"
              f"{median - base:>+9.3f}")


if __name__ == "__main__":
    main()
