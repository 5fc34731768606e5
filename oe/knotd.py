"""A real authoritative server for the demo and the tests: knotd (Debian package knot).

    with Knotd(workdir, {"2.0.192.in-addr.arpa": text}, listen=[("127.0.0.1", port)]) as knot:
        ...

knotd runs in the foreground as our child, optionally inside a network namespace (`prefix`,
e.g. ["ip", "netns", "exec", "ns"]), with its own config, zone copies, database and control
socket in `workdir`; it is stopped by its pid. Nothing outside `workdir` is touched.

Zones named in `signing` are signed by knotd itself (`dnssec-signing: on`, RFC 4035), with a
KSK and a ZSK (ECDSA P-256) made at the first start and kept in workdir's KASP database, and
denial of existence by NSEC or NSEC3 (RFC 5155) as the policy names. `anchor(origin)` gives
the DS of the served KSK as a trust anchor in zone-file format (what the parent would publish).
Both read the served zone through knotd's control socket (knotc), which works from outside the
namespace knotd listens in.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from oe.errors import OeError

KNOTD = "/usr/sbin/knotd"
KNOTC = "/usr/sbin/knotc"
NSEC, NSEC3 = "nsec", "nsec3"
SIGNING_POLICIES = (NSEC, NSEC3)
"""Values of Knotd's `signing`: the knotd policy (id) a signed zone uses."""
KSK_FLAGS = 257  # ZONE and SEP (RFC 4034 2.1.1)


class KnotdError(OeError):
    """knotd did not start or does not serve its zones."""


def soa_ns_header(origin: str, ns_name: str, ns_address: str | None = None, ttl: int = 300,
                  minimum: int = 60) -> str:
    """The apex records every zone needs: SOA (minimum = negative-caching TTL) and NS."""
    lines = [
        f"$ORIGIN {origin}.",
        f"$TTL {ttl}",
        f"@ SOA {ns_name}. hostmaster.{origin}. 1 3600 600 86400 {minimum}",
        f"@ NS {ns_name}.",
    ]
    if ns_address is not None and ns_name.endswith(origin):
        kind = "AAAA" if ":" in ns_address else "A"
        lines.append(f"{ns_name}. {kind} {ns_address}")
    return "\n".join(lines) + "\n"


class Knotd:
    def __init__(self, workdir: Path, zones: dict[str, str], listen: list[tuple[str, int]],
                 prefix: tuple[str, ...] = (), signing: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.zones = zones
        self.listen = listen
        self.prefix = prefix
        self.signing = dict(signing or {})
        """origin -> NSEC or NSEC3, for the zones knotd signs."""
        self.process: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        path = self.workdir / "knotd.log"
        return path.read_text() if path.exists() else ""

    def write_config(self) -> Path:
        zonedir = self.workdir / "zones"
        shutil.rmtree(zonedir, ignore_errors=True)
        zonedir.mkdir(parents=True)
        for origin, text in self.zones.items():
            (zonedir / f"{origin}.zone").write_text(text)
        listen = ", ".join(f'"{address}@{port}"' for address, port in self.listen)
        (self.workdir / "db").mkdir(exist_ok=True)  # the KASP database of signed zones
        conf = self.workdir / "knot.conf"
        conf.write_text(
            "server:\n"
            f'    rundir: "{self.workdir}"\n'
            f"    listen: [ {listen} ]\n"
            "    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n"
            "log:\n"
            f'  - target: "{self.workdir}/knotd.log"\n    any: info\n'
            "database:\n"
            f'    storage: "{self.workdir}/db"\n'
            "template:\n"
            "  - id: default\n"
            f'    storage: "{zonedir}"\n'
            '    file: "%s.zone"\n'
            "    zonefile-sync: -1\n"
            "    journal-content: none\n"
            "policy:\n"
            f"  - id: {NSEC}\n"
            f"  - id: {NSEC3}\n    nsec3: on\n    nsec3-iterations: 0\n    nsec3-salt-length: 0\n"
            "zone:\n" + "".join(f'  - domain: "{origin}"\n' + self._signing(origin)
                                 for origin in self.zones)
        )
        return conf

    def _signing(self, origin: str) -> str:
        policy = self.signing.get(origin)
        if policy is None:
            return ""
        if policy not in SIGNING_POLICIES:
            raise KnotdError(f"{origin}: signing policy {policy!r}: expected one of "
                             f"{', '.join(SIGNING_POLICIES)}")
        return f"    dnssec-signing: on\n    dnssec-policy: {policy}\n"

    def served(self, origin: str, *selection: str) -> str:
        """The zone as knotd serves it (signed, for a signed zone), in zone-file format;
        `selection`: an owner and a type, as knotc zone-read takes them ("@", "DNSKEY")."""
        try:
            out = subprocess.run([KNOTC, "-s", str(self.workdir / "knot.sock"), "zone-read",
                                  origin, *selection], check=True, capture_output=True,
                                 text=True, timeout=15)
        except (OSError, subprocess.SubprocessError) as exc:
            raise KnotdError(f"knotc zone-read {origin}: {exc}") from None
        # knotc prefixes each record with "[origin.] "
        return "".join(line.split("] ", 1)[1] + "\n" for line in out.stdout.splitlines())

    def signed(self) -> bool:
        """Does knotd serve a DNSKEY at the apex of every zone it is to sign?"""
        try:
            return all(" DNSKEY " in self.served(origin, "@", "DNSKEY")
                       for origin in self.signing)
        except KnotdError:
            return False

    def anchor(self, origin: str) -> str:
        """The DS (SHA-256) of `origin`'s served KSK: a trust anchor line in zone-file format."""
        name = dns.name.from_text(origin)
        ksks = [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY,
                                    line.split(" DNSKEY ", 1)[1])
                for line in self.served(origin, "@", "DNSKEY").splitlines()]
        ksks = [k for k in ksks if k.flags == KSK_FLAGS]
        if not ksks:
            raise KnotdError(f"{origin}: knotd serves no KSK (is it signed?)")
        return "".join(f"{name} IN DS {dns.dnssec.make_ds(name, k, 'SHA256')}\n" for k in ksks)

    def _ask(self, origin: str, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        address, port = self.listen[0]
        query = dns.message.make_query(origin + ".", rdtype, want_dnssec=True)
        return dns.query.udp(query, address, timeout=0.2, port=port)

    def answers(self) -> bool:
        """Every zone's SOA is served (asked of the first listen address), signed if it is to
        be."""
        for origin in self.zones:
            try:
                response = self._ask(origin, dns.rdatatype.SOA)
            except (dns.exception.Timeout, OSError):
                return False
            if response.rcode() != dns.rcode.NOERROR or not response.answer:
                return False
            signed = any(r.rdtype == dns.rdatatype.RRSIG for r in response.answer)
            if origin in self.signing and not signed:
                return False
        return True

    def start(self, wait: float = 15.0, ready=None) -> None:
        """Start knotd; `ready()` (default: answers()) says when it serves."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.write_config()
        self.process = subprocess.Popen([*self.prefix, KNOTD, "-c", str(conf)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        ready = ready or self.answers
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.process.poll() is None:
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        log = self.log.strip().splitlines()
        raise KnotdError(f"knotd did not come up: {log[-1] if log else 'no log'}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "Knotd":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
