"""Path MTU to one peer, searched by probing: DPLPMTUD (RFC 8899) for ESP, sans-IO.

FreeS/WAN's BUGS list opened its serious bugs with TCP hanging through a tunnel when part of the
path has a smaller MTU and its "must fragment" ICMP never gets back (issue 17). The peers find
the path MTU between themselves instead: the datapath sends probes of chosen sizes to the peer
(ESP with TFC padding, RFC 4303 2.7, or padded IKE INFORMATIONAL), the peer's acknowledgement
says a size arrived, and silence within the probe timer says it did not.

One PathMtu per peer (per outer source/destination pair), in outer IP packet sizes. It reads no
clock: every input carries `now`, and `next_timer()` says when `handle_timer()` is due (the
style of aioquic's QuicConnection). Inputs:

- `probes_to_send(now)`: sizes the datapath is to probe now (each is then in flight);
- `on_probe_acked(now, size)`: the peer acknowledged a probe of that size;
- `on_packet_too_big(now, mtu)`: ICMP fragmentation-needed / packet-too-big about the outer
  path, already matched to one of our packets by the caller (RFC 8899 4.6.1);
- `on_local_mtu(now, mtu)`: the local route's MTU, or the MTU the kernel named with EMSGSIZE;
- `on_black_hole_suspected(now)`: the datapath saw full-size packets go unanswered (e.g. an
  inner TCP segment of the full size retransmitted), so the current size is confirmed again.

States as RFC 8899 5.2: BASE (confirming the base size), SEARCHING, SEARCH_COMPLETE, ERROR
(not even the base size gets through). The search sends a round of probes at once, the
confirmed size as a control and up to `probes_per_round` sizes spread over the open range: a
size lost while a smaller one in the same round was acknowledged bounds the range from above
(the path was up; the size is what failed). Rounds end when all are answered or at the probe
timer, so a 1280 hop in a 1500 world is found in about five rounds.

`Paths` keeps every peer's PathMtu for the daemon, at a cost per event independent of the number
of peers (issue 14): a heap of the paths' timers and the peers touched since it last looked.
`EspOverhead`, `mss`, `too_big_mtu` and
`fragment_outer` turn a path MTU into what the datapath applies per packet (docs/pmtu.md).
"""

from __future__ import annotations

import enum
import functools
import heapq
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from oe.flows import Pair, Tunnel

BASE_PLPMTU = {4: 1200, 6: 1280}
"""RFC 8899 5.1.2: BASE_PLPMTU 1200 for IPv4 (a size that is nearly always supported) and the
IPv6 minimum link MTU 1280 (RFC 8200 5)."""
MIN_PLPMTU = {4: 576, 6: 1280}
"""The least a local route may claim (RFC 8899 5.1.2: MIN_PLPMTU; 576 is every IPv4 host's
reassembly minimum, RFC 791). ERROR keeps the base size rather than this: an ESP packet of 576
bytes carries barely 500, and ERROR means not even the base size is answered."""
IPV6_MIN_MTU = 1280
ESP_STEP = 4
"""ESP packets grow in steps of 4 bytes (RFC 4303 2.4): the search's granularity for ESP."""
MAX_PATHS = 16_384
"""Peers tracked at most (a daemon serves 10,000 peers, issue 14; a path is a few hundred
bytes): only authenticated peers get SAs, so this is generous; past it the
oldest path is forgotten (its SAs keep their MTU; a new SA to that peer starts at the base)."""


class State(enum.Enum):
    BASE = "base"
    SEARCHING = "searching"
    SEARCH_COMPLETE = "search complete"
    ERROR = "error"


class Source(enum.Enum):
    """How the current size was learned: what `oe status` shows beside the path MTU."""

    BASE = "base"          # nothing confirmed yet: the base size (RFC 8899 5.1.2)
    ROUTE = "route"        # the local route's MTU or EMSGSIZE from the kernel
    ICMP = "icmp"          # a validated packet-too-big (RFC 8899 4.6.2)
    PROBE = "probe"        # the peer acknowledged a probe of this size


@dataclass(frozen=True)
class Timers:
    """RFC 8899 5.1.1's constants, with values for a tunnel whose peer answers in an RTT."""

    probe: float = 1.0
    """PROBE_TIMER: a probe unanswered this long is lost (RFC 8899: not under 1 s; its 15 s
    suits Internet paths to strangers, not a peer that answers at once)."""
    max_probes: int = 3
    """MAX_PROBES: losses of the confirmed size in a row that make it a black hole."""
    confirm: float = 10.0
    """How often SEARCH_COMPLETE probes its own size, so a path that shrinks is noticed
    without any other sign (RFC 8899 4.3, black hole detection)."""
    raise_: float = 600.0
    """PMTU_RAISE_TIMER: a completed search is tried again upwards this often."""


@dataclass
class Counters:
    probes_sent: int = 0
    probes_acked: int = 0
    probes_lost: int = 0
    ptb_accepted: int = 0
    ptb_ignored: int = 0
    acks_ignored: int = 0
    black_holes: int = 0


def _input(method):
    """An input of PathMtu: whatever it changed, the owner is told (`watch`), so its
    bookkeeping looks at this path again, whoever called it."""
    @functools.wraps(method)
    def told(self, *args):
        try:
            return method(self, *args)
        finally:
            if self.watch is not None:
                self.watch()
    return told


@dataclass
class PathMtu:
    """The path MTU to one peer; `mtu` is the largest outer packet known to get through.

    Always base <= mtu <= max: `max` is the local route's MTU (nothing larger can leave), `base`
    the floor the search never goes below (RFC 8899 4.6.2: a PTB below it is ignored).
    """

    family: int
    route_mtu: int
    now: float
    timers: Timers = field(default_factory=Timers)
    probes_per_round: int = 4
    step: int = 1
    """Sizes are multiples of this: 4 for ESP (RFC 4303 2.4 aligns its payload and trailer),
    whose probe of a size between two steps would go out one step smaller."""
    watch: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    """Called after every input: the only way the path's state (mtu, next_timer, probes)
    changes, as it reads no clock."""

    def __post_init__(self) -> None:
        self.max = self._down(max(self.route_mtu, MIN_PLPMTU[self.family]))
        self.base = min(BASE_PLPMTU[self.family], self.max)
        self.mtu = self.base
        self.source = Source.BASE
        self.counters = Counters()
        self._high = self.max          # the search's upper end: not yet known to be too big
        self._in_flight: set[int] = set()
        self._round_due: float | None = None   # when the probes in flight are declared lost
        self._want_round = True                 # probes_to_send() starts a round
        self._acked_this_round = False
        self._silent_rounds = 0                 # rounds in a row with nothing acknowledged
        self._wake: float | None = None         # the next confirm, raise or ERROR retry
        self._raise_at = self.now + self.timers.raise_
        self.state = State.BASE

    # ------------------------------------------------------------------ inputs

    @_input
    def probes_to_send(self, now: float) -> list[int]:
        """Sizes to probe now; empty between rounds. Each is in flight until acknowledged or
        the probe timer ends the round."""
        if not self._want_round or self._in_flight:
            return []
        self._want_round = False
        self._acked_this_round = False
        if self.state in (State.BASE, State.ERROR):
            sizes = [self.base]
        else:
            sizes = [self.mtu] + self._spread(self.mtu, self._high)
        self._in_flight = set(sizes)
        self._round_due = now + self.timers.probe
        self.counters.probes_sent += len(sizes)
        return sorted(self._in_flight)

    @_input
    def on_probe_acked(self, now: float, size: int) -> None:
        if size not in self._in_flight:
            self.counters.acks_ignored += 1   # late, duplicated or never sent: changes nothing
            return
        self._in_flight.discard(size)
        self.counters.probes_acked += 1
        self._acked_this_round = True
        self._silent_rounds = 0
        if size > self.mtu or (size == self.mtu and self.source is not Source.PROBE):
            self._set(size, Source.PROBE)
        if self.state in (State.BASE, State.ERROR):
            self.state = State.SEARCHING
            self._want_round = True
            self._in_flight.clear()
            self._round_due = None
        elif not self._in_flight:
            self._end_round(now)

    @_input
    def on_packet_too_big(self, now: float, mtu: int) -> bool:
        """A validated PTB naming `mtu`: accepted only if base <= mtu < the size it is about
        (RFC 8899 4.6.2: never raise, never below the base). True if it changed anything."""
        largest = max(self._in_flight | {self.mtu})
        if mtu < self.base or mtu >= largest:
            self.counters.ptb_ignored += 1
            return False
        self.counters.ptb_accepted += 1
        self._high = min(self._high, self._down(mtu))
        self._in_flight = {s for s in self._in_flight if s <= mtu}
        if mtu < self.mtu:
            self._set(mtu, Source.ICMP)
            self._search(now)   # confirm it (and find nothing larger) by probing
        elif not self._in_flight:
            self._end_round(now)
        return True

    @_input
    def on_local_mtu(self, now: float, mtu: int) -> None:
        """The route's MTU changed, or a send failed with EMSGSIZE naming it: local and
        trusted, it sets the ceiling (and the base, if the route itself is smaller)."""
        mtu = self._down(max(mtu, MIN_PLPMTU[self.family]))
        raised = mtu > self.max
        self.max = mtu
        self.base = min(BASE_PLPMTU[self.family], mtu)
        self._high = min(self._high, mtu) if not raised else mtu
        self._in_flight = {s for s in self._in_flight if s <= mtu}
        if self.mtu > mtu:
            self._set(mtu, Source.ROUTE)
        elif self.mtu < self.base:   # a larger route raised the base too
            self._set(self.base, Source.BASE)
        if raised or self.state is State.SEARCHING:
            self._search(now)

    @_input
    def on_black_hole_suspected(self, now: float) -> None:
        """Full-size packets seem lost: confirm the current size now (RFC 8899 4.3)."""
        if self.state is State.SEARCH_COMPLETE and not self._in_flight:
            self._want_round = True
            self._wake = None

    @_input
    def handle_timer(self, now: float) -> None:
        if self._round_due is not None and now >= self._round_due:
            self._end_round(now)
        elif self._wake is not None and now >= self._wake:
            self._wake = None
            if self.state is State.SEARCH_COMPLETE and self.mtu < self.max \
                    and now >= self._raise_at:
                self._high = self.max   # PMTU_RAISE_TIMER: try upwards again
                self.state = State.SEARCHING
            self._want_round = True

    def next_timer(self) -> float | None:
        """When handle_timer() or probes_to_send() is due (0.0: at once, a round is wanted);
        None if nothing is pending."""
        if self._want_round and not self._in_flight:
            return 0.0
        if self._round_due is not None:
            return self._round_due
        return self._wake

    # ------------------------------------------------------------------ search

    def _spread(self, low: int, high: int) -> list[int]:
        """Up to probes_per_round sizes spread over (low, high], high always among them."""
        span = high - low
        if span <= 0:
            return []
        n = min(self.probes_per_round, span)
        return sorted({size for i in range(1, n + 1)
                       if (size := self._down(low + (span * i) // n)) > low})

    def _down(self, size: int) -> int:
        return size - size % self.step

    def _end_round(self, now: float) -> None:
        lost = self._in_flight
        self._in_flight = set()
        self._round_due = None
        self.counters.probes_lost += len(lost)
        if not self._acked_this_round:
            self._silent_rounds += 1
            if self._silent_rounds < self.timers.max_probes:
                self._want_round = True
            elif self.state is State.SEARCHING or self.state is State.SEARCH_COMPLETE:
                self._black_hole(now)
            else:  # not even the base size: ERROR, tried again at the confirm interval
                self.state = State.ERROR
                self._wake = now + self.timers.confirm
            return
        larger = [s for s in lost if s > self.mtu]
        if larger:   # lost while a smaller one arrived: the size is what failed
            self._high = min(self._high, self._down(min(larger) - 1))
        if self._high <= self.mtu:
            self._complete(now)
        else:
            self.state = State.SEARCHING
            self._want_round = True

    def _black_hole(self, now: float) -> None:
        """A size that used to work stops working: back to the base and search again
        (RFC 8899 5.2: a black hole returns the PL to BASE)."""
        self.counters.black_holes += 1
        self._silent_rounds = 0
        self._set(self.base, Source.BASE)
        self._high = self.max
        self.state = State.BASE
        self._want_round = True

    def _search(self, now: float) -> None:
        self.state = State.SEARCHING
        self._wake = None
        if not self._in_flight:
            self._want_round = True

    def _complete(self, now: float) -> None:
        if self.state is not State.SEARCH_COMPLETE:
            self._raise_at = now + self.timers.raise_
        self.state = State.SEARCH_COMPLETE
        self._high = self.mtu
        self._wake = now + self.timers.confirm

    def _set(self, mtu: int, source: Source) -> None:
        self.mtu = max(self.base, min(self._down(mtu), self.max))
        self.source = source


class Paths:
    """Every peer's PathMtu, for the daemon: one timer, one list of probes, and the peers whose
    path MTU changed since it last asked (to push into the datapath's SAs and the status).

    Each call costs what changed, not the number of peers (issue 14): a path's state changes
    only through its inputs, each of which touches the peer (PathMtu.watch), so probes and
    changes are looked for among the touched peers only, and a heap holds each path's
    next_timer, filed again when touched (stale entries are skipped: lazy deletion)."""

    def __init__(self, timers: Timers | None = None, step: int = 1) -> None:
        self.timers = timers or Timers()
        self.step = step
        self._paths: dict[str, PathMtu] = {}
        self._told: dict[str, int] = {}
        self._heap: list[tuple[float, str]] = []
        self._filed: dict[str, float] = {}   # the peer's live heap entry: its next_timer
        # touched since the heap, probes_to_send, changed last looked (dicts keep the order)
        self._unfiled: dict[str, None] = {}
        self._unprobed: dict[str, None] = {}
        self._unreported: dict[str, None] = {}

    def track(self, peer: str, family: int, route_mtu: int, now: float) -> PathMtu:
        """The peer's PathMtu, made on first use (its first SA); later SAs share it."""
        if peer not in self._paths:
            if len(self._paths) >= MAX_PATHS:
                self.forget(next(iter(self._paths)))
            self._paths[peer] = PathMtu(family, route_mtu, now, self.timers, step=self.step,
                                        watch=functools.partial(self._touch, peer))
            self._touch(peer)
        return self._paths[peer]

    def forget(self, peer: str) -> None:
        """The peer's last SA is gone."""
        self._paths.pop(peer, None)
        self._told.pop(peer, None)
        self._filed.pop(peer, None)
        for touched in (self._unfiled, self._unprobed, self._unreported):
            touched.pop(peer, None)

    def __len__(self) -> int:
        return len(self._paths)

    def get(self, peer: str) -> PathMtu | None:
        return self._paths.get(peer)

    def probes_to_send(self, now: float) -> list[tuple[str, int]]:
        touched, self._unprobed = self._unprobed, {}
        out = []
        for peer in touched:
            path = self._paths.get(peer)
            if path is not None:
                out += [(peer, size) for size in path.probes_to_send(now)]
                self._unprobed.pop(peer, None)   # asked just now: nothing more until touched
        return out

    def handle_timer(self, now: float) -> None:
        self._file()
        due: dict[str, None] = {}
        while self._heap and self._heap[0][0] <= now:
            timer, peer = heapq.heappop(self._heap)
            if self._filed.get(peer) == timer:
                del self._filed[peer]
                due[peer] = None
        for peer in due:   # each once, though its next timer may be due again at once
            self._paths[peer].handle_timer(now)

    def next_timer(self) -> float | None:
        self._file()
        while self._heap and self._filed.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def changed(self) -> list[tuple[str, PathMtu]]:
        """Peers whose path MTU is not what the last call reported (new peers included)."""
        touched, self._unreported = self._unreported, {}
        out = [(peer, path) for peer in touched
               if (path := self._paths.get(peer)) is not None and self._told.get(peer) != path.mtu]
        for peer, path in out:
            self._told[peer] = path.mtu
        return out

    def _touch(self, peer: str) -> None:
        self._unfiled[peer] = self._unprobed[peer] = self._unreported[peer] = None

    def _file(self) -> None:
        """The touched peers' timers into the heap; the heap rebuilt when stale entries
        outnumber live ones (they are dropped only on reaching the top)."""
        touched, self._unfiled = self._unfiled, {}
        for peer in touched:
            path = self._paths.get(peer)
            timer = path.next_timer() if path is not None else None
            if timer == self._filed.get(peer):
                continue
            if timer is None:
                del self._filed[peer]
            else:
                self._filed[peer] = timer
                heapq.heappush(self._heap, (timer, peer))
        if len(self._heap) > 2 * len(self._filed) + 64:
            self._heap = [(timer, peer) for peer, timer in self._filed.items()]
            heapq.heapify(self._heap)


# ---------------------------------------------------------------------- what the datapath needs


@dataclass(frozen=True)
class EspOverhead:
    """What one ESP SA adds to an inner packet (RFC 4303 2, tunnel mode; RFC 3948 2.1 UDP)."""

    outer_family: int
    udp: bool
    iv: int
    """8 for AES-GCM (RFC 4106 3.1), 16 for AES-CBC (RFC 3602 3)."""
    icv: int
    """16 for AES-GCM-16; the integrity algorithm's truncated length otherwise."""
    align: int = 4
    """ESP pads payload + 2 trailer bytes to this (RFC 4303 2.4): 4, or the cipher's block."""

    @property
    def fixed(self) -> int:
        """Every byte but the inner packet, its padding and the 2-byte trailer."""
        return (20 if self.outer_family == 4 else 40) + (8 if self.udp else 0) + 8 + self.iv \
            + self.icv

    def inner_mtu(self, path_mtu: int) -> int:
        """The largest inner packet whose ESP packet fits path_mtu: what MSS clamping and the
        too-big sent to local senders use (RFC 4301 8.2.1: the SA's PMTU less its overhead)."""
        room = path_mtu - self.fixed
        return max(0, room - room % self.align - 2)

    def outer_size(self, inner_len: int) -> int:
        """The outer packet an inner packet of inner_len bytes becomes (padding included)."""
        padded = -(-(inner_len + 2) // self.align) * self.align
        return self.fixed + padded


def mss(inner_mtu: int, inner_family: int) -> int:
    """The TCP MSS that fits inner_mtu: less the IP and TCP headers (RFC 879, RFC 8200 8.3)."""
    return inner_mtu - (40 if inner_family == 4 else 60)


def too_big_mtu(inner_mtu: int, inner_family: int) -> int:
    """The MTU to name in the ICMP too-big sent to a local sender. IPv6 may not be told less
    than 1280 (RFC 8200 5): below that the outer packet is fragmented instead (RFC 4459 3)."""
    return max(inner_mtu, IPV6_MIN_MTU) if inner_family == 6 else inner_mtu


def fragment_outer(inner_mtu: int, inner_family: int, inner_len: int, df: bool) -> bool:
    """Whether an inner packet that does not fit is carried in a fragmented outer packet
    rather than refused with a too-big: IPv6 packets of up to 1280 bytes (which the sender
    cannot make smaller) and IPv4 without DF whose fragments the tunnel does not make itself."""
    if inner_len <= inner_mtu:
        return False
    if inner_family == 6:
        return inner_len <= IPV6_MIN_MTU
    return not df


class PathMtuDriver:
    """Paths wired to a datapath, for the daemon (docs/pmtu.md): `install()` when it adds a
    peer's SAs (they start at the path's current MTU), `on_probe_acked()` for each
    PathMtuProbeAcked event, `follow()` with the tunnels each event changed, `tick()` at the
    time it returns. Probes go out through `datapath.probe(peer, size)`; each change of a
    peer's path MTU goes to its SAs through `datapath.set_path_mtu(peer, mtu)`. No clock and no
    socket of its own. Every call costs the peers it concerns and the timers due, whatever the
    number of peers (issue 14)."""

    def __init__(self, timers: Timers | None = None) -> None:
        self.paths = Paths(timers, step=ESP_STEP)
        self._peer_of: dict[Pair, str] = {}   # a tunnel's pair -> its peer
        self._tunnels = Counter[str]()            # peer -> tunnels through it
        self._installed: set[str] = set()         # peers given an SA since the last follow()

    def install(self, peer: str, family: int, route_mtu: int, now: float) -> int:
        """The path MTU a new SA to `peer` starts with (tracking the peer from now on)."""
        self._installed.add(peer)
        return self.paths.track(peer, family, route_mtu, now).mtu

    def forget(self, peer: str) -> None:
        self.paths.forget(peer)

    def follow(self, changes: Mapping[Pair, Tunnel | None]) -> None:
        """The tunnels an event changed (Opportunist.take_tunnel_changes: per pair, its
        tunnel now or None): a peer's search ends with its last tunnel, so tracked paths do
        not accumulate as peers come and go; a peer given an SA that no tunnel took (a
        refused CHILD SA) is forgotten too."""
        for pair, tunnel in changes.items():
            before = self._peer_of.pop(pair, None)   # counted when its tunnel came
            if tunnel is not None:
                self._peer_of[pair] = peer = str(tunnel.peer)
                self._tunnels[peer] += 1
            if before is not None:
                self._tunnels[before] -= 1
                if not self._tunnels[before]:
                    del self._tunnels[before]
                    self.paths.forget(before)
        for peer in self._installed:
            if peer not in self._tunnels:   # (a set less dict keys would copy every key)
                self.paths.forget(peer)
        self._installed.clear()

    def on_probe_acked(self, datapath, peer: str, size: int, now: float) -> None:
        path = self.paths.get(peer)
        if path is not None:
            path.on_probe_acked(now, size)
            self.tick(datapath, now)     # the next round at once

    def on_too_big(self, datapath, peer: str, mtu: int, local: bool, now: float) -> None:
        """A datagram to `peer` was too big (ICMP from the path, or the local route): RFC
        8899 4.6.2's checks are PathMtu's; a change goes to the SAs at once."""
        path = self.paths.get(peer)
        if path is None:
            return
        if local:
            path.on_local_mtu(now, mtu)
        else:
            path.on_packet_too_big(now, mtu)
        self.tick(datapath, now)

    def on_black_hole_suspected(self, datapath, peer: str, now: float) -> None:
        """The datapath saw a large TCP segment sent again (PathMtuBlackHole): the path's
        size is confirmed at once (RFC 8899 4.3), not at the next confirmation."""
        path = self.paths.get(peer)
        if path is not None:
            path.on_black_hole_suspected(now)
            self.tick(datapath, now)

    def tick(self, datapath, now: float) -> float | None:
        """Timers due, probes to send, changes to push; when to tick next (None: nothing)."""
        self.paths.handle_timer(now)
        for peer, size in self.paths.probes_to_send(now):
            datapath.probe(peer, size)
        for peer, path in self.paths.changed():
            datapath.set_path_mtu(peer, path.mtu)
        return self.paths.next_timer()

    def next_timer(self) -> float | None:
        """When tick() is due next (for a daemon that joins every part's next_timer)."""
        return self.paths.next_timer()

    def status(self, peer: str) -> dict:
        """What `oe status` shows of the peer's path, per SA; {} for a peer not tracked."""
        path = self.paths.get(peer)
        if path is None:
            return {}
        return {"path_mtu": path.mtu, "path_mtu_source": path.source.value,
                "pmtu_state": path.state.value}
