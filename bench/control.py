"""The cost of one control-plane event with many shunts standing (issue 10, defect 6).

A host with private-or-clear 0.0.0.0/0 meets N addresses without keys: N failure shunts. Then
one more acquire fails (the everyday event). Measured per event, in one run:

- incremental: Opportunist.acquire + key_found, take_changes(), Datapath.update_eroutes() with
  what changed (what the daemon does now);
- whole table: the same decisions, then table() and replace_eroutes() with all of it (what
  every event cost before).

The datapath is real (the compiled classifier) but not started: no TUN, no threads, no root.
"""

from __future__ import annotations

import ipaddress
import time

from oe.datapath import Datapath
from oe.dnskeys.choice import Target, not_capable
from oe.flows import Pair
from oe.opportunist import Limits, Opportunist
from oe.policygroups import combine, parse_group, prospective_table

ME = ipaddress.ip_address("192.0.2.10")
EVENTS = 200


def address(n: int) -> ipaddress.IPv4Address:
    return ipaddress.ip_address(int(ipaddress.ip_address("10.0.0.0")) + n)


def fail(oe: Opportunist, n: int, now: float) -> None:
    pair = Pair(ME, address(n))
    oe.acquire(pair, now)
    oe.key_found(pair, not_capable(Target.parse(str(pair.dst)), "no key"), now)


def world(shunts: int) -> tuple[Opportunist, Datapath]:
    policy = combine([parse_group("private-or-clear", "0.0.0.0/0\n", "policies/p-o-c")])
    oe = Opportunist(prospective_table(policy), Limits(acquire_burst=10**9, max_shunts=10**9))
    for n in range(shunts):
        fail(oe, n, 0.0)
    datapath = Datapath()
    datapath.replace_eroutes(oe.table())
    oe.take_changes()
    return oe, datapath


def per_event(shunts: int, incremental: bool) -> float:
    oe, datapath = world(shunts)
    start = time.perf_counter()
    for n in range(shunts, shunts + EVENTS):
        fail(oe, n, 1.0)
        changes = oe.take_changes()
        if incremental:
            datapath.update_eroutes(*changes)
        else:
            datapath.replace_eroutes(oe.table())
    return (time.perf_counter() - start) / EVENTS


def main() -> None:
    print(f"{'shunts':>8} {'incremental':>14} {'whole table':>14} {'ratio':>8}")
    for shunts in (100, 1_000, 10_000):
        fast, slow = per_event(shunts, True), per_event(shunts, False)
        print(f"{shunts:>8,} {fast * 1e3:>11.3f} ms {slow * 1e3:>11.3f} ms {slow / fast:>7,.0f}x")


if __name__ == "__main__":
    main()
