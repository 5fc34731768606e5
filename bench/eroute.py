"""Eroute classifier lookups per second: compiled (oe.datapath) beside the naive model.

Not a test: prints figures and ratios measured in this run. Usage: python bench/eroute.py

Two kinds of table, each with 10, 1,000 and 100,000 entries, half IPv4 and half IPv6:
- "oe-like": what a host running OE holds: policy CIDRs from any source (lengths /0 to /32 in
  steps of 4, /0 to /128 in steps of 16 for IPv6) and host-to-host /32 (/128) holds and SAs;
- "random": prefixes of any length on both sides (the tests' generator), the worst case for a
  tuple-space search, which probes one hash table per distinct (srcbits, dstbits) pair.
"Cold" lookups are 200,000 distinct 5-tuples (the flow cache misses); "warm" ones repeat 1,000
flows, as on a host with a few busy connections.

Then the cost of one table change (a /32 %hold added, then removed, as the daemon does per
acquire and per shunt) at 100 and 10,000 entries: Classifier.update() with the one eroute,
beside replace() with the whole table (what every change cost before issue 10, 6).
"""

from __future__ import annotations

import array
import ipaddress
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_classifier import pack, random_packet, random_table  # noqa: E402

from oe.datapath import Classifier  # noqa: E402
from oe.eroute import Eroute, ErouteTable, SaAction, Selector, Shunt  # noqa: E402

SIZES = (10, 1_000, 100_000)
PACKETS = 200_000
FLOWS = 1_000


def oe_like_table(rng: random.Random, version: int, size: int) -> ErouteTable:
    width, step = (32, 4) if version == 4 else (128, 16)
    base = int(ipaddress.ip_network("192.0.0.0/8" if version == 4 else "2001:db8::/32")
               .network_address)
    spread = 24 if version == 4 else 96
    eroutes = []
    for _ in range(size):
        if rng.random() < 0.5:
            dst = ipaddress.ip_network((base | rng.getrandbits(spread),
                                        rng.randrange(0, width + 1, step)), strict=False)
            eroutes.append(Eroute(Selector(Selector.any_source(version), dst),
                                  rng.choice([Shunt.TRAP, Shunt.PASS, Shunt.REJECT])))
        else:
            src = ipaddress.ip_network((base | rng.getrandbits(spread), width))
            dst = ipaddress.ip_network((base | rng.getrandbits(spread), width))
            action = (SaAction(dst.network_address, rng.getrandbits(32), rng.getrandbits(32))
                      if rng.random() < 0.7 else Shunt.HOLD)
            eroutes.append(Eroute(Selector(src, dst), action))
    return ErouteTable(eroutes)


def rate(fn, count: int, min_time: float = 0.5) -> float:
    """Lookups per second of fn() doing `count` lookups, best of a few runs."""
    best = float("inf")
    spent = 0.0
    while spent < min_time:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        spent += elapsed
    return count / best


def measure(name: str, make, rng: random.Random) -> None:
    for size in SIZES:
        table = ErouteTable(make(rng, 4, size // 2).entries + make(rng, 6, size - size // 2).entries)
        classifier = Classifier(table)
        cold = [random_packet(rng, rng.choice((4, 6)), table) for _ in range(PACKETS)]
        flows = cold[:FLOWS]
        warm = [flows[rng.randrange(FLOWS)] for _ in range(PACKETS)]
        out = array.array("i", [0]) * PACKETS
        cold_blob, warm_blob = pack(cold), pack(warm)
        naive_n = max(200, min(20_000, 2_000_000 // size))
        naive = rate(lambda: [table.lookup(*p) for p in cold[:naive_n]], naive_n, 0.3)
        cold_rate = rate(lambda: classifier.lookup_many(cold_blob, out), PACKETS)
        warm_rate = rate(lambda: classifier.lookup_many(warm_blob, out), PACKETS)
        print(f"{name:<9} {size:>8} {naive:>12,.0f}/s {cold_rate:>14,.0f}/s "
              f"{warm_rate:>14,.0f}/s {cold_rate / naive:>10,.0f}x {warm_rate / naive:>10,.0f}x")


def change_cost(rng: random.Random) -> None:
    print(f"\n{'entries':>8} {'update(), one eroute':>22} {'replace(), whole table':>24}")
    for size in (100, 10_000):
        table = oe_like_table(rng, 4, size)
        classifier = Classifier(table)
        holds = [Eroute(Selector(ipaddress.ip_network(f"192.0.2.{n % 250}/32"),
                                 ipaddress.ip_network(f"198.51.{n // 250}.{n % 250}/32")),
                        Shunt.HOLD) for n in range(2000)]
        start = time.perf_counter()
        for hold in holds:
            classifier.update(add=[hold])
            classifier.update(remove=[hold.selector])
        incremental = (time.perf_counter() - start) / (2 * len(holds))
        rounds = 20
        start = time.perf_counter()
        for hold in holds[:rounds]:
            classifier.replace(table.replace(hold))
            classifier.replace(table)
        full = (time.perf_counter() - start) / (2 * rounds)
        print(f"{size:>8} {incremental * 1e6:>19,.1f} us {full * 1e6:>21,.1f} us")


def main() -> None:
    rng = random.Random(1)
    print(f"{'table':<9} {'entries':>8} {'naive model':>14} {'compiled, cold':>16} "
          f"{'compiled, warm':>16} {'cold/naive':>11} {'warm/naive':>11}")
    measure("oe-like", oe_like_table, rng)
    measure("random", random_table, rng)
    change_cost(rng)


if __name__ == "__main__":
    main()
