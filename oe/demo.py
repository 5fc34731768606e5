"""`oe demo`: a small OE world in network namespaces, shown working, then torn down.

    dns    192.0.2.53  2001:db8::53   knotd serving and signing the reverse zones (DNSSEC),
                                      host keys made afresh
    alice  192.0.2.10  2001:db8::10   oe, private-or-clear 0.0.0.0/0 and ::/0, key in DNS
    bob    192.0.2.20  2001:db8::20   oe, private-or-clear 0.0.0.0/0 and ::/0, key in DNS
    carol  192.0.2.30  2001:db8::30   no oe, no key: OE falls back to clear
    dave   198.51.100.10               no oe, on alice's LAN (alice 198.51.100.1): alice is its
                                      gateway ([gateway] subnets), named with alice's key in
                                      dave's reverse record (with `build(gateway=True)`)

All on one bridge in a switch namespace, where tcpdump watches the wire. alice, bob and carol
take the zones' DS records as their trust anchors (oe.conf [dns] trust_anchors), as a LAN
without a signed path from the root would: their keys validate secure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dns.name

from oe import hostkey
from oe.errors import OeError
from oe.dnskeys import records
from oe.knotd import NSEC, Knotd, soa_ns_header
from oe.netns import Host, World

ADDRESSES = {
    "dns": ("192.0.2.53", "2001:db8::53"),
    "alice": ("192.0.2.10", "2001:db8::10"),
    "bob": ("192.0.2.20", "2001:db8::20"),
    "carol": ("192.0.2.30", "2001:db8::30"),
}
REVERSE_ZONES = ("2.0.192.in-addr.arpa",
                 "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa")
LAN, LAN_GATEWAY, DAVE = "198.51.100.0/24", "198.51.100.1", "198.51.100.10"
LAN_ZONE = "100.51.198.in-addr.arpa"
NS_NAME = "ns.oe.test"
ANCHORS = "trust-anchors.ds"
"""In each host's confdir: the DS of the zones knotd signs."""


@dataclass
class OeWorld:
    world: World
    hosts: dict[str, Host]
    knotd: Knotd
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    """`oe start` processes by host name."""

    def confdir(self, name: str) -> Path:
        return self.hosts[name].dir / "conf"

    def rundir(self, name: str) -> Path:
        return self.hosts[name].dir / "run"

    def close(self) -> None:
        self.knotd.stop()
        self.world.close()


def zone_texts(keys: dict[str, bytes], ttl: int = 60, origins=REVERSE_ZONES,
               addresses=ADDRESSES) -> dict[str, str]:
    """Reverse zones (`origins`) with an IPSECKEY for each keyed host, at each of its
    `addresses` (the demo's by default; other test worlds name their own)."""
    zones = {}
    for origin in origins:
        text = soa_ns_header(origin, NS_NAME, ttl=ttl)
        for name, blob in keys.items():
            for address in addresses[name]:
                owner = records.owner_for(address)
                if owner.is_subdomain(dns.name.from_text(origin)):
                    text += "\n".join(records.publication(records.IPSECKEY, blob, owner)) + "\n"
        zones[origin] = text
    return zones


def policy_conf(confdir: Path, nameserver: str, groups: dict[str, str], extra: str = "") -> None:
    """policies/<group> files and an oe.conf naming the world's nameserver (+ extra TOML)."""
    (confdir / "policies").mkdir(parents=True, exist_ok=True)
    for group, text in groups.items():
        (confdir / "policies" / group).write_text(text)
    (confdir / "oe.conf").write_text(f'{extra}\n[dns]\nnameservers = ["{nameserver}"]\n')


def build(workdir: Path, *, key_bits: int = 2048, keyed=("alice", "bob"),
          groups: dict[str, dict[str, str]] | None = None,
          conf: dict[str, str] | None = None, gateway: bool = False) -> OeWorld:
    """Namespaces, addresses, host keys, zones and knotd; the daemons are started by the caller.
    gateway: dave on a LAN behind alice, alice's [gateway] subnets, dave's delegating record."""
    world = World("oe", workdir).open()
    knotd = None
    try:
        hosts = {name: world.host(name, f"{v4}/24", f"{v6}/64")
                 for name, (v4, v6) in ADDRESSES.items()}
        if gateway:
            _lan(world, hosts)
        blobs = {}
        for name in keyed:
            confdir = hosts[name].dir / "conf"
            key = hostkey.keygen(hostkey.hostkey_path(confdir), bits=key_bits, force=True)
            blobs[name] = hostkey.public_blob(key)
        for name in ("alice", "bob", "carol"):
            extra = (conf or {}).get(name, "")
            if gateway and name == "alice":
                extra += f'\n[gateway]\nsubnets = ["{LAN}"]\n'
            policy_conf(hosts[name].dir / "conf", ADDRESSES["dns"][0],
                        (groups or {}).get(name, {"private-or-clear": "0.0.0.0/0\n::/0\n"}),
                        extra)
        zones = zone_texts(blobs)
        if gateway:
            # dave's record, as `oe showhostkey --ipseckey --owner DAVE --gateway ALICE` on
            # alice prints it (the README's gateway set-up)
            zones[LAN_ZONE] = soa_ns_header(LAN_ZONE, NS_NAME, ttl=60) + "\n".join(
                records.publication(records.IPSECKEY, blobs["alice"], records.owner_for(DAVE),
                                    records.parse_gateway(ADDRESSES["alice"][0]))) + "\n"
        dns_host = hosts["dns"]
        knotd = Knotd(dns_host.dir / "knot", zones,
                      listen=[(ADDRESSES["dns"][0], 53), (ADDRESSES["dns"][1], 53)],
                      prefix=("ip", "netns", "exec", dns_host.name),
                      signing={origin: NSEC for origin in zones})
        knotd.start(ready=lambda: _serves(world, hosts["alice"]) and knotd.signed())
        anchors = "".join(knotd.anchor(origin) for origin in zones)
        for name in ("alice", "bob", "carol"):
            confdir = hosts[name].dir / "conf"
            (confdir / ANCHORS).write_text(anchors)
            with open(confdir / "oe.conf", "a") as conf:  # [dns], which policy_conf ends with
                conf.write(f'trust_anchors = ["{ANCHORS}"]\n')
        return OeWorld(world, hosts, knotd)
    except BaseException:  # also Ctrl-C or SIGTERM while knotd starts: it is our child
        if knotd is not None:
            knotd.stop()
        world.close()
        raise


def _lan(world: World, hosts: dict[str, Host]) -> None:
    """dave behind alice: a LAN bridge, alice's eth1 on it, dave's default route via alice;
    bob and carol route the LAN's prefix to alice (as the internet would)."""
    world.bridge("lan")
    world.attach(hosts["alice"], "lan", f"{LAN_GATEWAY}/24", ifname="eth1")
    hosts["dave"] = world.host("dave", f"{DAVE}/24", bridge="lan")
    world.route(hosts["dave"], f"default via {LAN_GATEWAY}")
    for name in ("bob", "carol"):
        world.route(hosts[name], f"{LAN} via {ADDRESSES['alice'][0]}")


def _serves(world: World, host: Host) -> bool:
    probe = ("import dns.message, dns.query, sys;"
             "q = dns.message.make_query('2.0.192.in-addr.arpa.', 'SOA');"
             "r = dns.query.udp(q, sys.argv[1], timeout=0.3);"
             "sys.exit(0 if r.answer else 1)")
    return world.run(host, sys.executable, "-c", probe, ADDRESSES["dns"][0],
                     check=False).returncode == 0



# ---------------------------------------------------------------- running oe in the world

OE = (sys.executable, "-m", "oe")


def start_oe(oe_world: OeWorld, name: str) -> None:
    """`oe start` inside the host's namespace; returns once its control socket answers."""
    from oe import control
    from oe.netns import wait_for

    host = oe_world.hosts[name]
    rundir = oe_world.rundir(name)
    proc = oe_world.world.spawn(host, *OE, "--confdir", str(oe_world.confdir(name)),
                                "--rundir", str(rundir), "start", log="oe.log")
    oe_world.daemons[name] = proc
    if not wait_for(lambda: control.daemon_running(rundir) or proc.poll() is not None, 20) \
            or proc.poll() is not None:
        raise OeError(f"oe on {name} did not start: {tail(host.dir / 'oe.log')}")


def oe_cmd(oe_world: OeWorld, name: str, *argv: str, check: bool = True):
    return oe_world.world.run(oe_world.hosts[name], *OE, "--confdir",
                              str(oe_world.confdir(name)), "--rundir",
                              str(oe_world.rundir(name)), *argv, check=check)


def stop_oe(oe_world: OeWorld, name: str) -> None:
    """`oe stop`, then wait for the daemon to exit (it sends DELETEs and removes its routes)."""
    proc = oe_world.daemons.pop(name)
    oe_cmd(oe_world, name, "stop", check=False)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        World.stop(proc)


def tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


_TCP_SERVER = """
import hashlib, socket, sys
srv = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1)
conn, _ = srv.accept(); digest = hashlib.sha256(); total = 0
while chunk := conn.recv(65536):
    digest.update(chunk); total += len(chunk)
conn.sendall(f"{total} {digest.hexdigest()}".encode()); conn.close()
"""

_TCP_CLIENT = """
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[3]))
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
sock.sendall(data); sock.shutdown(socket.SHUT_WR)
answer = sock.makefile().read()
print(answer, hashlib.sha256(data).hexdigest())
"""


def tcp_transfer(oe_world: OeWorld, client: str, server: str, nbytes: int,
                 port: int = 5001) -> tuple[bool, str]:
    """Send nbytes of random data over TCP; True if the server got exactly those bytes."""
    from oe.netns import wait_for

    world, hosts = oe_world.world, oe_world.hosts
    address = hosts[server].address
    proc = world.spawn(hosts[server], sys.executable, "-c", _TCP_SERVER, address, str(port))
    wait_for(lambda: world.run(hosts[server], "ss", "-ltn", check=False).stdout.count(
        f":{port} ") > 0, 10)
    out = world.run(hosts[client], sys.executable, "-c", _TCP_CLIENT, address, str(port),
                    str(nbytes), check=False, timeout=120)
    World.stop(proc)
    fields = out.stdout.split()
    ok = len(fields) == 3 and fields[0] == str(nbytes) and fields[1] == fields[2]
    return ok, (f"{nbytes} bytes, sha256 matches" if ok
                else f"transfer failed: {(out.stdout + out.stderr).strip()[-300:]}")


def start_capture(oe_world: OeWorld, host: str = "alice") -> tuple:
    """tcpdump on the host's bridge port, where every packet it sends or receives passes.

    (Not on the bridge device itself: frames switched between ports never reach it.)
    """
    pcap = oe_world.world.workdir / f"wire-{host}.pcap"
    # --immediate-mode: packets still in the kernel's ring when tcpdump stops would be lost
    proc = subprocess.Popen(["ip", "netns", "exec", oe_world.world.switch, "tcpdump", "-i",
                             oe_world.hosts[host].port, "--immediate-mode", "-U", "-n", "-w",
                             str(pcap), "ip or ip6"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    oe_world.world._processes.append(proc)
    proc.stderr.readline()  # "listening on ...": capturing from now on
    return proc, pcap


def wire_summary(pcap: Path, a: str, b: str) -> dict[str, int]:
    """Packets between a and b on the wire, by kind: what OE must leave visible is IKE and ESP."""
    from scapy.all import IP, IPv6, rdpcap  # scapy is slow to import

    kinds: dict[str, int] = {}
    for packet in rdpcap(str(pcap)):
        ip = packet.getlayer(IP) or packet.getlayer(IPv6)
        if ip is None or {ip.src, ip.dst} != {a, b}:
            continue
        kind = packet_kind(packet, ip)
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def packet_kind(packet, ip) -> str:
    """One captured packet's kind, as wire_summary counts it (`ip`: its IP or IPv6 layer)."""
    from scapy.all import ESP, ICMP, TCP, UDP

    ports = {packet[UDP].sport, packet[UDP].dport} if packet.haslayer(UDP) else set()
    if 500 in ports:
        return "IKE (udp 500)"
    if 4500 in ports:
        return "IKE or ESP-in-UDP (udp 4500)"
    if packet.haslayer(ESP):
        return "ESP"
    if packet.haslayer(TCP):
        return "TCP in clear"
    if ip.version == 6 and ip.nh == 58 and 133 <= bytes(ip.payload)[0] <= 137:
        return "neighbour discovery"  # the link's own business (RFC 4861), never a flow's
    if packet.haslayer(ICMP) or (ip.version == 6 and ip.nh == 58):
        return "ICMP in clear"
    return "other in clear"


def main(keep: bool = False) -> int:
    """The whole demo; everything is torn down at the end, also on Ctrl-C or SIGTERM."""
    import os
    import tempfile

    if os.geteuid() != 0:
        raise OeError("oe demo needs root (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="oe-demo-") as tmp:
        say("building the world: dns (knotd), alice, bob, carol in network namespaces, "
            "dave on a LAN behind alice")
        oe_world = build(Path(tmp), gateway=True)
        try:
            for name in ("alice", "bob"):
                start_oe(oe_world, name)
            say("oe running on alice and bob (private-or-clear 0.0.0.0/0 and ::/0); "
                "their keys are in DNS as IPSECKEY, carol publishes none")
            hosts = oe_world.hosts
            found = json.loads(oe_cmd(oe_world, "alice", "dnskey", hosts["bob"].address,
                                      "--json", check=False).stdout or "{}")
            say(f"alice$ oe dnskey {hosts['bob'].address} --json: {found.get('source')} "
                f"key id {found.get('key_id')}, dnssec: {found.get('dnssec')} (the zones are "
                f"signed by knotd; alice's trust anchor is their DS)")
            capture, pcap = start_capture(oe_world)
            hosts, world = oe_world.hosts, oe_world.world
            bob, carol = hosts["bob"].address, hosts["carol"].address
            shown = world.run(hosts["alice"], "ping", "-c", "4", "-i", "0.3", "-W", "3", bob,
                              check=False)
            say(f"alice$ ping {bob}\n" + indent(shown.stdout.strip().splitlines()[-2:]))
            bob6 = hosts["bob"].address6()
            shown6 = world.run(hosts["alice"], "ping", "-c", "3", "-i", "0.3", "-W", "3", bob6,
                               check=False)
            say(f"alice$ ping {bob6}\n" + indent(shown6.stdout.strip().splitlines()[-2:]))
            ok, what = tcp_transfer(oe_world, "alice", "bob", 4 << 20)
            say(f"alice -> bob TCP: {what}")
            shown = world.run(hosts["alice"], "ping", "-c", "3", "-i", "0.3", "-W", "3", carol,
                              check=False)
            say(f"alice$ ping {carol}   (no key in DNS: private-or-clear falls back to clear)\n"
                + indent(shown.stdout.strip().splitlines()[-2:]))
            gateway_ok, scene = gateway_scene(oe_world)
            say(scene)
            for name in ("alice", "bob"):
                say(f"{name}$ oe status\n" + indent(oe_cmd(oe_world, name, "status")
                                                      .stdout.rstrip().splitlines()))
            World.stop(capture)
            wire = wire_summary(pcap, hosts["alice"].address, bob)
            wire6 = wire_summary(pcap, hosts["alice"].address6(), bob6)
            # dave's own packets must never show on alice's wire: only alice's ESP for it
            dave = wire_summary(pcap, DAVE, bob)
            for label, kinds in (("alice and bob, IPv4", wire), ("alice and bob, IPv6", wire6),
                                 ("dave and bob", dave)):
                say(f"on the wire between {label}: " + (", ".join(
                    f"{n} {k}" for k, n in sorted(kinds.items())) or "nothing"))
            clear = sum(n for kinds in (wire, wire6, dave) for k, n in kinds.items()
                        if "clear" in k)
            verdict = "encrypted: only IKE and ESP" if ok and not clear else "NOT ENCRYPTED"
            say(f"verdict: {verdict}" + ("" if gateway_ok else "; dave did NOT reach bob "
                                          "through alice"))
            if keep:
                say(f"the world stays up (namespaces {world.prefix}-*); Ctrl-C or SIGTERM ends it")
                import signal
                signal.pause()
            return 0 if ok and gateway_ok and not clear else 1
        except KeyboardInterrupt:
            say("interrupted: tearing down")
            return 130
        finally:
            for name in list(oe_world.daemons):
                stop_oe(oe_world, name)
            oe_world.close()
            say("world torn down")


def gateway_scene(oe_world: OeWorld) -> tuple[bool, str]:
    """dave (no oe) pings bob; alice, its gateway, negotiates with bob for it: the ping's
    outcome and the tunnel's eroute on alice and on bob (docs/gateway.md 7.3)."""
    world, hosts = oe_world.world, oe_world.hosts
    bob = hosts["bob"].address
    shown = world.run(hosts["dave"], "ping", "-c", "3", "-i", "0.3", "-W", "3", bob, check=False)
    lines = [f"dave$ ping {bob}   (dave runs no oe; alice is its gateway, named in dave's "
             f"record): " + (shown.stdout.strip().splitlines() or ["no output"])[-2]]
    found = {}
    for name, src, dst in (("alice", DAVE, bob), ("bob", bob, DAVE)):
        status = json.loads(oe_cmd(oe_world, name, "status", "--json", check=False).stdout
                            or "{}")
        row = next((e for e in status.get("eroutes", []) if e["src"] == f"{src}/32"
                    and e["dst"] == f"{dst}/32" and e["said"].startswith("esp")), None)
        found[name] = row
        lines.append(f"   {name + ':':<6} " + (f"{row['src']} -> {row['dst']} => {row['said']}"
                                               if row else f"no tunnel {src} -> {dst}"))
    return shown.returncode == 0 and all(found.values()), "\n".join(lines)


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def indent(lines) -> str:
    return "\n".join(f"   {line}" for line in lines)
