"""`oe demo`: a small OE world in network namespaces, shown working, then torn down.

    dns    192.0.2.53  2001:db8::53   knotd serving the reverse zones, keys made afresh
    alice  192.0.2.10  2001:db8::10   oe, private-or-clear 0.0.0.0/0 and ::/0, key in DNS
    bob    192.0.2.20  2001:db8::20   oe, private-or-clear 0.0.0.0/0 and ::/0, key in DNS
    carol  192.0.2.30  2001:db8::30   no oe, no key: OE falls back to clear

All on one bridge in a switch namespace, where tcpdump watches the wire.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import dns.name

from oe import hostkey
from oe.dnskeys import records
from oe.knotd import Knotd, soa_ns_header
from oe.netns import Host, World

ADDRESSES = {
    "dns": ("192.0.2.53", "2001:db8::53"),
    "alice": ("192.0.2.10", "2001:db8::10"),
    "bob": ("192.0.2.20", "2001:db8::20"),
    "carol": ("192.0.2.30", "2001:db8::30"),
}
REVERSE_ZONES = ("2.0.192.in-addr.arpa",
                 "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa")
NS_NAME = "ns.oe.test"


@dataclass
class OeWorld:
    world: World
    hosts: dict[str, Host]
    knotd: Knotd
    oe_hosts: list[str] = field(default_factory=list)

    def confdir(self, name: str) -> Path:
        return self.hosts[name].dir / "conf"

    def rundir(self, name: str) -> Path:
        return self.hosts[name].dir / "run"

    def close(self) -> None:
        self.knotd.stop()
        self.world.close()


def zone_texts(keys: dict[str, bytes], ttl: int = 60) -> dict[str, str]:
    """Reverse zones with an IPSECKEY for each keyed host, at each of its addresses."""
    zones = {}
    for origin in REVERSE_ZONES:
        text = soa_ns_header(origin, NS_NAME, ttl=ttl)
        for name, blob in keys.items():
            for address in ADDRESSES[name]:
                owner = records.owner_for(address)
                if owner.is_subdomain(dns.name.from_text(origin)):
                    text += "\n".join(records.publication(records.IPSECKEY, blob, owner)) + "\n"
        zones[origin] = text
    return zones


def policy_conf(confdir: Path, nameserver: str, groups: dict[str, str]) -> None:
    (confdir / "policies").mkdir(parents=True, exist_ok=True)
    for group, text in groups.items():
        (confdir / "policies" / group).write_text(text)
    (confdir / "oe.conf").write_text(f'[dns]\nnameservers = ["{nameserver}"]\n')


def build(workdir: Path, *, key_bits: int = 2048, keyed=("alice", "bob"),
          groups: dict[str, dict[str, str]] | None = None) -> OeWorld:
    """Namespaces, addresses, host keys, zones and knotd; the daemons are started by the caller."""
    world = World("oe", workdir)
    world.open()
    try:
        hosts = {name: world.host(name, f"{v4}/24", f"{v6}/64")
                 for name, (v4, v6) in ADDRESSES.items()}
        blobs = {}
        for name in keyed:
            confdir = hosts[name].dir / "conf"
            key = hostkey.keygen(hostkey.hostkey_path(confdir), bits=key_bits, force=True)
            blobs[name] = hostkey.public_blob(key)
        for name in ("alice", "bob", "carol"):
            policy_conf(hosts[name].dir / "conf", ADDRESSES["dns"][0],
                        (groups or {}).get(name, {"private-or-clear": "0.0.0.0/0\n::/0\n"}))
        dns_host = hosts["dns"]
        knotd = Knotd(dns_host.dir / "knot", zone_texts(blobs),
                      listen=[(ADDRESSES["dns"][0], 53), (ADDRESSES["dns"][1], 53)],
                      prefix=("ip", "netns", "exec", dns_host.name))
        knotd.start(ready=lambda: _serves(world, hosts["alice"]))
        return OeWorld(world, hosts, knotd)
    except BaseException:
        world.close()
        raise


def _serves(world: World, host: Host) -> bool:
    probe = ("import dns.message, dns.query, sys;"
             "q = dns.message.make_query('2.0.192.in-addr.arpa.', 'SOA');"
             "r = dns.query.udp(q, sys.argv[1], timeout=0.3);"
             "sys.exit(0 if r.answer else 1)")
    return world.run(host, sys.executable, "-c", probe, ADDRESSES["dns"][0],
                     check=False).returncode == 0

