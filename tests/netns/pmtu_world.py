"""A routed world with one small link, for the path MTU tests (issue 17, item 5).

    dns ─┐                      (middle: 1280)
    a ───┴─ br0 ─ r1 ═══════════════ r2 ─ br1 ─ d
      192.0.2.0/24   198.51.100.0/24   203.0.113.0/24
      2001:db8:a::/64  2001:db8:12::/64  2001:db8:d::/64

a and d run oe (private-or-clear 0.0.0.0/0 and ::/0, keys in knotd on dns). The small link is
placed by `place(where, mtu)`: "a" (a–r1), "middle" (r1–r2) or "d" (r2–d); both ends of that
link get the small MTU, every other link 1500. `black_hole(True)` makes both routers drop the
ICMP fragmentation-needed and ICMPv6 packet-too-big they would send or forward (nftables table
`inet pmtu` in r1 and r2): the routers still drop what does not fit, but nobody hears of it.

Built on oe.netns.World (namespaces, processes and their tear-down) and oe.demo (running oe).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from oe import demo, hostkey
from oe.knotd import Knotd
from oe.netns import Host, World, _ip, wait_for

A, A6 = "192.0.2.10", "2001:db8:a::10"
D, D6 = "203.0.113.20", "2001:db8:d::20"
DNS, DNS6 = "192.0.2.53", "2001:db8:a::53"
R1 = {"a": ("192.0.2.1/24", "2001:db8:a::1/64"), "m": ("198.51.100.1/24", "2001:db8:12::1/64")}
R2 = {"m": ("198.51.100.2/24", "2001:db8:12::2/64"), "d": ("203.0.113.1/24", "2001:db8:d::1/64")}
ZONES = ("2.0.192.in-addr.arpa", "113.0.203.in-addr.arpa", "8.b.d.0.1.0.0.2.ip6.arpa")
KEYED = {"a": (A, A6), "d": (D, D6)}
# Each link by placement: its two ends as (host, interface).
LINKS = {"a": (("a", "eth0"), ("r1", "eth0")), "middle": (("r1", "eth1"), ("r2", "eth1")),
         "d": (("r2", "eth0"), ("d", "eth0"))}
BLACK_HOLE = """table inet pmtu {
    chain drop_too_big {
        icmp type destination-unreachable icmp code frag-needed counter drop
        icmpv6 type packet-too-big counter drop
    }
    chain output { type filter hook output priority 0; jump drop_too_big; }
    chain forward { type filter hook forward priority 0; jump drop_too_big; }
}
"""


@dataclass
class PmtuWorld:
    """The world, its knotd and the `oe start` daemons (shaped like oe.demo.OeWorld)."""

    world: World
    hosts: dict[str, Host]
    knotd: Knotd
    daemons: dict

    def confdir(self, name: str) -> Path:
        return self.hosts[name].dir / "conf"

    def rundir(self, name: str) -> Path:
        return self.hosts[name].dir / "run"

    def run(self, name: str, *argv: str, **kwargs):
        return self.world.run(self.hosts[name], *argv, **kwargs)

    def place(self, where: str, mtu: int = 1280) -> None:
        """The small link between these hosts, every other link back at 1500."""
        for link, ends in LINKS.items():
            for host, dev in ends:
                self.run(host, "ip", "link", "set", dev, "mtu", str(mtu if link == where else 1500))

    def black_hole(self, on: bool) -> None:
        """The routers drop (on) or send (off) ICMP fragmentation-needed / packet-too-big."""
        for router in ("r1", "r2"):
            self.run(router, "nft", "delete", "table", "inet", "pmtu", check=False)
            if on:
                self.run(router, "nft", "-f", "-", input=BLACK_HOLE)

    def forget_path_mtus(self) -> None:
        """The kernels' learned path MTUs (route exceptions) are flushed on the end hosts."""
        for host in ("a", "d"):
            for family in ("-4", "-6"):
                self.run(host, "ip", family, "route", "flush", "cache", check=False)

    def icmp_dropped(self) -> dict[str, int]:
        """Per router, the fragmentation-needed / packet-too-big it dropped: proof that it did
        refuse packets too big for the small link."""
        counts = {}
        for router in ("r1", "r2"):
            text = self.run(router, "nft", "list", "table", "inet", "pmtu", check=False).stdout
            counts[router] = sum(int(n) for n in re.findall(r"counter packets (\d+)", text))
        return counts

    def status(self, name: str) -> dict:
        return json.loads(demo.oe_cmd(self, name, "status", "--json").stdout)

    def counters(self, name: str) -> str:
        """What oe says about the path: datapath counters and each SA's size-related fields."""
        if name not in self.daemons:
            return f"{name}: no oe"
        status = self.status(name)
        keys = ("too_big", "mss_clamped", "send_errors", "tun_read", "tun_write")
        datapath = {k: v for k, v in status["datapath"].items() if k in keys or "mtu" in k}
        sas = [{k: v for k, v in sa.items() if k in ("dst", "packets_out", "packets_in",
                                                      "bytes_out", "bytes_in") or "mtu" in k}
               for sa in status["sas"]]
        return f"{name}: datapath {datapath} sas {sas}"

    def close(self) -> None:
        for name in list(self.daemons):
            demo.stop_oe(self, name)
        self.knotd.stop()
        self.world.close()


def build(workdir: Path, oe_on=("a", "d")) -> PmtuWorld:
    """Namespaces, links, routes, keys, zones and knotd; oe started on `oe_on`. Every link is
    1500 and ICMP passes until the test says otherwise."""
    world = World("pm", workdir).open()
    knotd = None
    made = None
    try:
        hosts = {"dns": world.host("dns", f"{DNS}/24", f"{DNS6}/64"),
                 "a": world.host("a", f"{A}/24", f"{A6}/64"),
                 "r1": world.host("r1", *R1["a"]),
                 "r2": world.host("r2", *R2["d"]),
                 "d": world.host("d", f"{D}/24", f"{D6}/64")}
        # r2 and d on a second bridge; r1–r2 a veth pair of their own (the middle link).
        _ip("-n", world.switch, "link", "add", "br1", "type", "bridge")
        _ip("-n", world.switch, "link", "set", "br1", "up")
        for name in ("r2", "d"):
            _ip("-n", world.switch, "link", "set", hosts[name].port, "master", "br1")
        _ip("link", "add", "eth1", "netns", hosts["r1"].name, "type", "veth", "peer", "name",
            "eth1", "netns", hosts["r2"].name)
        for name, ends in (("r1", R1), ("r2", R2)):
            for address in ends["m"]:
                extra = ["nodad"] if ":" in address else []
                _ip("-n", hosts[name].name, "addr", "add", address, "dev", "eth1", *extra)
            _ip("-n", hosts[name].name, "link", "set", "eth1", "up")
            for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
                world.run(hosts[name], "sysctl", "-qw", key)
        routes = {"dns": [("default", "192.0.2.1"), ("default", "2001:db8:a::1")],
                  "a": [("default", "192.0.2.1"), ("default", "2001:db8:a::1")],
                  "d": [("default", "203.0.113.1"), ("default", "2001:db8:d::1")],
                  "r1": [("203.0.113.0/24", "198.51.100.2"), ("2001:db8:d::/64", "2001:db8:12::2")],
                  "r2": [("192.0.2.0/24", "198.51.100.1"), ("2001:db8:a::/64", "2001:db8:12::1")]}
        for name, table in routes.items():
            for prefix, via in table:
                _ip("-n", hosts[name].name, "-6" if ":" in via else "-4", "route", "add", prefix,
                    "via", via)
        blobs = {}
        for name in KEYED:
            key = hostkey.keygen(hostkey.hostkey_path(hosts[name].dir / "conf"), force=True)
            blobs[name] = hostkey.public_blob(key)
            demo.policy_conf(hosts[name].dir / "conf", DNS,
                             {"private-or-clear": "0.0.0.0/0\n::/0\n"})
        knotd = Knotd(hosts["dns"].dir / "knot", zone_texts(blobs),
                      listen=[(DNS, 53), (DNS6, 53)],
                      prefix=("ip", "netns", "exec", hosts["dns"].name))
        knotd.start(ready=lambda: _serves(world, hosts["d"]))
        made = PmtuWorld(world, hosts, knotd, {})
        for name in oe_on:
            demo.start_oe(made, name)
        return made
    except BaseException:  # also Ctrl-C or SIGTERM while knotd or oe start: ours to stop
        if made is not None:
            made.close()
        else:
            if knotd is not None:
                knotd.stop()
            world.close()
        raise


def zone_texts(keys: dict[str, bytes]) -> dict[str, str]:
    """Reverse zones with an IPSECKEY for a and d at each of their addresses."""
    return demo.zone_texts(keys, origins=ZONES, addresses=KEYED)


def _serves(world: World, host: Host) -> bool:
    """knotd answers d, across both routers (the path every key lookup of d's takes)."""
    probe = ("import dns.message, dns.query, sys;"
             "q = dns.message.make_query('2.0.192.in-addr.arpa.', 'SOA');"
             "r = dns.query.udp(q, sys.argv[1], timeout=0.3);"
             "sys.exit(0 if r.answer else 1)")
    return world.run(host, sys.executable, "-c", probe, DNS, check=False).returncode == 0


# ---------------------------------------------------------------- what a user would try

_SERVER = """
import hashlib, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
srv = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1)
print("listening", flush=True)
total, digest, first = 0, hashlib.sha256(), None
try:
    conn, _ = srv.accept(); start = time.monotonic()
    while chunk := conn.recv(65536):
        if first is None:
            first = time.monotonic() - start
        if total < 1 << 20 <= total + len(chunk):
            print("1 MB in", flush=True)
        digest.update(chunk); total += len(chunk)
    conn.sendall(f"{total} {digest.hexdigest()}".encode()); conn.close()
finally:
    print(f"received {total} first_byte {first}", flush=True)
"""

_CLIENT = """
import hashlib, os, socket, sys, time
data = os.urandom(int(sys.argv[3]))
start = time.monotonic()
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
sock.sendall(data); sock.shutdown(socket.SHUT_WR)
answer = sock.makefile().read()
print(answer, hashlib.sha256(data).hexdigest(), round(time.monotonic() - start, 2))
"""


@dataclass
class Transfer:
    """One TCP transfer's outcome."""

    ok: bool
    received: int
    """Bytes the server got (all of them, or as far as it came before the timeout)."""
    first_byte: float | None
    """Seconds from accept to the first byte, None if none came."""
    seconds: float

    def __str__(self) -> str:
        return (f"{'ok' if self.ok else 'FAILED'}: {self.received} bytes received, first byte "
                f"after {self.first_byte} s, {self.seconds:.1f} s")


def start_transfer(pw: PmtuWorld, client: str, server: str, address: str, nbytes: int,
                   port: int, timeout: float):
    """Start a server on `server` and a client on `client` sending nbytes of random data;
    returns a function that waits (at most `timeout` s from the start) for the Transfer. The
    server's log says "1 MB in" once the first megabyte has arrived."""
    world = pw.world
    logname = f"server-{port}.log"
    for name, log in ((server, logname), (client, f"client-{port}.log")):
        (pw.hosts[name].dir / log).unlink(missing_ok=True)  # World.spawn appends
    srv = world.spawn(pw.hosts[server], sys.executable, "-u", "-c", _SERVER, address, str(port),
                      log=logname)
    log = pw.hosts[server].dir / logname
    assert wait_for(lambda: "listening" in log.read_text(), 10), log.read_text()
    start = time.monotonic()
    cli = world.spawn(pw.hosts[client], sys.executable, "-c", _CLIENT, address, str(port),
                      str(nbytes), str(timeout), log=f"client-{port}.log")

    def finish() -> Transfer:
        try:
            cli.wait(max(0.1, start + timeout - time.monotonic()))
        except Exception:  # subprocess.TimeoutExpired: a hung transfer, ended below
            pass
        World.stop(cli)
        World.stop(srv)
        out = (pw.hosts[client].dir / f"client-{port}.log").read_text().split()
        ok = len(out) == 4 and out[0] == str(nbytes) and out[1] == out[2]
        seconds = float(out[3]) if ok else time.monotonic() - start
        text = log.read_text().split()
        received = int(text[text.index("received") + 1]) if "received" in text else 0
        first = text[text.index("first_byte") + 1] if "first_byte" in text else "None"
        return Transfer(ok, received, None if first == "None" else float(first), seconds)

    return finish


def both_ways(pw: PmtuWorld, family: int, nbytes: int = 10 << 20,
              timeout: float = 30) -> tuple[Transfer, Transfer]:
    """a→d and d→a at the same time (one timeout for both)."""
    dst_d, dst_a = (D, A) if family == 4 else (D6, A6)
    to_d = start_transfer(pw, "a", "d", dst_d, nbytes, 5001, timeout)
    to_a = start_transfer(pw, "d", "a", dst_a, nbytes, 5002, timeout)
    return to_d(), to_a()
