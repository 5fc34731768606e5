# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-packet engine's Python face: class Datapath, and what the rest of oe imports.

Its parts are in oe/dp/ (docs/architecture.md, section 4): the classifier, the SA table and its
accounting, ESP, the replay window, holds, events, output batches, the outbound and inbound
pipelines and the loop threads, with the Linux socket and TUN offload code in oe/dp/csrc/.
"""

import hashlib
import ipaddress

from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

from oe.dp.batch cimport OutBatch, api_batch, batch_flush, batch_free, path_mtu_error, send_clear
from oe.dp.classifier cimport Classifier as CClassifier
from oe.dp.codes cimport (C_MALFORMED, C_PMTU_PROBES, C_SA_REFUSED, C_TUN_READ,
                          C_UNKNOWN_SPI, R_EXPIRED, R_MALFORMED, R_SEQUENCE, R_UNKNOWN_SPI,
                          count)
from oe.dp.core cimport DpCore
from oe.dp.esp cimport ESP_HDR, aead_context, esp_open, esp_seal, fetch_ciphers
from oe.dp.events cimport (EV_ACQUIRE, EV_BLACK_HOLE, EV_IKE, EV_PATH_MTU, EV_PROBE_ACK,
                           EV_REPLAY, DpEvent, ev_free, ev_init, ev_pop)
from oe.dp.holds cimport HOLD_BUCKETS, Hold, hold_mark, holds_free, holds_init
from oe.dp.inbound cimport dp_inbound
from oe.dp.loop cimport LOOP_IN, LOOP_OUT, LoopThread, loop_join, loop_sockets, loop_start
from oe.dp.outbound cimport dp_outbound, dp_probe, hold_recheck
from oe.dp.packet cimport oe_rd32
from oe.dp.posix cimport (EFD_CLOEXEC, EFD_NONBLOCK, eventfd, sys_close, sys_read,
                          sys_write)
from oe.dp.replay cimport replay_init
from oe.dp.sa cimport (CTX_API, DIR_IN, DIR_OUT, ENCAP_RAW, ENCAP_UDP, FIRED_HARD, FIRED_SOFT,
                       NCTX, PENDING_AUTH, PENDING_HARD, PENDING_REPLAY, PENDING_SOFT, EspSa,
                       SaTable, sa_account, sa_admit, sa_db_free, sa_db_init, sa_find, sa_fire,
                       sa_free, sa_refused, sa_sweep, sa_table_put, sa_table_remove)
from oe.dp.sync cimport (oe_and32, oe_load64, oe_load_int, oe_mutex_lock, oe_mutex_unlock,
                         oe_now, oe_rd_lock, oe_rw_unlock, oe_store_int, oe_swap_int, oe_wr_lock)

from oe.dp.classifier import FLOW_RECORD_SIZE, Classifier
from oe.dp.codes import COUNTER_NAMES, REASONS
from oe.dp.esp import EspError, esp_overhead, gcm_decrypt, gcm_encrypt
from oe.dp.replay import ReplayWindow
from oe.dp.saspec import ANY_PORT, DF_POLICIES, Direction, Encap, SaSpec, ts_range
from oe.dpevents import (Acquire, AuthFailure, IkeMessage, PathMtuBlackHole, PathMtuProbeAcked,
                         PathMtuTooBig, ReplayFailure, SaExpired, SaSoftLimit)

__all__ = ["ANY_PORT", "COUNTER_NAMES", "DF_POLICIES", "FLOW_RECORD_SIZE", "REASONS", "Classifier",
           "Datapath",
           "Direction", "Encap", "EspError", "ReplayWindow", "SaSpec", "esp_overhead",
           "gcm_decrypt", "gcm_encrypt"]


cdef class Datapath:
    """ESP SAs, holds, events and the native loops around one compiled Classifier.

    Without start() every packet function works from Python (tests, tools); start() runs the
    outbound (TUN) and inbound (sockets) threads, which release the GIL for good.
    """

    cdef DpCore *c
    cdef readonly CClassifier classifier
    cdef LoopThread _threads[2]
    cdef int _nthreads
    cdef uint32_t _next_handle  # outbound handles: 1, 2, ... never reused
    cdef dict _keys             # SHA-256 of each live SA's KEYMAT -> (direction, handle)
    cdef dict _digests          # and back
    cdef dict _by_peer          # packed peer address -> {(inbound, handle)}: a peer's SAs
                                # without a walk of every slot (issue 14)

    def __cinit__(self, *, uint64_t replay_window=4096, uint32_t hold_packets=64,
                  uint32_t hold_bytes=256 * 1024, double hold_timeout=60.0,
                  uint32_t max_holds=1024, uint64_t max_hold_total=32 * 1024 * 1024,
                  CClassifier classifier=None, str df="copy"):
        fetch_ciphers()
        if df not in DF_POLICIES:
            raise ValueError(f"df is one of {', '.join(DF_POLICIES)} (RFC 4301 8.1), not {df!r}")
        if replay_window < 1 or replay_window > 0x7FFFFFFF:
            raise ValueError("the replay window is 1 to 2^31 - 1 packets")
        if max_holds < 1:
            raise ValueError("max_holds is at least 1 (a %trap needs its hold)")
        self.c = <DpCore *>calloc(1, sizeof(DpCore))
        if self.c == NULL:
            raise MemoryError()
        self.c.wake_fds[0] = self.c.wake_fds[1] = -1
        if ev_init(&self.c.events) < 0:
            raise OSError("no memory or no eventfd for the event queue")
        holds_init(&self.c.holds)
        sa_db_init(&self.c.sas)
        self.c.wake_fds[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.c.wake_fds[1] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.c.wake_fds[0] < 0 or self.c.wake_fds[1] < 0:
            raise OSError("eventfd failed")
        self.c.replay_window = replay_window
        self.c.df_policy = DF_POLICIES.index(df)
        self.c.holds.hold_packets = hold_packets
        self.c.holds.hold_bytes = hold_bytes
        self.c.holds.timeout = hold_timeout
        self.c.holds.max_holds = max_holds
        self.c.holds.max_total = max_hold_total
        self.c.tun_mtu = 1400
        self.c.tun_fd = -1
        self._next_handle = 1
        self._keys = {}
        self._digests = {}
        self._by_peer = {}
        for k in range(6):
            self.c.fds[k] = -1
        self.classifier = classifier if classifier is not None else Classifier()

    def __dealloc__(self):
        cdef int k
        if self.c == NULL:
            return
        self.stop()
        sa_db_free(&self.c.sas)
        holds_free(&self.c.holds)
        ev_free(&self.c.events)
        for k in range(2):
            if self.c.wake_fds[k] >= 0:
                sys_close(self.c.wake_fds[k])
        free(self.c)
        self.c = NULL

    cdef void _recheck_holds(self, selectors=None):
        """Have the outbound loop (routine_housekeeping) recheck the holds of the pairs whose
        host selectors changed, or every hold (`selectors` None, or one wider than a pair).
        One wake-up per batch of work it has not yet taken: a burst of acquires changes the
        table thousands of times a second, and each write to a sleeping thread's eventfd
        costs a cross-CPU wake-up."""
        cdef uint64_t one = 1
        cdef uint8_t src[16]
        cdef uint8_t dst[16]
        cdef bint idle
        pairs = [] if selectors is not None else None
        for sel in selectors or ():
            if sel.src.prefixlen != sel.src.max_prefixlen or \
                    sel.dst.prefixlen != sel.dst.max_prefixlen:
                pairs = None
                break
            pairs.append((sel.version, sel.src.network_address.packed,
                          sel.dst.network_address.packed))
        oe_mutex_lock(&self.c.holds.lock)
        try:
            idle = not self.c.holds.nmarked and not oe_load_int(&self.c.holds.recheck)
            for version, s, d in pairs or ():
                memcpy(src, <const char *>s, len(s))
                memcpy(dst, <const char *>d, len(d))
                if not hold_mark(&self.c.holds, version, src, dst):
                    pairs = None
                    break
            if pairs is None:
                oe_store_int(&self.c.holds.recheck, 1)
            if idle and (self.c.holds.nmarked or oe_load_int(&self.c.holds.recheck)):
                sys_write(self.c.wake_fds[0], &one, 8)
        finally:
            oe_mutex_unlock(&self.c.holds.lock)

    cdef void _wake(self) noexcept:
        cdef uint64_t one = 1
        sys_write(self.c.wake_fds[0], &one, 8)
        sys_write(self.c.wake_fds[1], &one, 8)

    @property
    def df(self) -> str:
        """The outer IPv4 DF policy (RFC 4301 8.1): "copy", "set" or "clear"."""
        return DF_POLICIES[self.c.df_policy]

    cdef SaTable *_table(self, direction) except NULL:
        return &self.c.sas.inb if Direction(direction) is Direction.IN else &self.c.sas.out

    # ------------------------------------------------------------------------- SAs

    def add_sa(self, spec: SaSpec, *, now: float | None = None) -> int:
        """Install the SA `spec` describes; its handle, for del_sa(), sa_stats(), move_sa()
        and SaAction.

        Inbound SAs are found by the SPI we chose, so an inbound handle is its SPI. Outbound
        SPIs are the peer's choice, and two peers may pick the same one: an outbound SA gets a
        fresh local handle, never reused (issue 10, 1). Refused (ValueError, counted as
        sa_refused), never replaced: an inbound SPI already in use, and a KEYMAT some live SA
        already has (re-installing a key would restart its sequence numbers, hence its GCM
        nonces: RFC 4106 3.1). Lifetimes are counted from `now` (CLOCK_MONOTONIC, default: the
        clock).
        """
        cdef EspSa *sa
        cdef int k
        cdef uint32_t handle
        cdef double t0 = oe_now() if now is None else now
        if not isinstance(spec, SaSpec):
            raise TypeError("add_sa takes an SaSpec")
        cdef bint inbound = spec.direction is Direction.IN
        cdef bytes key = spec.key
        window = self.c.replay_window if spec.replay_window is None else spec.replay_window
        mtu = _inner_mtu(spec.path_mtu, spec.family, spec.encap, spec.tunnel)
        digest = hashlib.sha256(key).digest()
        if inbound and sa_find(&self.c.sas.inb, spec.spi) != NULL:
            self._refuse(f"inbound SPI {spec.spi:08x} is already installed")
        if digest in self._keys:
            used = self._keys[digest]
            self._refuse(f"this KEYMAT is already installed ({used[0]}bound SA {used[1]:#x}): "
                         "re-installing it would repeat GCM nonces")
        if not inbound and self._next_handle == 0xFFFFFFFF:
            self._refuse("no outbound SA handle left")
        handle = spec.spi if inbound else self._next_handle
        sa = <EspSa *>calloc(1, sizeof(EspSa))
        if sa == NULL:
            raise MemoryError()
        try:
            sa.handle = handle
            if replay_init(&sa.replay, window) != 0:
                raise MemoryError()
            for k in range(NCTX):
                sa.ctx[k] = aead_context(key, not inbound)
            _fill_sa(sa, spec, t0)
            sa.path_mtu = spec.path_mtu
            sa.mtu = mtu
        except BaseException:
            sa_free(sa)
            raise
        with nogil:
            oe_wr_lock(&self.c.sas.lock)
            k = sa_table_put(&self.c.sas.inb if inbound else &self.c.sas.out, sa)
            oe_rw_unlock(&self.c.sas.lock)
        if k != 0:
            sa_free(sa)
            raise MemoryError()
        if not inbound:
            self._next_handle += 1
        self._keys[digest] = (str(spec.direction), handle)
        self._digests[spec.direction, handle] = digest
        self._by_peer.setdefault(_peer_of(sa), set()).add((inbound, handle))
        return handle

    cdef _refuse(self, str why):
        count(self.c.counters, C_SA_REFUSED)
        raise ValueError(f"add_sa refused: {why}")

    def move_sa(self, uint32_t handle, direction, peer, int peer_port) -> bool:
        """The peer's NAT mapping changed (RFC 7296 2.23): send to / accept from its new
        address and port. Keys, sequence numbers and the replay window stay as they are; an
        SA is never re-added for this, which would restart its IVs under the same key."""
        cdef EspSa *sa
        cdef bytes peer_b = ipaddress.ip_address(peer).packed
        cdef SaTable *table = self._table(direction)
        with nogil:
            oe_wr_lock(&self.c.sas.lock)
        sa = sa_find(table, handle)
        if sa != NULL and len(peer_b) == (4 if sa.family == 4 else 16):
            self._unpeer(sa, table == &self.c.sas.inb)
            memcpy(sa.peer, <const char *>peer_b, len(peer_b))
            sa.peer_port = peer_port
            self._by_peer.setdefault(peer_b, set()).add((table == &self.c.sas.inb, handle))
        oe_rw_unlock(&self.c.sas.lock)
        return sa != NULL

    cdef void _unpeer(self, EspSa *sa, bint inbound):
        """Forget the SA in its peer's set (it goes, or moves to another address)."""
        peer_b = _peer_of(sa)
        same = self._by_peer.get(peer_b)
        if same is not None:
            same.discard((inbound, sa.handle))
            if not same:
                del self._by_peer[peer_b]

    def set_path_mtu(self, handle_or_peer, int path_mtu) -> int:
        """The path MTU to a peer changed (learned, probed: docs/pmtu.md): set it on one
        outbound SA (by its handle) or on every SA, both directions, to a peer (by its
        address). The inner MTU follows: the too-big sent to local senders and the MSS clamp
        (RFC 4301 8.2.1). How many SAs changed; ValueError if no ESP fits in it."""
        cdef EspSa *sa
        cdef int changed = 0
        if isinstance(handle_or_peer, int):
            which = ((False, handle_or_peer),)
        else:
            which = self._by_peer.get(ipaddress.ip_address(handle_or_peer).packed, ())
        with nogil:
            oe_wr_lock(&self.c.sas.lock)
        try:
            for inbound, handle in which:
                sa = sa_find(&self.c.sas.inb if inbound else &self.c.sas.out, handle)
                if sa == NULL:
                    continue
                sa.mtu = _inner_mtu(path_mtu, sa.family,
                                    "udp" if sa.encap == ENCAP_UDP else "esp", sa.tunnel)
                sa.path_mtu = path_mtu
                changed += 1
        finally:
            oe_rw_unlock(&self.c.sas.lock)
        return changed

    def del_sa(self, uint32_t handle, direction) -> bool:
        """Remove an SA by its handle; True if it existed. Packets in flight finish under the
        read lock."""
        cdef EspSa *sa
        cdef SaTable *table = self._table(direction)
        with nogil:
            oe_wr_lock(&self.c.sas.lock)
            sa = sa_table_remove(table, handle)
            oe_rw_unlock(&self.c.sas.lock)
        if sa != NULL:
            del self._keys[self._digests.pop((Direction(direction), handle))]
            self._unpeer(sa, table == &self.c.sas.inb)
        sa_free(sa)
        return sa != NULL

    def sa_stats(self, uint32_t handle, direction) -> dict | None:
        """Counters of one SA (by its handle), or None."""
        cdef EspSa *sa
        cdef SaTable *table = self._table(direction)
        with nogil:
            oe_rd_lock(&self.c.sas.lock)
        try:
            sa = sa_find(table, handle)
            return None if sa == NULL else _sa_dict(sa)
        finally:
            oe_rw_unlock(&self.c.sas.lock)

    def sas(self) -> list:
        """Every SA with its counters."""
        with nogil:
            oe_rd_lock(&self.c.sas.lock)
        try:
            return _table_dicts(&self.c.sas.out) + _table_dicts(&self.c.sas.inb)
        finally:
            oe_rw_unlock(&self.c.sas.lock)

    def check_lifetimes(self, now=None) -> None:
        """Fire time-based soft/hard events due at `now` (the loops do this twice a second)."""
        sa_sweep(&self.c.events, &self.c.sas, oe_now() if now is None else now)

    # ------------------------------------------------------------------ eroutes and holds

    def replace_eroutes(self, table) -> None:
        """Swap in an oe.eroute.ErouteTable atomically; holds it no longer traps are released.
        Costs in proportion to the table (it is compared with the one in force)."""
        self.classifier.replace(table)
        self._recheck_holds()

    def update_eroutes(self, add=(), remove=()) -> None:
        """Atomically remove the eroutes of the selectors `remove`, then add the Eroutes `add`
        (replacing any of the same selector): the cost of one change does not grow with the
        table (issue 10, 6). Holds the table no longer traps are released."""
        self.classifier.update(add, remove)
        self._recheck_holds([eroute.selector for eroute in add] + list(remove))

    def release_holds(self, now=None, every=True) -> list:
        """Without the loops: recheck holds now and return what their release produced;
        every=False: only those the loop would recheck after the eroute changes since."""
        cdef double t = oe_now() if now is None else now
        result = []
        cdef OutBatch *b = api_batch(result)
        try:
            hold_recheck(self.c, self.classifier, CTX_API, b, t, every, every)
            batch_flush(self.c, b)
        finally:
            batch_free(b)
        return result

    def holds(self) -> list:
        """(src, dst, packets queued) for every %hold the datapath keeps."""
        cdef Hold *h
        cdef int k
        result = []
        oe_mutex_lock(&self.c.holds.lock)
        try:
            for k in range(HOLD_BUCKETS):
                h = self.c.holds.buckets[k]
                while h != NULL:
                    result.append((_address(h.src, h.version), _address(h.dst, h.version),
                                   h.npkts))
                    h = h.next
        finally:
            oe_mutex_unlock(&self.c.holds.lock)
        return result

    # ---------------------------------------------------------------------- events

    @property
    def events_fd(self) -> int:
        """Readable when events are waiting (an eventfd: loop.add_reader(fd, ...))."""
        return self.c.events.fd

    def read_events(self) -> list:
        """Drain the events (oe.dpevents dataclasses): lifetime events first, then the queue
        oldest first."""
        cdef uint64_t junk
        cdef DpEvent e
        sys_read(self.c.events.fd, &junk, 8)
        result = (self._lifetime_events() if oe_swap_int(&self.c.events.lifetime_pending, 0)
                  else [])
        while ev_pop(&self.c.events, &e):
            result.append(self._event(&e))
        return result

    cdef list _lifetime_events(self):
        """Collect the soft / hard limit events SAs have raised (sa_fire), clearing them."""
        cdef SaTable *table
        cdef EspSa *sa
        cdef uint32_t i, bits
        cdef int k
        result = []
        with nogil:
            oe_rd_lock(&self.c.sas.lock)
        for k in range(2):
            table = &self.c.sas.out if k == 0 else &self.c.sas.inb
            for i in range(table.cap):
                sa = table.slots[i]
                if sa == NULL:
                    continue
                bits = oe_and32(&sa.pending, ~(<uint32_t>(PENDING_SOFT | PENDING_HARD)))
                direction = Direction.IN if sa.direction == DIR_IN else Direction.OUT
                if bits & PENDING_SOFT:
                    result.append(SaSoftLimit(spi=sa.spi, direction=direction,
                                              reason=REASONS[sa.soft_reason], handle=sa.handle))
                if bits & PENDING_HARD:
                    result.append(SaExpired(spi=sa.spi, direction=direction,
                                            reason=REASONS[sa.hard_reason], handle=sa.handle))
        oe_rw_unlock(&self.c.sas.lock)
        return result

    cdef object _event(self, DpEvent *e):
        cdef EspSa *sa
        if e.kind == EV_ACQUIRE:
            return Acquire(src=_address(e.src, e.version), dst=_address(e.dst, e.version),
                           proto=e.proto, sport=e.sport, dport=e.dport)
        if e.kind == EV_PATH_MTU:
            return PathMtuTooBig(peer=_address(e.src, e.version), mtu=e.count,
                                 local=bool(e.reason))
        if e.kind == EV_BLACK_HOLE:
            return PathMtuBlackHole(peer=_address(e.src, e.version))
        if e.kind == EV_PROBE_ACK:
            return PathMtuProbeAcked(peer=_address(e.src, e.version), size=e.count)
        if e.kind == EV_IKE:
            data = (<char *>e.data)[:e.length]
            free(e.data)
            return IkeMessage(src=_address(e.src, e.version), sport=e.sport, data=data,
                              dst=_address(e.dst, e.version))
        # Failure events are coalesced: re-arm so the next failure raises a new one.
        with nogil:
            oe_rd_lock(&self.c.sas.lock)
        sa = sa_find(&self.c.sas.inb, e.handle)
        if sa != NULL:
            oe_and32(&sa.pending,
                     <uint32_t>~(PENDING_REPLAY if e.kind == EV_REPLAY else PENDING_AUTH))
        oe_rw_unlock(&self.c.sas.lock)
        if e.kind == EV_REPLAY:
            return ReplayFailure(spi=e.spi, total=e.count)
        return AuthFailure(spi=e.spi, total=e.count)

    def stats(self) -> dict:
        """Global counters by name, then the holds in place and their caps."""
        result = {name: oe_load64(&self.c.counters[i]) for i, name in enumerate(COUNTER_NAMES)}
        oe_mutex_lock(&self.c.holds.lock)
        result.update(holds=self.c.holds.count, hold_total_bytes=self.c.holds.total,
                      max_holds=self.c.holds.max_holds, max_hold_total=self.c.holds.max_total)
        oe_mutex_unlock(&self.c.holds.lock)
        return result

    # ------------------------------------------------------ packet functions from Python

    def seal(self, uint32_t handle, packet) -> bytes:
        """ESP-encapsulate one IP packet on the outbound SA `handle` (no eroute, hold or MTU)."""
        cdef bytes data = bytes(packet)
        out = bytearray(len(data) + 64)
        cdef uint8_t[::1] view = out
        cdef uint64_t seq
        cdef int r
        with nogil:
            oe_rd_lock(&self.c.sas.lock)
        r = _seal_locked(self.c, handle, data, &view[0], len(out), &seq)
        oe_rw_unlock(&self.c.sas.lock)
        if r < 0:
            raise EspError(REASONS[-r])
        return bytes(out[:r])

    def open(self, esp) -> tuple:
        """Decapsulate one ESP packet: (spi, next header, payload); raise EspError if refused.

        Counts like the loops, but does not check selectors (see inbound() for the full path).
        """
        cdef bytes data = bytes(esp)
        out = bytearray(max(len(data), 16))
        cdef uint8_t[::1] view = out
        cdef int r, nh
        if len(data) < ESP_HDR:
            count(self.c.counters, C_MALFORMED)
            raise EspError(REASONS[R_MALFORMED])
        with nogil:
            oe_rd_lock(&self.c.sas.lock)
        r = _open_locked(self.c, data, &view[0], len(out), &nh)
        oe_rw_unlock(&self.c.sas.lock)
        if r < 0:
            raise EspError(REASONS[-r])
        return oe_rd32(<const uint8_t *><const char *>data), nh, bytes(out[:r])

    def probe(self, peer, int size):
        """Send a path MTU probe of `size` bytes (the outer IP packet) to `peer` on its newest
        outbound SA, with DF (docs/pmtu.md); the peer's answer comes back as a
        PathMtuProbeAcked event. The packet, sent on the clear raw socket when the loops run;
        None if there is no tunnel mode SA to the peer or the size cannot carry a probe."""
        cdef bytes peer_b = ipaddress.ip_address(peer).packed
        cdef int family = 4 if len(peer_b) == 4 else 6
        cdef int r
        cdef EspSa *sa = NULL
        cdef EspSa *s
        if not 0 < size <= 65535:
            raise ValueError(f"a probe of {size} bytes")
        plain = bytearray(size)
        out = bytearray(size)
        cdef uint8_t[::1] pv = plain
        cdef uint8_t[::1] ov = out
        with nogil:
            oe_rd_lock(&self.c.sas.lock)
        for inbound, handle in self._by_peer.get(peer_b, ()):   # its newest tunnel mode SA
            s = NULL if inbound else sa_find(&self.c.sas.out, handle)
            if s != NULL and s.tunnel and (sa == NULL or s.handle > sa.handle):
                sa = s
        r = 0 if sa == NULL else dp_probe(self.c, CTX_API, sa, size, &pv[0], &ov[0], size)
        oe_rw_unlock(&self.c.sas.lock)
        if r <= 0:
            return None
        count(self.c.counters, C_PMTU_PROBES)
        cdef bytes addr = peer_b + bytes(16 - len(peer_b))
        cdef const uint8_t *to = <const uint8_t *><const char *>addr
        with nogil:             # the clear raw socket (IP_HDRINCL), if the loops run
            send_clear(self.c, family, to, &ov[0], r)
        return bytes(out[:r])

    def path_mtu_error(self, peer, int spi, int mtu, bint local=False) -> bool:
        """One entry of a socket's error queue as the loops take it (IP_RECVERR, docs/pmtu.md):
        a datagram to `peer` starting with `spi` was too big for a hop of `mtu` (an ICMP), or
        for the local route (`local`, the kernel's EMSGSIZE: it quotes nothing). True if raised
        as a PathMtuTooBig event; False if it names none of our outbound SAs to that peer
        (counted `pmtu_too_big_ignored`)."""
        cdef bytes peer_b = ipaddress.ip_address(peer).packed
        cdef bytes dst = peer_b + bytes(16 - len(peer_b))
        return path_mtu_error(self.c, 4 if len(peer_b) == 4 else 6,
                              <const uint8_t *><const char *>dst, spi, mtu, local)

    def outbound(self, packet, now=None) -> list:
        """Process one packet as if read from the TUN: [(kind, address, port, bytes)].

        kind is "udp" (ESP-in-UDP to address:port), "esp" (raw ESP to address), "pass" (clear,
        to address) or "tun" (an ICMP error written back to the host).
        """
        cdef bytearray buf = bytearray(packet)
        cdef double t = oe_now() if now is None else now
        if len(buf) == 0:
            count(self.c.counters, C_MALFORMED)
            return []
        count(self.c.counters, C_TUN_READ)
        cdef uint8_t[::1] view = buf
        result = []
        cdef OutBatch *b = api_batch(result)
        try:
            dp_outbound(self.c, self.classifier, CTX_API, &view[0], len(buf), b, False, t)
            batch_flush(self.c, b)
        finally:
            batch_free(b)
        return result

    def inbound(self, data, src, int sport=4500, encap=Encap.UDP, now=None, dst=None) -> list:
        """Process one datagram as if received from `src` (UDP payload or raw ESP), sent to
        our address `dst` (None: unspecified)."""
        cdef bytes d = bytes(data)
        cdef double t = oe_now() if now is None else now
        cdef bytes srcb = ipaddress.ip_address(src).packed
        cdef int fam = 4 if len(srcb) == 4 else 6
        cdef bytes padded = srcb + bytes(16 - len(srcb))
        cdef bytes dstb = bytes(16) if dst is None else ipaddress.ip_address(dst).packed
        cdef bytes dst_padded = dstb + bytes(16 - len(dstb))
        cdef int how = ENCAP_UDP if Encap(encap) is Encap.UDP else ENCAP_RAW
        result = []
        cdef OutBatch *b = api_batch(result)
        try:
            dp_inbound(self.c, CTX_API, <const uint8_t *><const char *>d, len(d), fam,
                       <const uint8_t *><const char *>padded,
                       <const uint8_t *><const char *>dst_padded, sport, how, b, t)
            batch_flush(self.c, b)
        finally:
            batch_free(b)
        return result

    # ------------------------------------------------------------------------ loops

    def start(self, int tun_fd, *, int udp4=-1, int udp6=-1, int esp4=-1, int esp6=-1,
              int pass4=-1, int pass6=-1, int tun_mtu=1400, int threads=2,
              bint vnet_hdr=True) -> None:
        """Run the loops on these non-blocking file descriptors (owned by the caller).

        threads=1: one thread does both directions; a packet and its answer then need one
        thread wake-up fewer on each host. threads=2: one thread per direction.
        vnet_hdr: the TUN was opened with offloads (oe.tun.open_tun(offload=True)): reads may
        be TCP superframes, cut into segments here; writes coalesce segments of a flow.
        """
        cdef int k
        if self._nthreads:
            raise RuntimeError("the datapath is already running")
        if threads not in (1, 2):
            raise ValueError("threads is 1 or 2")
        self.c.tun_fd = tun_fd
        self.c.tun_mtu = tun_mtu
        self.c.vnet = vnet_hdr
        for k, fd in enumerate((udp4, udp6, esp4, esp6, pass4, pass6)):
            self.c.fds[k] = fd
        loop_sockets(self.c)
        oe_store_int(&self.c.running, 1)
        roles = [LOOP_OUT | LOOP_IN] if threads == 1 else [LOOP_OUT, LOOP_IN]
        for k, role in enumerate(roles):
            self._threads[k].core = self.c
            self._threads[k].classifier = <PyObject *>self.classifier
            self._threads[k].role = role
            if loop_start(&self._threads[k]) != 0:
                self.stop()
                raise OSError("cannot start a datapath thread")
            self._nthreads += 1

    def stop(self) -> None:
        """Stop the loops and wait for them."""
        cdef int k
        if not self._nthreads:
            return
        oe_store_int(&self.c.running, 0)
        self._wake()
        with nogil:
            for k in range(self._nthreads):
                loop_join(&self._threads[k])
        self._nthreads = 0


# ------------------------------------------------------------------------ helpers

cdef int _seal_locked(DpCore *c, uint32_t handle, bytes data, uint8_t *out, size_t cap,
                      uint64_t *seq) noexcept:
    """Datapath.seal() under the SA read lock: the ESP length, or -R_*."""
    cdef EspSa *sa = sa_find(&c.sas.out, handle)
    cdef int r
    if sa == NULL:
        return -R_UNKNOWN_SPI
    if not sa_admit(&c.events, sa, len(data), oe_now()):
        return -R_EXPIRED
    r = esp_seal(sa, CTX_API, <const uint8_t *><const char *>data, len(data), out, cap, seq)
    if r == -R_SEQUENCE:
        sa_fire(&c.events, sa, 1, R_SEQUENCE)
    if r >= 0:
        sa_account(&c.events, sa, len(data), seq[0], oe_now())
    return r


cdef int _open_locked(DpCore *c, bytes data, uint8_t *out, size_t cap, int *nh) noexcept:
    """Datapath.open() under the SA read lock: the payload length, or -R_* (counted)."""
    cdef EspSa *sa = sa_find(&c.sas.inb, oe_rd32(<const uint8_t *><const char *>data))
    cdef uint64_t seq
    cdef int r
    if sa == NULL:
        count(c.counters, C_UNKNOWN_SPI)
        return -R_UNKNOWN_SPI
    r = esp_open(sa, CTX_API, <const uint8_t *><const char *>data, len(data), out, cap, nh, &seq)
    if r < 0:
        sa_refused(&c.events, c.counters, sa, -r)
    else:
        sa_account(&c.events, sa, r, seq, oe_now())
    return r


cdef void _fill_sa(EspSa *sa, object spec, double t0) except *:
    """Everything of an SA but its handle, keys, replay window and MTU, from its SaSpec."""
    cdef bint inbound = spec.direction is Direction.IN
    cdef bytes key = spec.key
    local_b = spec.local.packed
    peer_b = spec.peer.packed
    ts_version, src_lo, src_hi = ts_range(spec.src_ts)
    _, dst_lo, dst_hi = ts_range(spec.dst_ts)
    sa.spi = spec.spi
    sa.direction = DIR_IN if inbound else DIR_OUT
    sa.tunnel = spec.tunnel
    sa.esn = spec.esn
    sa.encap = ENCAP_UDP if spec.encap is Encap.UDP else ENCAP_RAW
    sa.family = spec.family
    memcpy(sa.local, <const char *>local_b, len(local_b))
    memcpy(sa.peer, <const char *>peer_b, len(peer_b))
    sa.local_port = spec.local_port
    sa.peer_port = spec.peer_port
    memcpy(sa.salt, (<const char *>key) + len(key) - 4, 4)
    if inbound:
        sa.replay.top = spec.seq
    else:
        sa.seq = spec.seq
    sa.ts_version = ts_version
    memcpy(sa.ts_src_lo, <const char *>src_lo, len(src_lo))
    memcpy(sa.ts_src_hi, <const char *>src_hi, len(src_hi))
    memcpy(sa.ts_dst_lo, <const char *>dst_lo, len(dst_lo))
    memcpy(sa.ts_dst_hi, <const char *>dst_hi, len(dst_hi))
    sa.ts_proto = spec.proto
    sa.ts_sport_lo, sa.ts_sport_hi = spec.sport
    sa.ts_dport_lo, sa.ts_dport_hi = spec.dport
    sa.soft_bytes = spec.soft_bytes
    sa.hard_bytes = spec.hard_bytes
    sa.soft_packets = spec.soft_packets
    sa.hard_packets = spec.hard_packets
    sa.soft_time = t0 + spec.soft_time if spec.soft_time > 0 else 0.0
    sa.hard_time = t0 + spec.hard_time if spec.hard_time > 0 else 0.0


def _inner_mtu(int path_mtu, int family, encap, bint tunnel) -> int:
    """The largest inner packet an SA carries in a path MTU; ValueError if none fits."""
    cdef int mtu = path_mtu - esp_overhead(family, encap, tunnel)
    if mtu < 68 or path_mtu > 65535:
        raise ValueError(f"path MTU {path_mtu} leaves no room for ESP")
    return mtu


cdef object _address(const uint8_t *packed, int version):
    return ipaddress.ip_address((<char *>packed)[:4 if version == 4 else 16])


cdef bytes _peer_of(EspSa *sa):
    """The SA's peer, packed (the key of Datapath._by_peer)."""
    return (<const char *>sa.peer)[:4 if sa.family == 4 else 16]


cdef list _table_dicts(SaTable *t):
    cdef uint32_t i
    return [_sa_dict(t.slots[i]) for i in range(t.cap) if t.slots[i] != NULL]


cdef dict _sa_dict(EspSa *sa):
    return {
        "handle": sa.handle,
        "spi": sa.spi,
        "direction": Direction.IN if sa.direction == DIR_IN else Direction.OUT,
        "peer": _address(sa.peer, sa.family),
        "local": _address(sa.local, sa.family),
        "mode": "tunnel" if sa.tunnel else "transport",
        "encap": Encap.UDP if sa.encap == ENCAP_UDP else Encap.ESP,
        "esn": bool(sa.esn),
        "path_mtu": sa.path_mtu,
        "mtu": sa.mtu,
        "packets": oe_load64(&sa.packets),
        "bytes": oe_load64(&sa.nbytes),
        "seq": oe_load64(&sa.seq) if sa.direction == DIR_OUT else sa.replay.top,
        "replay": oe_load64(&sa.err_replay),
        "authentication": oe_load64(&sa.err_auth),
        "policy": oe_load64(&sa.err_policy),
        "malformed": oe_load64(&sa.err_malformed),
        "expired": oe_load64(&sa.err_expired),
        "send_errors": oe_load64(&sa.err_send),
        "emsgsize": oe_load64(&sa.err_emsgsize),
        "soft_fired": bool(sa.fired & FIRED_SOFT),
        "hard_fired": bool(sa.fired & FIRED_HARD),
    }
