"""A real authoritative server for the tests: knotd (Debian package knot) on a loopback port.

    with Knotd(workdir, {"113.0.203.in-addr.arpa": text, ...}) as knot:
        ... query 127.0.0.1 or ::1 at knot.port ...

    with Knotd(workdir, zones, signing={"test.example": NSEC3}) as knot:
        anchor = knot.anchor("test.example")   # its DS, for a validator's trust anchor

oe.knotd runs it in the foreground as our child, with its own config, zone copies, database
and control socket in `workdir`; it is stopped by its pid. Nothing outside `workdir` is touched.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from oe.knotd import Knotd as ServedZones
from oe.knotd import KNOTC, KnotdError
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


class Knotd(ServedZones):
    """oe.knotd's server on a free loopback port, 127.0.0.1 and (where there is one) ::1."""

    def __init__(self, workdir: Path, zones: dict[str, str],
                 signing: dict[str, str] | None = None):
        """signing: origin -> oe.knotd.NSEC or NSEC3 for the zones knotd signs itself."""
        super().__init__(workdir, zones, listen=[], signing=signing)
        self.port = 0

    def start(self, wait: float = 15.0, ready=None) -> None:
        for _attempt in range(3):  # another process may take the port between probe and bind
            self.port = free_port()
            self.listen = [("127.0.0.1", self.port)]
            if has_ipv6_loopback():
                self.listen.append(("::1", self.port))
            try:
                super().start(wait, ready)
                return
            except KnotdError:
                continue
        raise KnotdError(f"knotd did not come up; its log:\n{self.log}")

    def replace_zone(self, origin: str, text: str) -> None:
        """Serve `text` (with a higher SOA serial) for `origin` from now on: the zone file is
        rewritten and knotc reloads it, blocking until knotd serves the new version."""
        self.zones[origin] = text
        (self.workdir / "zones" / f"{origin}.zone").write_text(text)
        subprocess.run([KNOTC, "-s", str(self.workdir / "knot.sock"), "-b", "zone-reload",
                        origin], check=True, capture_output=True, timeout=15)
