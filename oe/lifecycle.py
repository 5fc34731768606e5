"""The lives of the opportunist's SAs: lifetimes, rekey or retire, liveness, childless IKE SAs;
sans-IO.

- Lifetimes: a CHILD SA is rekeyed `rekey_margin` before its hard lifetime (at half of it at the
  latest); the datapath fires the soft and hard limits, this module decides what they mean.
- Rekey or retire (FreeS/WAN's OE rule): at the soft limit an SA used since the last one is
  rekeyed; an idle one goes, with its IKE SA, and a later packet trips the %trap again.
- Liveness (RFC 7296 2.4): every `dpd_delay` the daemon samples the tunnels' inbound packet
  counters (SampleInbound); a tunnel that received nothing since the last sample gets a
  CheckLiveness, and the engine declares a peer dead that does not answer.
- Childless IKE SAs: an IKE SA that carries no CHILD SA of ours for CHILDLESS_GRACE is deleted,
  so a key holder whose CHILD SAs we refuse cannot pile IKE SAs up (each holds keys and state).

It also knows which engine (address family) holds each IKE SA, and which host pair an IKE SA
was started or installed for, so the daemon can carry out commands that name an IKE SA only.
"""

from __future__ import annotations

from dataclasses import dataclass

from oe.commands import CheckLiveness, Command, DeleteChild, DeleteIke, Log, RekeyChild, \
    SampleInbound, StaleKey
from oe.ike.constants import DhId, EncrId, IntegId, NotifyType
from oe.opportunist import Opportunist, Pair, Tunnel

CHILDLESS_GRACE = 30.0  # seconds an IKE SA may live without a CHILD SA before we delete it


@dataclass(frozen=True)
class SaTimes:
    """Lifetimes of CHILD SAs, from oe.conf [ike]."""

    lifetime: float = 3600.0
    rekey_margin: float = 300.0
    dpd_delay: float = 30.0

    @property
    def soft(self) -> float:
        """Seconds after installation the datapath fires the soft limit (rekey time)."""
        return max(self.lifetime - self.rekey_margin, self.lifetime / 2)


def _name(enum, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"{enum.__name__.upper()}_{value}"


def algorithm_name(child) -> str:
    """An ESP transform as strongSwan names it: AES_GCM_16_128, _ESN appended if negotiated."""
    name = {EncrId.AES_GCM_16: "AES_GCM_16"}.get(child.encr, f"ENCR_{child.encr}")
    return f"{name}_{child.key_bits}" + ("_ESN" if child.esn else "")


@dataclass
class ChildInfo:
    """What status shows of the CHILD SA a tunnel uses now, beyond the opportunist's Tunnel."""

    installed: float
    encryption: str
    integrity: str | None
    dh_group: str | None
    """The PFS group of its CREATE_CHILD_SA, or None (keys from the IKE SA's, RFC 7296 2.17)."""
    esn: bool
    last_in: tuple[int, float | None] = (0, None)
    """(packets, when the count was last seen to grow)."""
    last_out: tuple[int, float | None] = (0, None)
    key: str | None = None
    """Where the peer's key came from: record kind and DNSSEC state (oe.peerkeys)."""

    @classmethod
    def of(cls, child, now: float, key: str | None = None) -> "ChildInfo":
        """From an oe.ike ChildSa installed at `now`, its peer's key from `key`."""
        return cls(now, algorithm_name(child).removesuffix("_ESN"),
                   _name(IntegId, child.integ) if child.integ else None,
                   _name(DhId, child.dh) if child.dh else None, child.esn, key=key)


class Lifecycle:
    """IKE SA bookkeeping and the timers of the opportunist's tunnels."""

    def __init__(self, opportunist: Opportunist, times: SaTimes = SaTimes()) -> None:
        self.opportunist = opportunist
        self.times = times
        self.pairs: dict[int, Pair] = {}
        """IKE SA -> the host pair we initiated it for or installed a CHILD SA of."""
        self._family: dict[int, int] = {}  # IKE SA -> IP version of the engine holding it
        self._childless: dict[int, float] = {}  # IKE SA -> since when it carries no CHILD SA
        self._used: dict[int, int] = {}  # outbound SA handle -> packets at its last soft limit
        self._seen_in: dict[int, int] = {}  # inbound SPI -> packets at the last sample
        self._next_sample: float | None = None
        self.children: dict[int, ChildInfo] = {}
        """Inbound SPI -> the CHILD SA's algorithms and times (status)."""
        self.counters = {"childless_deleted": 0}

    # --- IKE SAs --------------------------------------------------------------------------

    def family(self, sa_id: int) -> int | None:
        """The IP version of the engine holding IKE SA `sa_id` (sa_ids are unique on the host)."""
        return self._family.get(sa_id)

    def heard(self, version: int, sa_id: int) -> None:
        """An engine spoke of IKE SA `sa_id`."""
        self._family[sa_id] = version

    def initiated(self, version: int, sa_id: int, pair: Pair) -> None:
        self._family[sa_id] = version
        self.pairs[sa_id] = pair

    def ike_established(self, version: int, sa_id: int, now: float) -> None:
        self._family[sa_id] = version
        self._childless[sa_id] = now

    def ike_failed(self, sa_id: int, peer: str, reason: str, notify: int | None, local: bool,
                   now: float) -> list[Command]:
        """An IKE SA failed. Our own check of the peer's AUTH failing means the key we hold
        may be stale (rotated within its TTL): the initiator fetches it afresh once, the
        responder asks DNS afresh next time; anything else fails the negotiation."""
        pair = self.ike_gone(sa_id)
        why = f"IKE timeout: {reason}" if notify is None else reason
        auth = local and notify == NotifyType.AUTHENTICATION_FAILED
        if pair is not None:
            return (self.opportunist.auth_failed(pair, why, now) if auth
                    else self.opportunist.negotiation_failed(pair, why, now))
        return [Log(f"IKE with {peer} failed: {why}")] + ([StaleKey(peer)] if auth else [])

    def ike_gone(self, sa_id: int) -> Pair | None:
        """The IKE SA was deleted or failed; returns the pair it was for."""
        self._childless.pop(sa_id, None)
        self._family.pop(sa_id, None)
        return self.pairs.pop(sa_id, None)

    # --- CHILD SAs ------------------------------------------------------------------------

    def child_installed(self, sa_id: int, pair: Pair, spi_in: int, info: ChildInfo) -> None:
        self._childless.pop(sa_id, None)
        self.pairs[sa_id] = pair
        self.children[spi_in] = info

    def child_rekeyed(self, spi_in: int, info: ChildInfo) -> None:
        self.children[spi_in] = info

    def child_deleted(self, spi_in: int, sa_out: int | None) -> None:
        self.children.pop(spi_in, None)
        self._seen_in.pop(spi_in, None)
        if sa_out is not None:
            self._used.pop(sa_out, None)

    def soft_limit(self, sa_out: int, packets: int, why: str) -> list[Command]:
        """FreeS/WAN's OE rule: rekey only if the SA was used lately; idle ones go away."""
        tunnel = self._tunnel_by_sa_out(sa_out)
        if tunnel is None:
            return []
        recently = packets != self._used.get(sa_out, 0)
        self._used[sa_out] = packets
        if recently:
            return [RekeyChild(tunnel.sa_id, tunnel.spi_in)]
        return [Log(f"OE to {tunnel.pair.dst} idle, deleting at {why}"), DeleteIke(tunnel.sa_id)]

    def hard_limit(self, direction: str, handle: int, spi: int, reason: str) -> list[Command]:
        """An SA of a tunnel expired: its IKE SA goes (the %trap is back)."""
        commands: list[Command] = []
        for tunnel in list(self.opportunist.tunnels.values()):
            if (direction == "out" and tunnel.sa_out == handle) or (
                    direction == "in" and tunnel.spi_in == handle):
                commands += [Log(f"SA {spi:x} {direction} expired ({reason})"),
                             DeleteIke(tunnel.sa_id)]
        return commands

    def _tunnel_by_sa_out(self, handle: int) -> Tunnel | None:
        for tunnel in self.opportunist.tunnels.values():
            if tunnel.sa_out == handle:
                return tunnel
        return None

    def last_used(self, spi_in: int, packets_in: int, packets_out: int,
                  now: float) -> float | None:
        """When the tunnel's CHILD SA last carried a packet, as far as the counter samples
        (status queries, liveness checks) tell: None if never."""
        info = self.children.get(spi_in)
        if info is None:
            return None
        info.last_in = _grown(info.last_in, packets_in, now)
        info.last_out = _grown(info.last_out, packets_out, now)
        times = [t for t in (info.last_in[1], info.last_out[1]) if t is not None]
        return max(times) if times else None

    # --- timers ---------------------------------------------------------------------------

    def started(self, now: float) -> None:
        self._next_sample = now + self.times.dpd_delay

    def tick(self, now: float) -> list[Command]:
        """Childless IKE SAs past their grace go; a liveness sample when it is due."""
        commands: list[Command] = []
        for sa_id, since in list(self._childless.items()):
            if now - since < CHILDLESS_GRACE:
                continue
            del self._childless[sa_id]
            self.counters["childless_deleted"] += 1
            commands.append(DeleteIke(sa_id))
        if self._next_sample is not None and now >= self._next_sample:
            self._next_sample = now + self.times.dpd_delay
            commands.append(SampleInbound())
        return commands

    def inbound_sample(self, packets: dict[int, int], now: float) -> list[Command]:
        """The tunnels' inbound packet counters (inbound SPI -> packets): a tunnel that
        received nothing since the last sample gets a liveness check. Only live SAs are
        remembered."""
        seen, self._seen_in = self._seen_in, {}
        commands: list[Command] = []
        for tunnel in list(self.opportunist.tunnels.values()):
            count = packets.get(tunnel.spi_in, 0)
            self._seen_in[tunnel.spi_in] = count
            info = self.children.get(tunnel.spi_in)
            if info is not None:
                info.last_in = _grown(info.last_in, count, now)
            if count == seen.get(tunnel.spi_in):
                commands.append(CheckLiveness(tunnel.sa_id))
        return commands

    def next_timer(self) -> float | None:
        """The earliest of: the oldest childless IKE SA's grace, the next liveness sample."""
        times = [self._next_sample] if self._next_sample is not None else []
        if self._childless:
            # established in time order, so the first is the oldest
            times.append(next(iter(self._childless.values())) + CHILDLESS_GRACE)
        return min(times) if times else None

    def child_refused(self, sa_id: int, spi_in: int, remote: str, why: str,
                      now: float) -> list[Command]:
        """A CHILD SA oe will not install: delete it, and end our negotiation for its pair in
        the failure shunt (a %hold must never stay)."""
        commands: list[Command] = [Log(f"refused CHILD SA {spi_in:08x} with {remote}: {why}"),
                                   DeleteChild(sa_id, spi_in)]
        pair = self.pairs.get(sa_id)
        if pair is not None:
            commands += self.opportunist.negotiation_failed(pair, f"CHILD SA refused: {why}", now)
        return commands


def _grown(last: tuple[int, float | None], packets: int, now: float) -> tuple[int, float | None]:
    if packets == last[0]:
        return last
    return packets, now


__all__ = ["CHILDLESS_GRACE", "ChildInfo", "Lifecycle", "SaTimes", "algorithm_name"]
