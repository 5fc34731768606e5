"""A real authoritative server for the demo and the tests: knotd (Debian package knot).

    with Knotd(workdir, {"2.0.192.in-addr.arpa": text}, listen=[("127.0.0.1", port)]) as knot:
        ...

knotd runs in the foreground as our child, optionally inside a network namespace (`prefix`,
e.g. ["ip", "netns", "exec", "ns"]), with its own config, zone copies, database and control
socket in `workdir`; it is stopped by its pid. Nothing outside `workdir` is touched.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from oe.errors import OeError

KNOTD = "/usr/sbin/knotd"


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
                 prefix: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.zones = zones
        self.listen = listen
        self.prefix = prefix
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
            "zone:\n" + "".join(f'  - domain: "{origin}"\n' for origin in self.zones)
        )
        return conf

    def answers(self) -> bool:
        """Every zone's SOA is served (asked of the first listen address)."""
        address, port = self.listen[0]
        for origin in self.zones:
            query = dns.message.make_query(origin + ".", dns.rdatatype.SOA)
            try:
                response = dns.query.udp(query, address, timeout=0.2, port=port)
            except (dns.exception.Timeout, OSError):
                return False
            if response.rcode() != dns.rcode.NOERROR or not response.answer:
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
