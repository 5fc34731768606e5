"""`oe status`: one typed structure, serialised once for `--json` and rendered for the text
and `--brief` views; sans-IO.

The daemon builds a Status (Daemon.status) and sends its JSON over the control socket; the CLI
reads it back (Status.from_json), or builds one from policy when no daemon runs. The eroute
table's rows are KLIPS's `/proc/net/ipsec_eroute` lines; each CHILD SA shows what an IPsec user
expects of `ipsec status`: SPIs, algorithms with the PFS group, rekey and expiry, last use,
bytes and packets each way.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

from oe.eroute import SaAction


@dataclass
class ErouteStatus:
    """One eroute and its classifier counters (Eroute.as_json's keys)."""

    packets: int
    bytes: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    said: str
    group: str | None
    origin: str | None


@dataclass
class ChildSaStatus:
    """One tunnel: the CHILD SA pair it uses now. Its counters are that SA pair's (a rekey
    starts them afresh); the SA eroute's counters in `eroutes` span the tunnel's life and equal
    the outbound ones until the first rekey."""

    src: str
    dst: str
    peer: str
    spi_in: str
    spi_out: str
    said: str
    algorithm: str
    """ESP transform as strongSwan names it, e.g. AES_GCM_16_128 (with _ESN)."""
    encap: str
    """ESP or ESP-in-UDP (RFC 3948)."""
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    age: float
    """Seconds since the tunnel came up (rekeys keep it)."""
    initiator: bool
    sa_id: int = 0
    """The IKE SA that carries it (IkeSaInfo.sa_id)."""
    encryption: str = ""
    integrity: str | None = None
    """None for an AEAD transform (RFC 4106)."""
    dh_group: str | None = None
    """The PFS group of the CREATE_CHILD_SA that made it, or None (no PFS)."""
    esn: bool = False
    rekey_in: float | None = None
    """Seconds until the soft lifetime, when oe rekeys it if used (else retires it)."""
    expires_in: float | None = None
    """Seconds until the hard lifetime."""
    last_used: float | None = None
    """Seconds since a packet was last seen on it either way (counter samples), None: never."""
    path_mtu: int | None = None
    """The largest outer packet known to reach the peer (docs/pmtu.md), None: not tracked."""
    path_mtu_source: str | None = None
    """How it was learned: base, route, icmp or probe."""
    pmtu_state: str | None = None
    """The RFC 8899 search state of the peer's path."""
    send_errors: int = 0
    """Outbound datagrams the kernel refused to send (issue 17, 3: no silent loss)."""
    emsgsize: int = 0
    """... of them as too big for the local route (EMSGSIZE; it lowers the path MTU)."""
    key: str | None = None
    """Where the peer's key came from: record kind and DNSSEC state, e.g. "IPSECKEY, dnssec
    secure" (issue 12)."""


@dataclass
class IkeSaStatus:
    """One IKE SA (from oe.ike's IkeSaInfo, IkeEngine.ike_sas())."""

    sa_id: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    initiator: bool
    spi_i: str
    spi_r: str
    state: str
    encryption: str | None
    integrity: str | None
    prf: str | None
    dh_group: str | None
    age: float | None
    """Seconds since it was established (None: not yet)."""
    last_heard: float | None
    """Seconds since the peer's last authentic message (None: none yet)."""
    child_sas: int

    @classmethod
    def of(cls, info, now: float) -> "IkeSaStatus":
        return cls(info.sa_id, info.local_addr, info.local_port, info.remote_addr,
                   info.remote_port, info.initiator, info.spi_i.hex(), info.spi_r.hex(),
                   info.state, info.encryption, info.integrity, info.prf, info.dh_group,
                   _ago(info.established_at, now), _ago(info.last_heard, now), info.child_sas)


def _ago(when: float | None, now: float) -> float | None:
    return None if when is None else round(now - when, 1)


@dataclass
class ShuntStatus:
    """A bare shunt: a %hold while negotiating, or a failure shunt with its reason."""

    src: str
    dst: str
    said: str
    group: str | None
    reason: str
    expires_in: float | None


@dataclass
class LimitStatus:
    """One [limits] cap."""

    max: int
    in_use: int
    dropped: int


@dataclass
class Status:
    daemon: bool
    eroutes: list[ErouteStatus]
    sas: list[ChildSaStatus] = field(default_factory=list)
    shunts: list[ShuntStatus] = field(default_factory=list)
    ike_sas: list[IkeSaStatus] | None = None
    """The IKE SAs, when a daemon runs."""
    datapath: dict[str, int] | None = None
    ike: dict[str, int] | None = None
    limits: dict[str, LimitStatus] | None = None
    counters: dict[str, int] | None = None

    def __post_init__(self) -> None:
        self.eroutes.sort(key=_eroute_order)  # by destination, as `ip route` lists

    def to_json(self) -> dict:
        """`oe status --json`: without a daemon only daemon, eroutes, sas and shunts."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, data: dict) -> "Status":
        limits = data.get("limits")
        return cls(daemon=bool(data.get("daemon")),
                   eroutes=[ErouteStatus(**row) for row in data["eroutes"]],
                   sas=[ChildSaStatus(**row) for row in data.get("sas", [])],
                   shunts=[ShuntStatus(**row) for row in data.get("shunts", [])],
                   ike_sas=None if data.get("ike_sas") is None else [
                       IkeSaStatus(**row) for row in data["ike_sas"]],
                   datapath=data.get("datapath"),
                   ike=data.get("ike"),
                   limits=None if limits is None else {
                       name: LimitStatus(**row) for name, row in limits.items()},
                   counters=data.get("counters"))


def build_status(eroutes: Iterable, opportunist, lifecycle,
                 sa_stats: dict[int, tuple[dict, dict]], pmtu, ike_sas: Iterable, now: float,
                 **daemon_only) -> Status:
    """A running daemon's status: (eroute, (packets, bytes)) of the datapath's table, the
    opportunist's tunnels and shunts, the lifecycle's CHILD SA details, the datapath's
    counters of each tunnel's SAs (inbound SPI -> (inbound stats, outbound stats)), each
    peer's path MTU (oe.pmtu.PathMtuDriver) and the engines' IkeSaInfo rows."""
    return Status(
        ike_sas=[IkeSaStatus.of(info, now) for info in ike_sas],
        daemon=True,
        eroutes=[ErouteStatus(**eroute.as_json(packets, nbytes))
                 for eroute, (packets, nbytes) in eroutes],
        sas=[child_sa_status(t, lifecycle, *sa_stats.get(t.spi_in, ({}, {})), now,
                             **pmtu.status(str(t.peer)))
             for t in opportunist.tunnels.values()],
        shunts=[ShuntStatus(str(s.pair.src), str(s.pair.dst), str(s.action), s.group, s.reason,
                            None if s.expires is None else round(s.expires - now, 1))
                for s in opportunist.shunts.values()],
        **daemon_only)


def child_sa_status(tunnel, lifecycle, stats_in: dict, stats_out: dict,
                    now: float, **path) -> ChildSaStatus:
    """One tunnel (oe.opportunist Tunnel) as status shows it, with its CHILD SA's algorithms
    and times (oe.lifecycle) and the datapath's counters of its two SAs."""
    packets_in, packets_out = stats_in.get("packets", 0), stats_out.get("packets", 0)
    info = lifecycle.children.get(tunnel.spi_in)
    used = lifecycle.last_used(tunnel.spi_in, packets_in, packets_out, now)
    times = lifecycle.times
    return ChildSaStatus(
        src=str(tunnel.pair.src), dst=str(tunnel.pair.dst), peer=str(tunnel.peer),
        spi_in=f"{tunnel.spi_in:08x}", spi_out=f"{tunnel.spi_out:08x}",
        said=str(SaAction(tunnel.peer, tunnel.spi_out, tunnel.sa_out)),
        algorithm=tunnel.algorithm, encap="ESP-in-UDP" if tunnel.udp_encap else "ESP",
        bytes_in=stats_in.get("bytes", 0), bytes_out=stats_out.get("bytes", 0),
        packets_in=packets_in, packets_out=packets_out, age=round(now - tunnel.created, 1),
        initiator=tunnel.initiator, sa_id=tunnel.sa_id,
        encryption=info.encryption if info else tunnel.algorithm,
        integrity=info.integrity if info else None,
        dh_group=info.dh_group if info else None, esn=info.esn if info else False,
        rekey_in=None if info is None else round(info.installed + times.soft - now, 1),
        expires_in=None if info is None else round(info.installed + times.lifetime - now, 1),
        last_used=None if used is None else round(now - used, 1),
        send_errors=stats_out.get("send_errors", 0), emsgsize=stats_out.get("emsgsize", 0),
        key=info.key if info else None, **path)


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


# --- the text views ---------------------------------------------------------------------


def _eroute_side(network: str, port: int) -> str:
    return f"{network}:{port}" if port else network


def klips_line(row: ErouteStatus) -> str:
    """KLIPS ipsec_rj_walker_procprint: "%-10d %-18s -> %-18s => %s%s"."""
    said = row.said + (f":{row.proto}" if row.proto else "")
    return (f"{row.packets:<10d} {_eroute_side(row.src, row.sport):<18} -> "
            f"{_eroute_side(row.dst, row.dport):<18} => {said}")


def _eroute_order(row: ErouteStatus):
    dst = ipaddress.ip_network(row.dst)
    src = ipaddress.ip_network(row.src)
    return (dst.version, dst.network_address, dst.prefixlen, src.prefixlen, row.proto,
            row.sport, row.dport)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _child_details(sa: ChildSaStatus) -> str:
    parts = [sa.encryption or sa.algorithm]
    if sa.integrity:
        parts.append(sa.integrity)
    parts.append(f"PFS {sa.dh_group}" if sa.dh_group else "no PFS")
    if sa.rekey_in is not None:
        parts.append(f"rekey in {_seconds(sa.rekey_in)}")
    if sa.expires_in is not None:
        parts.append(f"expires in {_seconds(sa.expires_in)}")
    parts.append("never used" if sa.last_used is None else
                 f"last used {_seconds(sa.last_used)} ago")
    if sa.path_mtu is not None:
        parts.append(f"pmtu {sa.path_mtu} ({sa.path_mtu_source})")
    if sa.send_errors:
        parts.append(f"{sa.send_errors} send errors ({sa.emsgsize} too big)")
    if sa.key is not None:
        parts.append(f"key {sa.key}")
    return f"    IKE SA #{sa.sa_id}: " + ", ".join(parts)


def render(status: Status, confdir: str = "") -> str:
    """The text view: eroutes (KLIPS), CHILD SAs, IKE SAs, shunts, limits."""
    lines: list[str] = []
    if not status.daemon:
        lines.append("no daemon running: prospective table from policy")
        if not status.eroutes:
            lines.append(f"no policy: {confdir}/policies holds no entries")
    lines += [klips_line(row) for row in status.eroutes]
    if status.sas:
        lines.append("\nSAs:")
    for sa in status.sas:
        role = "initiator" if sa.initiator else "responder"
        lines.append(f"{sa.said:<28} {sa.src} -> {sa.dst}  {sa.algorithm} {sa.encap}  "
                     f"in {sa.bytes_in}B/{sa.packets_in}p out {sa.bytes_out}B/"
                     f"{sa.packets_out}p  age {sa.age:g}s  {role}")
        lines.append(_child_details(sa))
    if status.ike_sas:
        lines.append("\nIKE SAs:")
    for ike in status.ike_sas or []:
        lines.append(_ike_line(ike))
    if status.shunts:
        lines.append("\nShunts:")
    for shunt in status.shunts:
        left = "negotiating" if shunt.expires_in is None else f"{shunt.expires_in:g}s left"
        lines.append(f"{shunt.said:<8} {shunt.src} -> {shunt.dst}  {shunt.group or '-'}: "
                     f"{shunt.reason} ({left})")
    if status.limits:
        lines.append("\nLimits: " + ", ".join(
            f"{name} {row.in_use}/{row.max}"
            + (f" ({row.dropped} dropped)" if row.dropped else "")
            for name, row in status.limits.items()))
    return "\n".join(lines)


def _ike_line(ike: IkeSaStatus) -> str:
    """strongSwan's `ipsec statusall` in one line: who, state, role, SPIs, suite, times."""
    algorithms = (ike.encryption, None if ike.integrity == "NONE" else ike.integrity, ike.prf,
                  ike.dh_group)
    suite = "/".join(a for a in algorithms if a) or "-"
    times = [] if ike.age is None else [f"established {_seconds(ike.age)} ago"]
    if ike.last_heard is not None:
        times.append(f"last heard {_seconds(ike.last_heard)} ago")
    return (f"#{ike.sa_id:<4} {ike.local_addr}[{ike.local_port}] <-> "
            f"{ike.remote_addr}[{ike.remote_port}]  {ike.state} "
            f"{'initiator' if ike.initiator else 'responder'}  {ike.spi_i}_i {ike.spi_r}_r  "
            f"{suite}  " + ", ".join(times + [f"{ike.child_sas} CHILD SA"
                                               + ("" if ike.child_sas == 1 else "s")]))


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # not reached


def render_brief(status: Status) -> str:
    """`oe status --brief`, in the spirit of `wg show`: one line per peer (the tunnels' peers,
    then peers with an IKE SA but no tunnel, then the destinations of bare shunts): peer,
    state, SAs, algorithm, last use, bytes."""
    lines: list[str] = []
    peers: dict[str, list[ChildSaStatus]] = {}
    for sa in status.sas:
        peers.setdefault(sa.peer, []).append(sa)
    for peer, sas in peers.items():
        used = [sa.last_used for sa in sas if sa.last_used is not None]
        last = "never used" if not used else f"last used {_seconds(min(used))} ago"
        received = sum(sa.bytes_in for sa in sas)
        sent = sum(sa.bytes_out for sa in sas)
        algorithms = ",".join(sorted({sa.algorithm for sa in sas}))
        pfs = ",".join(sorted({sa.dh_group for sa in sas if sa.dh_group}))
        lines.append(f"{peer:<24} up     {len(sas)} SA{'s' if len(sas) != 1 else ''}  "
                     f"{algorithms}{' PFS ' + pfs if pfs else ''} {sas[0].encap}  {last}  "
                     f"rx {_bytes(received)} tx {_bytes(sent)}")
    for ike in status.ike_sas or []:
        if ike.remote_addr in peers:
            continue
        peers[ike.remote_addr] = []
        lines.append(f"{ike.remote_addr:<24} ike    0 SAs  {ike.state} "
                     f"{'initiator' if ike.initiator else 'responder'}")
    for shunt in status.shunts:
        if shunt.dst in peers:
            continue
        left = "negotiating" if shunt.expires_in is None else \
            f"{shunt.reason}, {shunt.expires_in:g}s left"
        lines.append(f"{shunt.dst:<24} {shunt.said:<6} 0 SAs  {shunt.group or '-'}: {left}")
    if not lines:
        lines.append("no peers" if status.daemon else
                     "no daemon running: no peers (oe start)")
    return "\n".join(lines)


__all__ = ["build_status", "child_sa_status", "ChildSaStatus", "ErouteStatus", "IkeSaStatus",
           "LimitStatus", "ShuntStatus", "Status", "klips_line", "render", "render_brief"]
