"""One oe datapath with static keys (no IKE), run inside a network namespace.

    ip netns exec NS python tests/netns/esp_node.py CONFIG.json

CONFIG: {"tun": "oe0", "mtu": 1435, "mark": 66, "table": 100, "priority": 100,
         "trap": ["198.51.100.2/32", ...],          # CIDRs routed into the TUN
         "addresses": ["198.51.100.1", "2001:db8::1"],  # where the UDP 4500 sockets bind
         "sas": [{"spi": .., "direction": "out", "key": "<hex>", "local": .., "peer": .., ...}],
         "eroutes": [["198.51.100.2/32", "%trap"], ["198.51.100.3/32", {"spi": .., "peer": ..}],
                     ["198.51.100.0/24", "%pass", "198.51.100.1/32"]]}   # dst, action[, src]

Prints {"ready": true} once the loops run, then every datapath event as one JSON line. Reads
JSON commands, one per line, on stdin: {"eroutes": [...]}, {"add_sa": {...}}, {"stats": true},
{"update": {"add": [...], "remove": [[dst, src], ...]}}, {"quit": true}. Used by
tests/netns/test_datapath_netns.py and bench/throughput.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import selectors
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from oe import net, routing, tun  # noqa: E402
from oe.datapath import Datapath, SaSpec  # noqa: E402
from oe.eroute import Eroute, ErouteTable, SaAction, Selector, Shunt  # noqa: E402


def table_of(rows: list, handles: dict) -> ErouteTable:
    """Eroutes name an outbound SA by SPI and peer: `handles` maps those to add_sa()'s handle
    (static keys: the test gives each pair one SA)."""
    eroutes = []
    for row in rows:
        dst = ipaddress.ip_network(row[0])
        src = ipaddress.ip_network(row[2]) if len(row) > 2 else Selector.any_source(dst.version)
        action = row[1]
        if isinstance(action, dict):
            peer = ipaddress.ip_address(action["peer"])
            action = SaAction(peer, action["spi"], handles.get((action["spi"], peer), 0))
        else:
            action = Shunt(action)
        eroutes.append(Eroute(Selector(src, dst), action))
    return ErouteTable(eroutes)


def add_sa(dp: Datapath, sa: dict, handles: dict) -> None:
    """{"spi", "direction", "key" (hex), ...}: the fields of an SaSpec, as JSON."""
    pairs = {k: tuple(v) for k, v in sa.items() if isinstance(v, list)}   # JSON has no tuples
    spec = SaSpec(**{**sa, **pairs, "key": bytes.fromhex(sa["key"])})
    handle = dp.add_sa(spec)
    if spec.direction == "out":
        handles[spec.spi, spec.peer] = handle


def say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    name, mark = config.get("tun", "oe0"), config.get("mark", 0x42)
    fd = tun.open_tun(name)
    tun.set_up(name, config["mtu"])
    sockets, fds = [], {}
    for address in config["addresses"]:
        family = socket.AF_INET if ipaddress.ip_address(address).version == 4 else socket.AF_INET6
        suffix = "4" if family == socket.AF_INET else "6"
        sockets += [net.udp_socket(family, address, 4500, mark),
                    net.raw_socket(family, 50, mark),
                    net.raw_socket(family, socket.IPPROTO_RAW, mark)]
        fds.update({f"udp{suffix}": sockets[-3].fileno(), f"esp{suffix}": sockets[-2].fileno(),
                    f"pass{suffix}": sockets[-1].fileno()})
    dp = Datapath()
    handles: dict = {}
    for sa in config.get("sas", []):
        add_sa(dp, sa, handles)
    dp.replace_eroutes(table_of(config.get("eroutes", []), handles))
    dp.start(fd, tun_mtu=config["mtu"], threads=config.get("threads", 2), **fds)
    steering = routing.install(name, config["trap"], [], table=config.get("table", 100),
                               priority=config.get("priority", 100), mark=mark)
    say({"ready": True})
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    sel.register(dp.events_fd, selectors.EVENT_READ, "events")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "events":
                    for event in dp.read_events():
                        say({"event": type(event).__name__, **dataclasses.asdict(event)})
                    continue
                line = sys.stdin.readline()
                if not line:
                    return
                command = json.loads(line)
                if "add_sa" in command:
                    add_sa(dp, command["add_sa"], handles)
                if "eroutes" in command:
                    dp.replace_eroutes(table_of(command["eroutes"], handles))
                if "update" in command:
                    update = command["update"]
                    remove = [Selector(ipaddress.ip_network(src), ipaddress.ip_network(dst))
                              for dst, src in update.get("remove", [])]
                    dp.update_eroutes(table_of(update.get("add", []), handles).entries, remove)
                if "stats" in command:
                    say({"stats": dp.stats(), "sas": dp.sas(),
                         "eroutes": len(dp.classifier.table),
                         "holds": [[str(s), str(d), n] for s, d, n in dp.holds()]})
                if "quit" in command:
                    return
    finally:
        dp.stop()
        routing.remove(steering)
        for sock in sockets:
            sock.close()
        os.close(fd)


if __name__ == "__main__":
    main()
