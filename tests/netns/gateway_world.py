"""The gateway world of docs/gateway.md 7.1: two LANs behind two oe gateways, an oe host, a
charon host with a client subnet, a compromised gateway and knotd with the clients' records.

 lan-a 198.51.100.0/24                          lan-b 198.51.101.0/24
   a1 .10 (delegates to gw-a, secure)             b1 .10 (@gw-b.oe.example, secure)
   a2 .20 (its record names a2 itself)            b2 .20 (delegation in an unsigned zone)
   a3 .30 (delegates to gw-a, wrong key)          b3 .30 (10: 192.0.2.99 dead; 20: gw-b)
   a4 .40 (delegates to gw-a, secure, TXT)        b4 .40 (delegates to gw-b, secure)
        |                                              |
      gw-a (oe) 192.0.2.1 ──────── inet br0 ──────── gw-b (oe) 192.0.2.2
               h (oe) 192.0.2.10    c (charon) 192.0.2.20, lo 198.51.102.5
               dns 192.0.2.53 (knotd)    m 192.0.2.66 (ike_peer.py, a compromised gateway)
               (192.0.2.99: nobody, the dead gateway of b3's first record)

Zones, all signed by knotd (NSEC) with their DS as the oe hosts' trust anchors, except one:
  2.0.192.in-addr.arpa      IPSECKEY of gw-a, gw-b, h, c and m, each naming itself
  100.51.198.in-addr.arpa   a1 -> 192.0.2.1 with gw-a's key; a2 -> 198.51.100.20 with gw-a's
                            key; a3 -> 192.0.2.1 with another key (TXT X-IPsec-Server);
                            a4 -> 192.0.2.1 with gw-a's key (TXT X-IPsec-Server)
  101.51.198.in-addr.arpa   b1 -> @gw-b.oe.example with gw-b's key; b4 -> 192.0.2.2 with
                            gw-b's key (the plain case, 7.2's tests 1, 3 and 9 beside the
                            FQDN one); b3 -> precedence 10
                            192.0.2.99 and 20 192.0.2.2, both with gw-b's key; 20 NS: b2's
                            name is delegated, without DS, to
  20.101.51.198.in-addr.arpa  (unsigned) b2 -> 192.0.2.2 with gw-b's key: proven insecure
  102.51.198.in-addr.arpa   198.51.102.5 -> 192.0.2.20 with c's key
  oe.example                gw-b 192.0.2.2 (not oe.test: libunbound answers test. itself,
                            RFC 6761 6.2)

The delegating records are what `oe showhostkey --ipseckey --gateway G --owner C` prints with
the gateway's confdir (the README's set-up), the others come from oe.demo's zone helpers. The
clients run no oe: plain hosts whose default route is their gateway. The inet hosts route the
LANs' prefixes to their gateways (the internet would). gw-a, gw-b and h run oe with
private-or-clear 0.0.0.0/0; the gateways' oe.conf names their subnets ([gateway] subnets).
charon is configured (keys given, it does no DNS) but started by `start_charon()`.
IPv4 only (docs/gateway.md 7: the IPv6 LANs of the design are not built yet).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from oe import demo, hostkey
from oe.dnskeys import records
from oe.knotd import NSEC, Knotd, soa_ns_header
from oe.netns import Host, World, wait_for

from charon import CHARON, Charon

DNS = "192.0.2.53"
DEAD = "192.0.2.99"
INET = {"gw-a": "192.0.2.1", "gw-b": "192.0.2.2", "h": "192.0.2.10", "c": "192.0.2.20",
        "dns": DNS, "m": "192.0.2.66"}
LANS = {"gw-a": ("lan-a", "198.51.100.0/24", "198.51.100.1"),
        "gw-b": ("lan-b", "198.51.101.0/24", "198.51.101.1")}
CLIENTS = {"a1": "198.51.100.10", "a2": "198.51.100.20", "a3": "198.51.100.30",
           "a4": "198.51.100.40", "b1": "198.51.101.10", "b2": "198.51.101.20",
           "b3": "198.51.101.30", "b4": "198.51.101.40"}
C_NET, C_CLIENT, C_HALF = "198.51.102.0/24", "198.51.102.5", "198.51.102.128/25"
GW_B_NAME = "gw-b.oe.example"
OE_HOSTS = ("gw-a", "gw-b", "h")
KEYED = ("gw-a", "gw-b", "h", "c", "m", "wrong")
"""Who gets a key: the oe hosts, charon, mallory, and the key a3's record wrongly carries."""
SIGNED = ("2.0.192.in-addr.arpa", "100.51.198.in-addr.arpa", "101.51.198.in-addr.arpa",
          "102.51.198.in-addr.arpa", "oe.example")
UNSIGNED = "20.101.51.198.in-addr.arpa"
POLICY = {"private-or-clear": "0.0.0.0/0\n"}
OE = (sys.executable, "-m", "oe")
TUNNEL_WAIT = 30
"""Seconds for a negotiation to show in `oe status`: a bound for failures, never a measure."""


NEEDS = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not CHARON.exists() or not shutil.which("swanctl"),
                       reason="strongSwan charon/swanctl not installed (make apt)"),
    pytest.mark.skipif(not shutil.which("tcpdump"), reason="tcpdump not installed (make apt)"),
]
"""The gateway tests' pytestmark (they also need python3-unbound: importorskip)."""


@dataclass
class GatewayWorld:
    """The world, knotd, the oe daemons and charon (shaped like oe.demo.OeWorld, so that
    demo.start_oe, oe_cmd and stop_oe drive it)."""

    world: World
    hosts: dict[str, Host] = field(default_factory=dict)
    knotd: Knotd | None = None
    keys: dict = field(default_factory=dict)
    """Private keys by KEYED name."""
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    charon: Charon | None = None

    def confdir(self, name: str) -> Path:
        return self.hosts[name].dir / "conf"

    def rundir(self, name: str) -> Path:
        return self.hosts[name].dir / "run"

    def run(self, name: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return self.world.run(self.hosts[name], *argv, **kwargs)

    def address(self, name: str) -> str:
        return CLIENTS.get(name) or INET[name]

    def ping(self, src: str, dst: str, count: int = 3, source: str | None = None):
        """ping from host `src` to host `dst` (or an address); `source`: ping -I."""
        target = dst if "." in dst else self.address(dst)
        extra = ("-I", source) if source else ()
        return self.run(src, "ping", "-c", str(count), "-i", "0.3", "-W", "3", *extra, target,
                        check=False)

    def status(self, name: str) -> dict:
        return json.loads(demo.oe_cmd(self, name, "status", "--json").stdout)

    def log(self, name: str) -> str:
        path = self.hosts[name].dir / "oe.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def write_conf(self, name: str, extra_dns: str = "") -> None:
        """oe.conf of an oe host: its inet address, its subnets (gateways), the nameserver and
        anchors, and `extra_dns` lines in [dns] (e.g. allow_unsigned_delegation = true)."""
        top = f'addresses = ["{INET[name]}"]\n'
        if name in LANS:
            top += f'\n[gateway]\nsubnets = ["{LANS[name][1]}"]\n'
        demo.policy_conf(self.confdir(name), DNS, POLICY, top)
        with open(self.confdir(name) / "oe.conf", "a") as conf:  # [dns] is the last table
            conf.write(f'trust_anchors = ["{demo.ANCHORS}"]\n{extra_dns}')

    def start_charon(self) -> Charon:
        """charon on c as the gateway of its subnet towards gw-a for a1: TSi 198.51.102.5/32
        first (the host oe can check), then 198.51.102.128/25 (a subnet, charon's native way;
        not the /24: charon drops a selector that another of its own contains, and the host
        would be gone)."""
        c = self.hosts["c"]
        self.charon = Charon(c.name, c.dir / "charon", me=INET["c"], peer=INET["gw-a"],
                             key=self.keys["c"], peer_key=self.keys["gw-a"],
                             local_ts=f"{C_CLIENT}/32,{C_HALF}",
                             remote_ts=f"{CLIENTS['a1']}/32")
        self.charon.start()
        return self.charon

    def capture(self, port: str, label: str) -> tuple[subprocess.Popen, Path]:
        """tcpdump on a bridge port (in the switch namespace) until World.stop(proc)."""
        pcap = self.world.workdir / f"{label}.pcap"
        proc = subprocess.Popen(["ip", "netns", "exec", self.world.switch, "tcpdump", "-i", port,
                                 "--immediate-mode", "-U", "-n", "-w", str(pcap), "ip or ip6"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.world._processes.append(proc)
        proc.stderr.readline()  # "listening on ...": capturing from now on
        return proc, pcap

    def close(self) -> None:
        for name in list(self.daemons):
            try:
                demo.stop_oe(self, name)
            except Exception:  # a daemon that will not stop is ended with the world
                pass
        if self.charon is not None:
            self.charon.stop()
        if self.knotd is not None:
            self.knotd.stop()
        self.world.close()


def showhostkey(confdir: Path, owner: str, gateway: str | None = None,
                precedence: int | None = None, kind: str = "--ipseckey") -> str:
    """The record `oe showhostkey` prints for `owner` with confdir's key (the README's way of
    making a client's delegating record), comment and record lines."""
    argv = [*OE, "--confdir", str(confdir), "showhostkey", kind, "--owner", owner]
    if gateway:
        argv += ["--gateway", gateway]
    if precedence is not None:
        argv += ["--precedence", str(precedence)]
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          timeout=60).stdout


def zone_texts(confdirs: dict[str, Path], blobs: dict[str, bytes]) -> dict[str, str]:
    """Every zone of the world (see the module's docstring)."""
    zones = demo.zone_texts({n: blobs[n] for n in ("gw-a", "gw-b", "h", "c", "m")},
                            origins=("2.0.192.in-addr.arpa",),
                            addresses={n: (INET[n],) for n in INET})
    gw_a, gw_b = confdirs["gw-a"], confdirs["gw-b"]
    zones["100.51.198.in-addr.arpa"] = (
        soa_ns_header("100.51.198.in-addr.arpa", demo.NS_NAME, ttl=60)
        + showhostkey(gw_a, CLIENTS["a1"], INET["gw-a"])
        + showhostkey(gw_a, CLIENTS["a2"], CLIENTS["a2"])
        + showhostkey(confdirs["wrong"], CLIENTS["a3"], INET["gw-a"], kind="--txt")
        + showhostkey(gw_a, CLIENTS["a4"], INET["gw-a"], kind="--txt"))
    b2_owner = records.owner_for(CLIENTS["b2"]).to_text()
    zones["101.51.198.in-addr.arpa"] = (
        soa_ns_header("101.51.198.in-addr.arpa", demo.NS_NAME, ttl=60)
        + showhostkey(gw_b, CLIENTS["b1"], "@" + GW_B_NAME)
        + showhostkey(gw_b, CLIENTS["b4"], INET["gw-b"])
        + showhostkey(gw_b, CLIENTS["b3"], DEAD, precedence=10)
        + showhostkey(gw_b, CLIENTS["b3"], INET["gw-b"], precedence=20)
        + f"{b2_owner} NS {demo.NS_NAME}.\n")  # no DS: the child is proven unsigned
    zones[UNSIGNED] = (soa_ns_header(UNSIGNED, demo.NS_NAME, ttl=60)
                       + showhostkey(gw_b, CLIENTS["b2"], INET["gw-b"]))
    zones["102.51.198.in-addr.arpa"] = (
        soa_ns_header("102.51.198.in-addr.arpa", demo.NS_NAME, ttl=60)
        + showhostkey(confdirs["c"], C_CLIENT, INET["c"]))
    zones["oe.example"] = (soa_ns_header("oe.example", demo.NS_NAME, ttl=60)
                        + f"{GW_B_NAME}. A {INET['gw-b']}\n")
    return zones


def build(workdir: Path, *, key_bits: int = 2048, start: tuple[str, ...] = OE_HOSTS
          ) -> GatewayWorld:
    """Namespaces, links, routes, keys, zones and knotd; oe started on `start`. On any failure
    (or Ctrl-C, SIGTERM) everything made so far is torn down."""
    world = World("gw", workdir).open()
    made = GatewayWorld(world)
    try:
        hosts = made.hosts
        hosts.update({name: world.host(name, f"{address}/24") for name, address in INET.items()})
        for gateway, (lan, _subnet, address) in LANS.items():
            world.bridge(lan)
            world.attach(hosts[gateway], lan, f"{address}/24", ifname="eth1")
        for client, address in CLIENTS.items():
            gateway = "gw-a" if client.startswith("a") else "gw-b"
            hosts[client] = world.host(client, f"{address}/24", bridge=LANS[gateway][0])
            world.route(hosts[client], f"default via {LANS[gateway][2]}")
        # charon's client, on lo: this kernel has no dummy interfaces
        world.run(hosts["c"], "ip", "addr", "add", f"{C_CLIENT}/32", "dev", "lo")
        # The internet routes each LAN's prefix to its gateway, and charon's to c.
        for name in INET:
            for gateway, subnet in (("gw-a", LANS["gw-a"][1]), ("gw-b", LANS["gw-b"][1]),
                                    ("c", C_NET)):
                if name != gateway:
                    world.route(hosts[name], f"{subnet} via {INET[gateway]}")
        blobs, keys, confdirs = {}, made.keys, {}
        for name in KEYED:
            confdirs[name] = (hosts[name].dir if name in hosts else workdir / name) / "conf"
            keys[name] = hostkey.keygen(hostkey.hostkey_path(confdirs[name]), bits=key_bits,
                                        force=True)
            blobs[name] = hostkey.public_blob(keys[name])
        knotd = made.knotd = Knotd(
            hosts["dns"].dir / "knot", zone_texts(confdirs, blobs), listen=[(DNS, 53)],
            prefix=("ip", "netns", "exec", hosts["dns"].name),
            signing={origin: NSEC for origin in SIGNED})
        knotd.start(ready=lambda: demo._serves(world, hosts["h"]) and knotd.signed())
        anchors = "".join(knotd.anchor(origin) for origin in SIGNED)
        for name in (*OE_HOSTS, "m"):
            made.confdir(name).mkdir(parents=True, exist_ok=True)
            (made.confdir(name) / demo.ANCHORS).write_text(anchors)
        for name in OE_HOSTS:
            made.write_conf(name)
        for name in start:
            demo.start_oe(made, name)
        return made
    except BaseException:  # also Ctrl-C or SIGTERM while knotd or oe start: ours to stop
        made.close()
        raise


@pytest.fixture(scope="module", name="gw")
def world_fixture(tmp_path_factory):
    """One world for a test module, oe running on gw-a, gw-b and h; closed at its end (also
    on failure, Ctrl-C and SIGTERM)."""
    made = build(tmp_path_factory.mktemp("gw"))
    try:
        yield made
    finally:
        made.close()


# ---------------------------------------------------------------- looking at the world

LOOKUP = """
import asyncio, json, sys
from pathlib import Path
import dns.name, dns.rdatatype
from oe.config import load
from oe.dnskeys.fetcher import KeyFetcher
from oe.dnskeys.unbound import UnboundSource
confdir = Path(sys.argv[1])
conf = load(confdir).dns
source = UnboundSource.from_config(conf.nameservers, conf.port, conf.trust_anchors, confdir)
async def main():
    found = {}
    try:
        for target in sys.argv[2:]:
            if target.startswith("A:"):
                answer = await source.query(dns.name.from_text(target[2:]), dns.rdatatype.A,
                                            conf.query_timeout)
                found[target] = {"addresses": sorted(r.to_text() for r in answer.rdatas),
                                 "dnssec": answer.security}
            else:
                found[target] = (await KeyFetcher(conf, source).fetch(target)).as_json()
        return found
    finally:
        source.close()
print(json.dumps(asyncio.run(main())))
"""


def lookups(gw: GatewayWorld, name: str, *targets: str) -> dict[str, dict]:
    """What oe on `name` finds in DNS for each target (its `oe dnskey --json`, validated from
    its anchors through libunbound); "A:<name>" asks for a name's addresses instead."""
    out = gw.run(name, sys.executable, "-c", LOOKUP, str(gw.confdir(name)), *targets)
    return json.loads(out.stdout)


def wire_kinds(pcap: Path) -> dict[tuple[str, str, str], int]:
    """Packets in a capture by (lower address, higher address, kind), kinds as
    oe.demo.wire_summary names them, plus "DNS" (UDP or TCP port 53)."""
    from scapy.all import IP, TCP, UDP, IPv6, rdpcap  # scapy is slow to import

    found: dict[tuple[str, str, str], int] = {}
    for packet in rdpcap(str(pcap)):
        ip = packet.getlayer(IP) or packet.getlayer(IPv6)
        if ip is None:
            continue
        layer = packet.getlayer(UDP) or packet.getlayer(TCP)
        dns_port = layer is not None and 53 in (layer.sport, layer.dport)
        kind = "DNS" if dns_port else demo.packet_kind(packet, ip)
        a, b = sorted((ip.src, ip.dst), key=ipaddress.ip_address)
        found[(a, b, kind)] = found.get((a, b, kind), 0) + 1
    return found


def eroutes(gw: GatewayWorld, name: str) -> list[str]:
    """The eroutes of `oe status` as FreeS/WAN's `ipsec eroute` wrote them: "src -> dst =>
    said" (said: esp.<spi>@<peer>, or a shunt)."""
    return [f"{row['src']} -> {row['dst']} => {row['said']}"
            for row in gw.status(name)["eroutes"]]


# ---------------------------------------------------------------- what the tests ask

def diagnose(gw: GatewayWorld, *names: str) -> str:
    """What the oe hosts said: their log's last lines, shunts and eroutes (failure messages)."""
    out = []
    for name in names:
        log = gw.log(name).strip().splitlines()[-12:]
        try:
            status = gw.status(name)
            extra = [f"  shunt {s['src']} -> {s['dst']} {s['said']}: {s['reason']}"
                     for s in status["shunts"]] + ["  eroute " + e for e in eroutes(gw, name)]
        except Exception as exc:  # the daemon may be what failed
            extra = [f"  no status: {exc}"]
        out += [f"--- {name}"] + ["  " + line for line in log] + extra
    return "\n".join(out)


def tunnel(src: str, dst: str, peer: str) -> str:
    """The eroute line of an ESP tunnel, as a regex: `C/32 -> T/32 => esp.<spi>@<peer>`."""
    return rf"^{re.escape(src)}/32 -> {re.escape(dst)}/32 => esp\.[0-9a-f]+@{re.escape(peer)}$"


def has_eroute(gw, name: str, pattern: str) -> bool:
    return any(re.match(pattern, line) for line in eroutes(gw, name))


def wait_eroute(gw, name: str, pattern: str, timeout: float = TUNNEL_WAIT) -> bool:
    return wait_for(lambda: has_eroute(gw, name, pattern), timeout, 0.3)


def bare(address: str) -> str:
    return address.split("/")[0]


def shunt(gw, name: str, src: str, dst: str) -> dict | None:
    return next((s for s in gw.status(name)["shunts"] if bare(s["src"]) == src
                 and bare(s["dst"]) == dst and s["expires_in"] is not None), None)


def wait_shunt(gw, name: str, src: str, dst: str, timeout: float = TUNNEL_WAIT) -> dict | None:
    wait_for(lambda: shunt(gw, name, src, dst) is not None, timeout, 0.3)
    return shunt(gw, name, src, dst)


def sa(gw, name: str, src: str, dst: str) -> dict | None:
    return next((s for s in gw.status(name)["sas"] if bare(s["src"]) == src
                 and bare(s["dst"]) == dst), None)


def restart(gw, name: str) -> None:
    demo.stop_oe(gw, name)
    demo.start_oe(gw, name)


def sysctl(gw, name: str, key: str) -> str:
    return gw.run(name, "sysctl", "-n", key).stdout.strip()
