"""A real authoritative server for the tests: knotd (Debian package knot) on a loopback port.

    with Knotd(workdir, {"113.0.203.in-addr.arpa": text, ...}) as knot:
        ... query 127.0.0.1 or ::1 at knot.port ...

knotd runs in the foreground as our child, with its own config, zone copies, database and
control socket in `workdir`; it is stopped by its pid. Nothing outside `workdir` is touched.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

KNOTD = "/usr/sbin/knotd"
ZONEFILES = Path(__file__).resolve().parent.parent / "zonefiles"


def committed_zones() -> dict[str, str]:
    """zonefiles/<origin>.zone, by origin."""
    return {p.name[:-len(".zone")]: p.read_text() for p in sorted(ZONEFILES.glob("*.zone"))}


def free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 and ::1 at the time of asking."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(family, kind) as s:
                        s.bind((host, port))
        except OSError:
            continue
        return port


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class Knotd:
    def __init__(self, workdir: Path, zones: dict[str, str]):
        self.workdir = workdir
        self.zones = zones
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        path = self.workdir / "knotd.log"
        return path.read_text() if path.exists() else ""

    def _write_config(self) -> Path:
        zonedir = self.workdir / "zones"
        shutil.rmtree(zonedir, ignore_errors=True)
        zonedir.mkdir(parents=True)
        for origin, text in self.zones.items():
            (zonedir / f"{origin}.zone").write_text(text)
        listen = ['"127.0.0.1@%d"' % self.port]
        if has_ipv6_loopback():
            listen.append('"::1@%d"' % self.port)
        conf = self.workdir / "knot.conf"
        conf.write_text(f"""\
server:
    rundir: "{self.workdir}"
    listen: [ {", ".join(listen)} ]
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: "{self.workdir}/knotd.log"
    any: info
database:
    storage: "{self.workdir}/db"
template:
  - id: default
    storage: "{zonedir}"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: none
zone:
""" + "".join(f'  - domain: "{origin}"\n' for origin in self.zones))
        return conf

    def _answers(self) -> bool:
        """Every zone's SOA is served authoritatively."""
        for origin in self.zones:
            query = dns.message.make_query(origin + ".", dns.rdatatype.SOA)
            try:
                response = dns.query.udp(query, "127.0.0.1", timeout=0.2, port=self.port)
            except (dns.exception.Timeout, OSError):
                return False
            if response.rcode() != dns.rcode.NOERROR or not response.answer:
                return False
        return True

    def start(self, wait: float = 15.0) -> None:
        if not Path(KNOTD).exists():
            raise RuntimeError(f"{KNOTD} not found: install the Debian package knot "
                               f"(`make setup` does)")
        for _attempt in range(3):  # another process may take the port between probe and bind
            self.port = free_port()
            conf = self._write_config()
            self.process = subprocess.Popen([KNOTD, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._answers():
                    return
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"knotd did not come up; its log:\n{self.log}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Knotd:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
