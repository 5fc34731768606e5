# Included by oe/datapath.pyx (after esp.pxi).
#
# The packet engine around ESP: holds, per-packet decisions, the native loop threads and the
# Python API (class Datapath).
#
# Outbound, per packet read from the TUN device:
#   0. with offloads (IFF_VNET_HDR) a read may be a TCP superframe: it is cut into MSS-sized
#      segments first (TSO done here), and partial checksums are finished;
#   1. parse the IP header (IPv4 options and fragments pass untouched);
#   2. a pair with a %hold in the C-side hold table is queued at once (so a trap raises one
#      acquire, never one per packet: Hannum's PF_KEY critique);
#   3. classify on the compiled eroute table, then by action:
#      SA      -> MSS clamp, too-big check (ICMP back if DF), seal, batch; runs of ESP-in-UDP
#                 to one peer leave in one sendmsg() with UDP GSO, the rest with sendmmsg()
#      %trap   -> new hold + one Acquire event;  %hold -> queue
#      %pass   -> raw socket (bypass mark) in clear;  %drop -> discard
#      %reject -> ICMP administratively prohibited written back into the TUN
# Inbound, per datagram (recvmmsg, UDP GRO buffers split): UDP 4500 demux (RFC 3948: 0xFF
# keepalive, non-ESP marker -> IKE event) or raw ESP -> SPI -> replay check -> ICV -> window
# update -> selectors (RFC 4322 12.1) -> TUN write, where TCP segments of one flow are
# coalesced into one GRO superframe.
#
# Threads: one per direction (default) or one for both. Each SA has a cipher context for the
# loop thread that uses it (CTX_LOOP) and one for Python callers (CTX_API).
#
# Holds: replace_eroutes() / update_eroutes() change the classifier's table and flag every hold
# for a recheck; the outbound loop re-classifies each hold and, when the pair is no longer
# %trap/%hold, sends its queue in order under the new verdict. Each hold is bounded (packets,
# bytes), and so are all of them together (max_holds, max_hold_total): the oldest hold goes.
#
# Events: acquires, IKE-on-4500 and replay/auth failures are queued and may be dropped (counted
# per kind); soft/hard lifetime events are flags on the SA, collected by read_events(), so they
# are never lost.

from cpython.ref cimport PyObject

import hashlib as _hashlib
import ipaddress as _ipaddress

from oe.dpevents import (Acquire, AuthFailure, IkeMessage, ReplayFailure, SaExpired,
                         SaSoftLimit)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long esp_thread_t "pthread_t"
    int esp_thread_create "pthread_create"(esp_thread_t *t, void *attr,
                                           void *(*start)(void *) noexcept nogil, void *arg)
    int esp_thread_join "pthread_join"(esp_thread_t t, void **ret)


cdef enum:
    BATCH = 64
    SLOT = 65536 + 128          # one datagram, with headroom for a rebuilt transport header
    HEADROOM = 64
    HOLD_BUCKETS = 256
    SOCKET_BUFFER = 8 * 1024 * 1024
    OUT_UDP = 0
    OUT_RAW = 1
    OUT_PASS = 2
    OUT_TUN = 3

OUT_KINDS = ("udp", "esp", "pass", "tun")


cdef struct OutItem:
    uint8_t kind
    uint8_t family
    uint16_t port
    uint8_t addr[16]
    uint32_t length
    uint8_t *data


cdef struct OutBatch:
    int n
    OutItem items[64]
    uint8_t *arena              # BATCH slots of SLOT bytes
    uint8_t *scratch            # SLOT bytes: a TUN superframe being built (loops only)
    PyObject *pylist            # API mode: flushed items are appended here (GIL held)


cdef struct HeldPkt:
    HeldPkt *next
    uint32_t length
    uint8_t *data


cdef struct Hold:
    Hold *next                  # in its bucket
    Hold *older                 # creation order, for the global caps
    Hold *newer
    uint8_t version
    uint8_t src[16]
    uint8_t dst[16]
    HeldPkt *head
    HeldPkt *tail
    uint32_t npkts
    uint32_t nbytes
    double created


cdef struct DpCore:
    # events for the control plane
    oe_mutex_t ev_lock
    DpEvent *events
    uint32_t ev_head
    uint32_t ev_count
    uint32_t ev_ike             # IKE events among ev_count
    int ev_fd
    int lifetime_pending        # some SA has a PENDING_SOFT / PENDING_HARD bit set
    # SAs
    oe_rwlock_t sa_lock
    SaTable sa_out
    SaTable sa_in
    # holds
    oe_mutex_t hold_lock
    Hold *holds[256]
    Hold *hold_oldest
    Hold *hold_newest
    int nholds
    int recheck
    uint32_t hold_packets       # per hold
    uint32_t hold_bytes
    uint32_t max_holds          # global caps (issue 10, 6): beyond them the oldest hold goes
    uint64_t max_hold_total
    uint64_t hold_total         # bytes queued in all holds
    double hold_timeout
    # configuration and loops
    uint64_t replay_window
    uint32_t tun_mtu
    int running
    int wake_fds[2]             # one eventfd per loop thread: stop, hold recheck
    int tun_fd
    int vnet                    # the TUN carries a virtio_net_hdr (offloads on)
    int udp_gso                 # send runs of ESP-in-UDP with UDP_SEGMENT
    int fds[6]                  # udp4, udp6, esp4, esp6, pass4, pass6 (-1: absent)
    double last_sweep
    uint64_t counters[64]


cdef inline void dp_count(DpCore *c, int which) noexcept nogil:
    oe_add64(&c.counters[which], 1)


# ----------------------------------------------------------------------------- events

cdef bint ev_push(DpCore *c, DpEvent *e) noexcept nogil:
    """Queue a droppable event; False (counted per kind) when the queue is full.

    IKE-on-4500 datagrams are spoofable: they may take half the queue at most, so a flood of
    them never crowds out acquires. Lifetime events never come here (sa_fire).
    """
    cdef uint64_t one = 1
    cdef bint ike = e.kind == EV_IKE
    oe_mutex_lock(&c.ev_lock)
    if c.ev_count == EV_CAP or (ike and c.ev_ike >= EV_IKE_CAP):
        oe_mutex_unlock(&c.ev_lock)
        dp_count(c, C_LOST_ACQUIRE if e.kind == EV_ACQUIRE else C_LOST_IKE if ike
                 else C_LOST_REPLAY if e.kind == EV_REPLAY else C_LOST_AUTH)
        free(e.data)
        return False
    c.events[(c.ev_head + c.ev_count) % EV_CAP] = e[0]
    c.ev_count += 1
    c.ev_ike += ike
    oe_mutex_unlock(&c.ev_lock)
    esp_sys_write(c.ev_fd, &one, 8)
    return True


cdef bint ev_sa(DpCore *c, int kind, const EspSa *sa, int reason, uint64_t n) noexcept nogil:
    cdef DpEvent e
    memset(&e, 0, sizeof(DpEvent))
    e.kind = kind
    e.spi = sa.spi
    e.handle = sa.handle
    e.direction = sa.direction
    e.reason = reason
    e.count = n
    return ev_push(c, &e)


cdef void sa_fire(DpCore *c, EspSa *sa, int hard, int reason) noexcept nogil:
    """Raise the soft or hard limit event of an SA, once, and never lose it.

    Not queued: a PENDING_ bit on the SA, which read_events() collects (bounded by the number
    of SAs), so a full event queue cannot leave an SA un-rekeyed or undeleted (issue 10, 7).
    """
    cdef uint32_t bit = FIRED_HARD if hard else FIRED_SOFT
    cdef uint64_t one = 1
    if (oe_or32(&sa.fired, bit) & bit) == 0:
        if hard:
            sa.hard_reason = reason
        else:
            sa.soft_reason = reason
        oe_or32(&sa.pending, PENDING_HARD if hard else PENDING_SOFT)
        oe_store_int(&c.lifetime_pending, 1)
        esp_sys_write(c.ev_fd, &one, 8)


cdef bint sa_admit(DpCore *c, EspSa *sa, size_t n, double now) noexcept nogil:
    """May one more packet of n bytes use this SA? False (and the hard event) past a hard limit."""
    cdef int reason = 0
    if sa.fired & FIRED_HARD:
        return False
    if sa.hard_packets and oe_load64(&sa.packets) + 1 > sa.hard_packets:
        reason = R_PACKETS
    elif sa.hard_bytes and oe_load64(&sa.nbytes) + n > sa.hard_bytes:
        reason = R_BYTES
    elif sa.hard_time and now >= sa.hard_time:
        reason = R_TIME
    if reason:
        sa_fire(c, sa, 1, reason)
        return False
    return True


cdef void sa_account(DpCore *c, EspSa *sa, size_t n, uint64_t seq, double now) noexcept nogil:
    cdef uint64_t p = oe_add64(&sa.packets, 1) + 1
    cdef uint64_t b = oe_add64(&sa.nbytes, n) + n
    if sa.fired & FIRED_SOFT:
        return
    if sa.soft_packets and p >= sa.soft_packets:
        sa_fire(c, sa, 0, R_PACKETS)
    elif sa.soft_bytes and b >= sa.soft_bytes:
        sa_fire(c, sa, 0, R_BYTES)
    elif sa.soft_time and now >= sa.soft_time:
        sa_fire(c, sa, 0, R_TIME)
    elif sa.direction == DIR_OUT and not sa.esn and seq >= SEQ_SOFT_32:
        sa_fire(c, sa, 0, R_SEQUENCE)


cdef void sa_failure(DpCore *c, EspSa *sa, int reason) noexcept nogil:
    """Count a replayed or forged packet; one event at a time per SA and kind (coalesced)."""
    cdef uint32_t bit
    cdef uint64_t total
    if reason == R_REPLAY:
        total = oe_add64(&sa.err_replay, 1) + 1
        dp_count(c, C_REPLAY)
        bit = PENDING_REPLAY
    else:
        total = oe_add64(&sa.err_auth, 1) + 1
        dp_count(c, C_AUTH)
        bit = PENDING_AUTH
    if (oe_or32(&sa.pending, bit) & bit) == 0:
        if not ev_sa(c, EV_REPLAY if reason == R_REPLAY else EV_AUTH, sa, reason, total):
            oe_and32(&sa.pending, ~bit)      # re-arm: the next failure tries again


cdef void dp_sweep(DpCore *c, double now) noexcept nogil:
    """Time lifetimes fire even on idle SAs."""
    oe_rd_lock(&c.sa_lock)
    _sweep_table(c, &c.sa_out, now)
    _sweep_table(c, &c.sa_in, now)
    oe_rw_unlock(&c.sa_lock)
    c.last_sweep = now


cdef void _sweep_table(DpCore *c, SaTable *t, double now) noexcept nogil:
    cdef uint32_t i
    cdef EspSa *sa
    for i in range(t.cap):
        sa = t.slots[i]
        if sa == NULL:
            continue
        if sa.hard_time and now >= sa.hard_time:
            sa_fire(c, sa, 1, R_TIME)
        elif sa.soft_time and now >= sa.soft_time:
            sa_fire(c, sa, 0, R_TIME)


# ---------------------------------------------------------------------------- batches

cdef void batch_flush(DpCore *c, OutBatch *b) noexcept nogil:
    cdef uint8_t *bufs[64]
    cdef uint32_t lens[64]
    cdef uint8_t addrs[64][16]
    cdef uint16_t ports[64]
    cdef int i, k, m, fd, kind, fam
    cdef uint64_t writes
    if b.n == 0:
        return
    if b.pylist != NULL:
        with gil:
            _flush_to_list(b)
        b.n = 0
        return
    i = 0
    while i < b.n:
        kind = b.items[i].kind
        fam = b.items[i].family
        if kind == OUT_TUN and c.vnet:
            # A run of packets for the TUN: TCP segments of one flow coalesce (GRO).
            m = 0
            while i + m < b.n and b.items[i + m].kind == OUT_TUN:
                bufs[m] = b.items[i + m].data
                lens[m] = b.items[i + m].length
                m += 1
            writes = 0
            k = dp_tun_write(c.tun_fd, bufs, lens, m, b.scratch, SLOT, &writes)
            oe_add64(&c.counters[C_TUN_WRITE], writes)
            if k:
                oe_add64(&c.counters[C_SEND_ERRORS], k)
            i += m
            continue
        if kind == OUT_TUN:
            if esp_sys_write(c.tun_fd, b.items[i].data, b.items[i].length) < 0:
                dp_count(c, C_SEND_ERRORS)
            else:
                dp_count(c, C_TUN_WRITE)
            i += 1
            continue
        # A run of consecutive items for one socket goes out in one sendmmsg().
        m = 0
        while i + m < b.n and b.items[i + m].kind == kind and b.items[i + m].family == fam:
            k = i + m
            bufs[m] = b.items[k].data
            lens[m] = b.items[k].length
            memcpy(addrs[m], b.items[k].addr, 16)
            ports[m] = b.items[k].port
            m += 1
        fd = c.fds[(kind * 2) + (0 if fam == 4 else 1)]
        if fd < 0:
            k = 0
        elif kind == OUT_UDP:
            k = dp_sendrun(fd, fam, bufs, lens, addrs, ports, m, &c.udp_gso)
        else:
            k = dp_sendmany(fd, fam, bufs, lens, addrs, ports, m)
        if k < m:
            oe_add64(&c.counters[C_SEND_ERRORS], m - k)
        i += m
    b.n = 0


cdef void _flush_to_list(OutBatch *b) noexcept:
    cdef int i
    cdef OutItem *it
    lst = <list>b.pylist
    for i in range(b.n):
        it = &b.items[i]
        addr = None
        if it.kind != OUT_TUN:
            addr = _ipaddress.ip_address((<char *>it.addr)[:4 if it.family == 4 else 16])
        lst.append((OUT_KINDS[it.kind], addr, it.port, (<char *>it.data)[:it.length]))


cdef inline uint8_t *batch_slot(DpCore *c, OutBatch *b) noexcept nogil:
    if b.n == BATCH:
        batch_flush(c, b)
    return b.arena + <size_t>b.n * SLOT


cdef inline void batch_commit(OutBatch *b, int kind, int family, const uint8_t *addr,
                              uint16_t port, uint8_t *data, uint32_t length) noexcept nogil:
    cdef OutItem *it = &b.items[b.n]
    it.kind = kind
    it.family = family
    it.port = port
    memset(it.addr, 0, 16)
    if addr != NULL:
        memcpy(it.addr, addr, 4 if family == 4 else 16)
    it.data = data
    it.length = length
    b.n += 1


# ------------------------------------------------------------------- ICMP and MSS clamp

cdef int icmp_error(uint8_t *out, const uint8_t *pkt, const PktInfo *info, int type4, int code4,
                    int type6, int code6, uint32_t mtu) noexcept nogil:
    """An ICMP error about `pkt`, from its destination back to its source; length or 0."""
    cdef size_t quote, total
    cdef uint64_t s
    cdef const uint8_t *l4 = pkt + info.l4off
    if info.version == 4:
        if not info.first_fragment:
            return 0            # RFC 1122 3.2.2: never about a non-initial fragment
        if info.proto == PROTO_ICMP and info.total > info.l4off and l4[0] in (3, 4, 5, 11, 12):
            return 0            # ... nor about an ICMP error
        quote = info.total if info.total < 548 else 548
        total = 28 + quote
        memset(out, 0, 28)
        out[0] = 0x45
        oe_wr16(out + 2, <uint16_t>total)
        out[8] = 64
        out[9] = PROTO_ICMP
        memcpy(out + 12, info.dst, 4)
        memcpy(out + 16, info.src, 4)
        oe_wr16(out + 10, ~oe_csum_fold(oe_csum_add(0, out, 20)))
        out[20] = type4
        out[21] = code4
        if mtu:
            oe_wr16(out + 26, <uint16_t>mtu)    # RFC 1191 4: next-hop MTU
        memcpy(out + 28, pkt, quote)
        oe_wr16(out + 22, ~oe_csum_fold(oe_csum_add(0, out + 20, 8 + quote)))
        return <int>total
    if (info.proto == PROTO_ICMPV6 and info.first_fragment and info.total > info.l4off
            and l4[0] < 128):
        return 0                # RFC 4443 2.4 (e.1): never about an ICMPv6 error
    quote = info.total if info.total < 1280 - 48 else 1280 - 48
    total = 48 + quote
    memset(out, 0, 48)
    out[0] = 0x60
    oe_wr16(out + 4, <uint16_t>(8 + quote))
    out[6] = PROTO_ICMPV6
    out[7] = 64
    memcpy(out + 8, info.dst, 16)
    memcpy(out + 24, info.src, 16)
    out[40] = type6
    out[41] = code6
    if mtu:
        oe_wr32(out + 44, mtu)                  # RFC 4443 3.2
    memcpy(out + 48, pkt, quote)
    s = oe_csum_add(0, out + 8, 32)              # pseudo-header (RFC 8200 8.1)
    s += <uint32_t>(8 + quote) + PROTO_ICMPV6
    s = oe_csum_add(s, out + 40, 8 + quote)
    oe_wr16(out + 42, ~oe_csum_fold(s))
    return <int>total


cdef bint mss_clamp(uint8_t *pkt, const PktInfo *info, uint32_t mtu) noexcept nogil:
    """Lower the MSS option of a TCP SYN to fit `mtu` (RFC 879, RFC 6691); True if changed."""
    cdef int off = info.hlen
    cdef uint8_t *tcp
    cdef int doff, i, kind, olen
    cdef uint32_t mss, limit, s
    if info.proto != PROTO_TCP or not info.first_fragment:
        return False
    if info.version == 6 and pkt[6] == 44:
        off = 48
    if info.total < off + 20:
        return False
    tcp = pkt + off
    if (tcp[13] & 0x02) == 0:                 # SYN
        return False
    doff = (tcp[12] >> 4) * 4
    if doff < 20 or off + doff > info.total:
        return False
    limit = mtu - (40 if info.version == 4 else 60)
    i = 20
    while i < doff:
        kind = tcp[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= doff:
            break
        olen = tcp[i + 1]
        if olen < 2 or i + olen > doff:
            break
        if kind == 2 and olen == 4:
            mss = oe_rd16(tcp + i + 2)
            if mss <= limit:
                return False
            # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')
            s = (~oe_rd16(tcp + 16)) & 0xFFFF
            s += (~mss) & 0xFFFF
            s += limit
            oe_wr16(tcp + i + 2, <uint16_t>limit)
            oe_wr16(tcp + 16, ~oe_csum_fold(s))
            return True
        i += olen
    return False


# ------------------------------------------------------------------------------ holds

cdef inline uint32_t hold_hash(int version, const uint8_t *src, const uint8_t *dst) noexcept nogil:
    cdef uint32_t h = oe_pair_hash(src, dst, 4 if version == 4 else 16)
    return (h ^ (h >> 16)) & (HOLD_BUCKETS - 1)


cdef Hold *hold_find(DpCore *c, int version, const uint8_t *src, const uint8_t *dst) noexcept nogil:
    cdef int alen = 4 if version == 4 else 16
    cdef Hold *h = c.holds[hold_hash(version, src, dst)]
    while h != NULL:
        if h.version == version and memcmp(h.src, src, alen) == 0 and memcmp(h.dst, dst, alen) == 0:
            return h
        h = h.next
    return NULL


cdef Hold *hold_create(DpCore *c, int version, const uint8_t *src, const uint8_t *dst,
                       double now) noexcept nogil:
    """A new, empty hold; at max_holds the oldest hold is evicted first (its packets counted
    as hold_overflow): a flood of new destinations costs bounded memory."""
    cdef int alen = 4 if version == 4 else 16
    cdef uint32_t k = hold_hash(version, src, dst)
    cdef Hold *h
    while c.nholds > 0 and <uint32_t>c.nholds >= c.max_holds:
        hold_evict(c, c.hold_oldest)
    h = <Hold *>calloc(1, sizeof(Hold))
    if h == NULL:
        return NULL
    h.version = version
    memcpy(h.src, src, alen)
    memcpy(h.dst, dst, alen)
    h.created = now
    h.next = c.holds[k]
    c.holds[k] = h
    h.older = c.hold_newest
    if c.hold_newest != NULL:
        c.hold_newest.newer = h
    else:
        c.hold_oldest = h
    c.hold_newest = h
    c.nholds += 1
    return h


cdef void hold_forget(DpCore *c, Hold *h) noexcept nogil:
    """Take a hold out of the creation order and the global counts (not out of its bucket)."""
    if h.older != NULL:
        h.older.newer = h.newer
    else:
        c.hold_oldest = h.newer
    if h.newer != NULL:
        h.newer.older = h.older
    else:
        c.hold_newest = h.older
    c.nholds -= 1
    c.hold_total -= h.nbytes


cdef void hold_remove(DpCore *c, Hold *h) noexcept nogil:
    """Take a hold out of the table (hold_lock held); the caller frees it."""
    cdef Hold **link = &c.holds[hold_hash(h.version, h.src, h.dst)]
    while link[0] != h:
        link = &link[0].next
    link[0] = h.next
    hold_forget(c, h)


cdef void hold_evict(DpCore *c, Hold *h) noexcept nogil:
    """Drop a whole hold to make room (hold_lock held)."""
    hold_remove(c, h)
    dp_count(c, C_HOLDS_EVICTED)
    oe_add64(&c.counters[C_HOLD_OVERFLOW], h.npkts)
    hold_free(h)


cdef void hold_enqueue(DpCore *c, Hold *h, const uint8_t *pkt, size_t n) noexcept nogil:
    """Queue a copy; beyond the bounds (64 packets / 256 KiB a hold) the oldest packets go:
    first whole older holds while all holds together pass max_hold_total, then this hold's
    oldest packets."""
    cdef HeldPkt *p
    cdef HeldPkt *old
    if n > c.hold_bytes or n > c.max_hold_total:
        dp_count(c, C_HOLD_OVERFLOW)
        return
    p = <HeldPkt *>malloc(sizeof(HeldPkt) + n)
    if p == NULL:
        dp_count(c, C_HOLD_OVERFLOW)
        return
    p.next = NULL
    p.length = <uint32_t>n
    p.data = (<uint8_t *>p) + sizeof(HeldPkt)
    memcpy(p.data, pkt, n)
    while c.hold_total + n > c.max_hold_total and c.hold_oldest != h:
        hold_evict(c, c.hold_oldest)
    while h.head != NULL and (h.npkts + 1 > c.hold_packets or h.nbytes + n > c.hold_bytes
                              or c.hold_total + n > c.max_hold_total):
        old = h.head
        h.head = old.next
        h.npkts -= 1
        h.nbytes -= old.length
        c.hold_total -= old.length
        free(old)
        dp_count(c, C_HOLD_OVERFLOW)
    if h.head == NULL:
        h.tail = NULL
    if h.tail != NULL:
        h.tail.next = p
    else:
        h.head = p
    h.tail = p
    h.npkts += 1
    h.nbytes += <uint32_t>n
    c.hold_total += n
    dp_count(c, C_HELD)


cdef void hold_free(Hold *h) noexcept nogil:
    cdef HeldPkt *p = h.head
    cdef HeldPkt *q
    while p != NULL:
        q = p.next
        free(p)
        p = q
    free(h)


# ------------------------------------------------------------------- per-packet: outbound

cdef void dp_outbound(DpCore *c, Classifier cls, int ctxi, uint8_t *pkt, size_t n, OutBatch *b,
                      bint from_hold, double now) noexcept nogil:
    cdef PktInfo info
    cdef Verdict v
    cdef Hold *h
    cdef EspSa *sa
    cdef uint8_t *slot
    cdef uint64_t seq
    cdef int r, kind
    cdef bint created
    if parse_ip(pkt, n, &info) < 0:
        dp_count(c, C_MALFORMED)
        return
    n = info.total              # ignore anything the TUN gave beyond the IP datagram
    if not from_hold and oe_load_int(&c.nholds) > 0:
        oe_mutex_lock(&c.hold_lock)
        h = hold_find(c, info.version, info.src, info.dst)
        if h != NULL:
            hold_enqueue(c, h, pkt, n)
            oe_mutex_unlock(&c.hold_lock)
            return
        oe_mutex_unlock(&c.hold_lock)
    v = cls.classify(info.version, info.src, info.dst, info.proto, info.sport, info.dport, n)
    if v.action == ACT_SA:
        oe_rd_lock(&c.sa_lock)
        sa = sa_find(&c.sa_out, v.sa)
        if sa == NULL:
            oe_rw_unlock(&c.sa_lock)
            dp_count(c, C_NO_SA)
            return
        if n > sa.mtu and info.df:
            # Path MTU discovery instead of a black hole (FreeS/WAN's BUGS; Bantoft's ICMP
            # black-hole proposal).
            oe_rw_unlock(&c.sa_lock)
            slot = batch_slot(c, b)
            r = icmp_error(slot, pkt, &info, 3, 4, 2, 0, sa.mtu)
            if r > 0:
                batch_commit(b, OUT_TUN, info.version, NULL, 0, slot, r)
            dp_count(c, C_TOO_BIG)
            return
        if not sa_admit(c, sa, n, now):
            oe_rw_unlock(&c.sa_lock)
            oe_add64(&sa.err_expired, 1)
            dp_count(c, C_EXPIRED)
            return
        if mss_clamp(pkt, &info, sa.mtu):
            dp_count(c, C_MSS_CLAMPED)
        slot = batch_slot(c, b)
        r = esp_seal(sa, ctxi, pkt, n, slot, SLOT, &seq)
        if r < 0:
            if -r == R_SEQUENCE:
                sa_fire(c, sa, 1, R_SEQUENCE)
            oe_add64(&sa.err_expired, 1)
            dp_count(c, C_EXPIRED)
            oe_rw_unlock(&c.sa_lock)
            return
        sa_account(c, sa, n, seq, now)
        # Raw sockets take no port (IPv6 refuses any but the protocol's).
        batch_commit(b, OUT_UDP if sa.encap == ENCAP_UDP else OUT_RAW, sa.family, sa.peer,
                     sa.peer_port if sa.encap == ENCAP_UDP else 0, slot, r)
        oe_rw_unlock(&c.sa_lock)
        dp_count(c, C_ESP_OUT)
    elif v.action == ACT_TRAP or v.action == ACT_HOLD:
        if from_hold:
            dp_count(c, C_HOLD_DISCARDED)
            return
        created = False
        oe_mutex_lock(&c.hold_lock)
        h = hold_find(c, info.version, info.src, info.dst)
        if h == NULL:
            h = hold_create(c, info.version, info.src, info.dst, now)
            created = h != NULL
        if h != NULL:
            hold_enqueue(c, h, pkt, n)
        oe_mutex_unlock(&c.hold_lock)
        if created and v.action == ACT_TRAP and not _acquire(c, &info):
            # Nobody will negotiate: without its hold the pair's next packet traps again.
            oe_mutex_lock(&c.hold_lock)
            h = hold_find(c, info.version, info.src, info.dst)
            if h != NULL:
                hold_remove(c, h)
                oe_add64(&c.counters[C_HOLD_DISCARDED], h.npkts)
                hold_free(h)
            oe_mutex_unlock(&c.hold_lock)
    elif v.action == ACT_PASS:
        slot = batch_slot(c, b)
        memcpy(slot, pkt, n)
        batch_commit(b, OUT_PASS, info.version, info.dst, 0, slot, n)
        dp_count(c, C_PASSED)
    elif v.action == ACT_REJECT:
        slot = batch_slot(c, b)
        # ICMP destination unreachable, communication administratively prohibited:
        # IPv4 type 3 code 13 (RFC 1812 5.2.7.1), IPv6 type 1 code 1 (RFC 4443 3.1).
        r = icmp_error(slot, pkt, &info, 3, 13, 1, 1, 0)
        if r > 0:
            batch_commit(b, OUT_TUN, info.version, NULL, 0, slot, r)
        dp_count(c, C_REJECTED)
    elif v.action == ACT_DROP:
        dp_count(c, C_DROPPED)
    elif is_link_chatter(&info):
        # The kernel's own link-local or multicast traffic on the TUN: quietly dropped.
        dp_count(c, C_NO_POLICY)
    else:
        # No eroute, yet routed here: a CIDR steered in for a narrowed entry (`tcp 0 22`)
        # whose other traffic is in no group. No group means clear (README: Policy groups).
        slot = batch_slot(c, b)
        memcpy(slot, pkt, n)
        batch_commit(b, OUT_PASS, info.version, info.dst, 0, slot, n)
        dp_count(c, C_NO_POLICY)


cdef bint is_link_chatter(const PktInfo *info) noexcept nogil:
    """Multicast, broadcast or link-local: never anyone's OE flow, never sent on."""
    if info.version == 4:
        return (info.dst[0] >= 224 or (info.dst[0] == 169 and info.dst[1] == 254)
                or (info.src[0] == 169 and info.src[1] == 254) or info.src[0] == 0)
    return (info.dst[0] == 0xFF or (info.dst[0] == 0xFE and (info.dst[1] & 0xC0) == 0x80)
            or (info.src[0] == 0xFE and (info.src[1] & 0xC0) == 0x80))


cdef bint _acquire(DpCore *c, const PktInfo *info) noexcept nogil:
    """Queue an Acquire for the packet's pair; False if the queue dropped it."""
    cdef DpEvent e
    cdef int alen = 4 if info.version == 4 else 16
    memset(&e, 0, sizeof(DpEvent))
    e.kind = EV_ACQUIRE
    e.version = info.version
    memcpy(e.src, info.src, alen)
    memcpy(e.dst, info.dst, alen)
    e.proto = info.proto
    e.sport = info.sport
    e.dport = info.dport
    dp_count(c, C_ACQUIRES)
    return ev_push(c, &e)


cdef void hold_recheck(DpCore *c, Classifier cls, int ctxi, OutBatch *b, double now,
                       bint reclassify) noexcept nogil:
    """Release, in order, every hold whose pair the eroute table no longer traps or holds.

    Unless `reclassify` or the table changed since the last check, only holds past
    hold_timeout go, so the periodic check adds nothing to the eroutes' packet counters.
    """
    cdef Hold *released = NULL
    cdef Hold **link
    cdef Hold *h
    cdef Hold *nxt
    cdef HeldPkt *p
    cdef HeldPkt *q
    cdef PktInfo info
    cdef Verdict v
    cdef int k
    cdef bint keep
    oe_mutex_lock(&c.hold_lock)
    if oe_swap_int(&c.recheck, 0):
        reclassify = True
    for k in range(HOLD_BUCKETS):
        link = &c.holds[k]
        while link[0] != NULL:
            h = link[0]
            keep = now - h.created < c.hold_timeout
            if (keep and reclassify and h.head != NULL
                    and parse_ip(h.head.data, h.head.length, &info) == 0):
                v = cls.classify(info.version, info.src, info.dst, info.proto, info.sport,
                                 info.dport, 0)
                keep = v.action == ACT_TRAP or v.action == ACT_HOLD
            if keep:
                link = &h.next
                continue
            link[0] = h.next
            hold_forget(c, h)
            if now - h.created >= c.hold_timeout:
                oe_add64(&c.counters[C_HOLD_DISCARDED], h.npkts)
                hold_free(h)
                continue
            h.next = released
            released = h
    oe_mutex_unlock(&c.hold_lock)
    while released != NULL:
        h = released
        released = h.next
        p = h.head
        while p != NULL:
            q = p.next
            dp_count(c, C_HOLD_RELEASED)
            dp_outbound(c, cls, ctxi, p.data, p.length, b, True, now)
            free(p)
            p = q
        free(h)


# -------------------------------------------------------------------- per-packet: inbound

cdef void dp_inbound(DpCore *c, int ctxi, const uint8_t *data, size_t n, int family,
                     const uint8_t *src, uint16_t sport, int encap, OutBatch *b,
                     double now) noexcept nogil:
    cdef DpEvent e
    cdef EspSa *sa
    cdef uint8_t *slot
    cdef uint8_t *inner
    cdef int r, nh, alen
    cdef uint64_t seq
    cdef PktInfo info
    cdef size_t length
    if encap == ENCAP_UDP:
        if n == 1 and data[0] == 0xFF:        # RFC 3948 2.3: NAT-keepalive
            dp_count(c, C_KEEPALIVES)
            return
        if n >= 4 and oe_rd32(data) == 0:       # RFC 3948 2.2: non-ESP marker, IKE follows
            memset(&e, 0, sizeof(DpEvent))
            e.kind = EV_IKE
            e.version = family
            memcpy(e.src, src, 4 if family == 4 else 16)
            e.sport = sport
            e.length = <uint32_t>(n - 4)
            e.data = <uint8_t *>malloc(n - 4 if n > 4 else 1)
            if e.data == NULL:
                return
            memcpy(e.data, data + 4, n - 4)
            dp_count(c, C_IKE)
            ev_push(c, &e)
            return
    if n < ESP_HDR:
        dp_count(c, C_MALFORMED)
        return
    oe_rd_lock(&c.sa_lock)
    sa = sa_find(&c.sa_in, oe_rd32(data))
    if sa == NULL:
        oe_rw_unlock(&c.sa_lock)
        dp_count(c, C_UNKNOWN_SPI)         # RFC 4303 3.4.2: discard, auditable event
        return
    if not sa_admit(c, sa, n, now):
        oe_add64(&sa.err_expired, 1)
        oe_rw_unlock(&c.sa_lock)
        dp_count(c, C_EXPIRED)
        return
    slot = batch_slot(c, b)
    inner = slot + HEADROOM
    r = esp_open(sa, ctxi, data, n, inner, SLOT - HEADROOM, &nh, &seq)
    if r < 0:
        r = -r
        if r == R_REPLAY or r == R_AUTH:
            sa_failure(c, sa, r)
        elif r == R_PADDING:
            oe_add64(&sa.err_malformed, 1)
            dp_count(c, C_PADDING)
        elif r == R_EXPIRED:
            dp_count(c, C_EXPIRED)
        else:
            oe_add64(&sa.err_malformed, 1)
            dp_count(c, C_MALFORMED)
        oe_rw_unlock(&c.sa_lock)
        return
    length = r
    if nh == NH_NONE:
        oe_rw_unlock(&c.sa_lock)
        dp_count(c, C_DUMMY)
        return
    if sa.tunnel:
        if (nh != NH_IPV4 and nh != NH_IPV6) or parse_ip(inner, length, &info) < 0 \
                or info.version != (4 if nh == NH_IPV4 else 6):
            oe_add64(&sa.err_malformed, 1)
            oe_rw_unlock(&c.sa_lock)
            dp_count(c, C_MALFORMED)
            return
        length = info.total     # RFC 4303 2.7: TFC padding after the inner datagram
    else:
        # Transport mode: rebuild the IP header from the SA's addresses (the outer ones).
        alen = 4 if sa.family == 4 else 16
        if sa.family == 4:
            inner -= 20
            memset(inner, 0, 20)
            inner[0] = 0x45
            oe_wr16(inner + 2, <uint16_t>(length + 20))
            inner[8] = 64
            inner[9] = nh
            memcpy(inner + 12, sa.peer, 4)
            memcpy(inner + 16, sa.local, 4)
            oe_wr16(inner + 10, ~oe_csum_fold(oe_csum_add(0, inner, 20)))
            length += 20
        else:
            inner -= 40
            memset(inner, 0, 40)
            inner[0] = 0x60
            oe_wr16(inner + 4, <uint16_t>length)
            inner[6] = nh
            inner[7] = 64
            memcpy(inner + 8, sa.peer, 16)
            memcpy(inner + 24, sa.local, 16)
            length += 40
        if parse_ip(inner, length, &info) < 0:
            oe_add64(&sa.err_malformed, 1)
            oe_rw_unlock(&c.sa_lock)
            dp_count(c, C_MALFORMED)
            return
    if not ts_allows(sa, &info):
        # RFC 4322 12.1: what arrives under an SA must be what the SA was negotiated for.
        oe_add64(&sa.err_policy, 1)
        oe_rw_unlock(&c.sa_lock)
        dp_count(c, C_POLICY)
        return
    sa_account(c, sa, length, seq, now)
    oe_rw_unlock(&c.sa_lock)
    if mss_clamp(inner, &info, c.tun_mtu):
        dp_count(c, C_MSS_CLAMPED)
    batch_commit(b, OUT_TUN, info.version, NULL, 0, inner, <uint32_t>length)
    dp_count(c, C_ESP_IN)


# ------------------------------------------------------------------------------ loops

cdef enum:
    LOOP_OUT = 1                # reads the TUN, seals, sends
    LOOP_IN = 2                 # reads the sockets, opens, writes the TUN


cdef void dp_loop(DpCore *c, Classifier cls, int role) noexcept nogil:
    """One loop thread: outbound, inbound or both (one thread per direction or one for all)."""
    cdef OutBatch *b = <OutBatch *>calloc(1, sizeof(OutBatch))
    cdef uint8_t *arena = <uint8_t *>malloc(<size_t>BATCH * SLOT)
    cdef uint8_t *bufs[64]
    cdef uint32_t lens[64]
    cdef uint8_t addrs[64][16]
    cdef uint16_t ports[64]
    cdef uint16_t segs[64]
    cdef uint32_t off, piece
    cdef int fds[7]
    cdef int which[7]           # socket index 0-3 (udp4, udp6, esp4, esp6), 4 = TUN, 5 = wake
    cdef int nfds = 0
    cdef int i, k, r, fam, hl
    cdef int wake = c.wake_fds[0 if role & LOOP_OUT else 1]
    cdef ssize_t n
    cdef unsigned ready
    cdef uint64_t junk
    cdef double now
    cdef int seg, gso, mss, seglen
    cdef uint8_t *pkt
    if b != NULL:
        b.arena = <uint8_t *>malloc(<size_t>BATCH * SLOT)
        b.scratch = <uint8_t *>malloc(SLOT)
    if b == NULL or arena == NULL or b.arena == NULL or b.scratch == NULL:
        if b != NULL:
            free(b.arena)
            free(b.scratch)
        free(b)
        free(arena)
        return
    for i in range(BATCH):
        bufs[i] = arena + <size_t>i * SLOT
    if role & LOOP_IN:
        for k in range(4):
            if c.fds[k] >= 0:
                fds[nfds] = c.fds[k]
                which[nfds] = k
                nfds += 1
    if role & LOOP_OUT:
        fds[nfds] = c.tun_fd
        which[nfds] = 4
        nfds += 1
    fds[nfds] = wake
    which[nfds] = 5
    nfds += 1
    while oe_load_int(&c.running):
        dp_wait(fds, nfds, 500, &ready)
        now = oe_now()
        if role & LOOP_OUT:
            if oe_load_int(&c.recheck) or (c.nholds > 0 and now - c.last_sweep >= 0.5):
                hold_recheck(c, cls, CTX_LOOP, b, now, False)
            if now - c.last_sweep >= 0.5:
                dp_sweep(c, now)
        for i in range(nfds):
            if not (ready & (1u << i)):
                continue
            if which[i] == 5:
                esp_sys_read(wake, &junk, 8)
            elif which[i] == 4:
                for k in range(BATCH):
                    n = esp_sys_read(c.tun_fd, bufs[0], SLOT)
                    if n <= 0:
                        break
                    dp_count(c, C_TUN_READ)
                    if not c.vnet:
                        dp_outbound(c, cls, CTX_LOOP, bufs[0], n, b, False, now)
                        continue
                    if n <= DP_VNET_LEN:
                        dp_count(c, C_MALFORMED)
                        continue
                    pkt = bufs[0] + DP_VNET_LEN
                    n -= DP_VNET_LEN
                    gso = bufs[0][1] & ~DP_GSO_ECN
                    if gso == DP_GSO_NONE:
                        if bufs[0][0] & DP_F_NEEDS_CSUM:
                            dp_finish_csum(pkt, n, bufs[0][6] | (bufs[0][7] << 8),
                                           bufs[0][8] | (bufs[0][9] << 8))
                        dp_outbound(c, cls, CTX_LOOP, pkt, n, b, False, now)
                    elif gso == DP_GSO_TCPV4 or gso == DP_GSO_TCPV6:
                        # A TCP superframe (TSO): cut here into segments of gso_size.
                        mss = bufs[0][4] | (bufs[0][5] << 8)
                        seg = 0
                        while True:
                            seglen = dp_tso_segment(pkt, <int>n, mss, seg, bufs[1])
                            if seglen <= 0:
                                if seglen < 0:
                                    dp_count(c, C_MALFORMED)
                                break
                            dp_outbound(c, cls, CTX_LOOP, bufs[1], seglen, b, False, now)
                            seg += 1
                    else:
                        dp_count(c, C_MALFORMED)
            else:
                fam = 4 if which[i] % 2 == 0 else 6
                while True:
                    r = dp_recvmany(fds[i], fam, bufs, SLOT, lens, addrs, ports, segs, BATCH)
                    if r <= 0:
                        break
                    for k in range(r):
                        if segs[k] and lens[k] > segs[k]:
                            # UDP GRO: several ESP datagrams of segs[k] bytes back to back.
                            off = 0
                            while off < lens[k]:
                                piece = min(<uint32_t>segs[k], lens[k] - off)
                                dp_inbound(c, CTX_LOOP, bufs[k] + off, piece, fam, addrs[k],
                                           ports[k], ENCAP_UDP, b, now)
                                off += piece
                        elif which[i] == 2:
                            # A raw IPv4 socket hands over the IP header too; IPv6 does not.
                            hl = (bufs[k][0] & 0x0F) * 4 if lens[k] >= 20 else <int>lens[k]
                            dp_inbound(c, CTX_LOOP, bufs[k] + hl, lens[k] - hl, 4, addrs[k],
                                       ports[k], ENCAP_RAW, b, now)
                        else:
                            dp_inbound(c, CTX_LOOP, bufs[k], lens[k], fam, addrs[k], ports[k],
                                       ENCAP_UDP if which[i] < 2 else ENCAP_RAW, b, now)
                    batch_flush(c, b)
                    if r < BATCH:
                        break
        batch_flush(c, b)
    free(b.arena)
    free(b.scratch)
    free(b)
    free(arena)


cdef void *_loop_thread(void *arg) noexcept nogil:
    cdef LoopArg *la = <LoopArg *>arg
    with gil:
        (<Datapath>la.datapath)._run(la.role)
    return NULL


cdef struct LoopArg:
    void *datapath
    int role


# -------------------------------------------------------------------------- Python API

def _ts_range(ts) -> tuple:
    """A traffic selector's addresses (RFC 7296 3.13.1): an address, a CIDR or a (first, last)
    pair, as (version, first packed, last packed)."""
    if isinstance(ts, tuple):
        first, last = (_ipaddress.ip_address(a) for a in ts)
        if first.version != last.version or first > last:
            raise ValueError(f"bad traffic selector range {first}-{last}")
    else:
        net = _ipaddress.ip_network(ts, strict=False)
        first, last = net.network_address, net.broadcast_address
    return first.version, first.packed, last.packed


def esp_overhead(int family, str encap="udp", bint tunnel=True) -> int:
    """Worst-case bytes ESP adds to an inner packet (outer IP, UDP, ESP, IV, pad, ICV)."""
    cdef int n = ESP_HDR + ESP_IV + 3 + ESP_TRAILER + ESP_ICV
    if tunnel:
        n += 20 if family == 4 else 40
    if encap == "udp":
        n += 8
    return n


cdef class Datapath:
    """ESP SAs, holds, events and the native loops around one compiled Classifier.

    Without start() every packet function works from Python (tests, tools); start() runs the
    outbound (TUN) and inbound (sockets) threads, which release the GIL for good.
    """

    cdef DpCore *c
    cdef readonly Classifier classifier
    cdef esp_thread_t _threads[2]
    cdef LoopArg _args[2]
    cdef int _nthreads
    cdef uint32_t _next_handle  # outbound handles: 1, 2, ... never reused
    cdef dict _keys             # SHA-256 of each live SA's KEYMAT -> (direction, handle)
    cdef dict _digests          # and back

    def __cinit__(self, *, uint64_t replay_window=4096, uint32_t hold_packets=64,
                  uint32_t hold_bytes=256 * 1024, double hold_timeout=60.0,
                  uint32_t max_holds=1024, uint64_t max_hold_total=32 * 1024 * 1024,
                  Classifier classifier=None):
        _fetch_ciphers()
        if replay_window < 1 or replay_window > 0x7FFFFFFF:
            raise ValueError("the replay window is 1 to 2^31 - 1 packets")
        if max_holds < 1:
            raise ValueError("max_holds is at least 1 (a %trap needs its hold)")
        self.c = <DpCore *>calloc(1, sizeof(DpCore))
        if self.c == NULL:
            raise MemoryError()
        self.c.ev_fd = self.c.wake_fds[0] = self.c.wake_fds[1] = -1
        self.c.events = <DpEvent *>calloc(EV_CAP, sizeof(DpEvent))
        if self.c.events == NULL:
            raise MemoryError()
        oe_mutex_init(&self.c.ev_lock)
        oe_mutex_init(&self.c.hold_lock)
        oe_rwlock_init_writers_first(&self.c.sa_lock)
        self.c.ev_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.c.wake_fds[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.c.wake_fds[1] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.c.ev_fd < 0 or self.c.wake_fds[0] < 0 or self.c.wake_fds[1] < 0:
            raise OSError("eventfd failed")
        self.c.replay_window = replay_window
        self.c.hold_packets = hold_packets
        self.c.hold_bytes = hold_bytes
        self.c.hold_timeout = hold_timeout
        self.c.max_holds = max_holds
        self.c.max_hold_total = max_hold_total
        self.c.tun_mtu = 1400
        self.c.tun_fd = -1
        self._next_handle = 1
        self._keys = {}
        self._digests = {}
        for k in range(6):
            self.c.fds[k] = -1
        self.classifier = classifier if classifier is not None else Classifier()

    def __dealloc__(self):
        cdef uint32_t i
        cdef int k
        cdef Hold *h
        if self.c == NULL:
            return
        self.stop()
        for i in range(self.c.sa_out.cap):
            sa_free(self.c.sa_out.slots[i])
        for i in range(self.c.sa_in.cap):
            sa_free(self.c.sa_in.slots[i])
        free(self.c.sa_out.slots)
        free(self.c.sa_in.slots)
        for k in range(HOLD_BUCKETS):
            while self.c.holds[k] != NULL:
                h = self.c.holds[k]
                self.c.holds[k] = h.next
                hold_free(h)
        while self.c.ev_count:
            free(self.c.events[self.c.ev_head].data)
            self.c.ev_head = (self.c.ev_head + 1) % EV_CAP
            self.c.ev_count -= 1
        free(self.c.events)
        if self.c.ev_fd >= 0:
            esp_sys_close(self.c.ev_fd)
        for k in range(2):
            if self.c.wake_fds[k] >= 0:
                esp_sys_close(self.c.wake_fds[k])
        oe_mutex_destroy(&self.c.ev_lock)
        oe_mutex_destroy(&self.c.hold_lock)
        oe_rwlock_destroy(&self.c.sa_lock)
        free(self.c)
        self.c = NULL

    cdef void _wake(self) noexcept:
        cdef uint64_t one = 1
        esp_sys_write(self.c.wake_fds[0], &one, 8)
        esp_sys_write(self.c.wake_fds[1], &one, 8)

    # ------------------------------------------------------------------------- SAs

    def add_sa(self, uint32_t spi, str direction, bytes key, *, local, peer, bint tunnel=True,
               bint esn=False, str encap="udp", int local_port=4500, int peer_port=4500,
               src_ts=None, dst_ts=None, int proto=0, sport=(0, 65535), dport=(0, 65535),
               int path_mtu=1500, replay_window=None, uint64_t soft_bytes=0,
               uint64_t hard_bytes=0, uint64_t soft_packets=0, uint64_t hard_packets=0,
               double soft_time=0.0, double hard_time=0.0, uint64_t seq=0, now=None) -> int:
        """Install an SA; its handle, for del_sa(), sa_stats(), move_sa() and SaAction.

        `key` is KEYMAT: AES key || 4-byte salt (RFC 4106 8.1). direction "out" seals towards
        `peer`; "in" opens what `peer` sends. Inbound SAs are found by the SPI we chose, so an
        inbound handle is its SPI. Outbound SPIs are the peer's choice, and two peers may pick
        the same one: an outbound SA gets a fresh local handle, never reused (issue 10, 1).
        Refused (ValueError, counted as sa_refused), never replaced: an inbound SPI already in
        use, and a KEYMAT some live SA already has (re-installing a key would restart its
        sequence numbers, hence its GCM nonces: RFC 4106 3.1).

        Traffic selectors (src_ts/dst_ts: an address, a CIDR or a (first, last) address pair;
        proto; inclusive port ranges, which need a proto) say which inner packets the SA
        carries, exactly as negotiated; they default to peer -> local for "in"
        (checked on every packet, RFC 4322 12.1) and local -> peer for "out".
        Lifetimes are counted from now (seconds; `now` is CLOCK_MONOTONIC, default: the clock).
        `seq` is the last sequence number sent ("out") or the top of the window ("in"): 0 for a
        new SA; tests start near a 32-bit boundary with it.
        """
        cdef EspSa *sa
        cdef int k
        cdef uint32_t handle
        cdef SaTable *table
        cdef double t0 = oe_now() if now is None else now
        if spi < 256:
            raise ValueError("SPIs 0 to 255 are reserved (RFC 4303 2.1)")
        if direction not in ("in", "out"):
            raise ValueError("direction is 'in' or 'out'")
        if encap not in ("udp", "esp"):
            raise ValueError("encap is 'udp' (RFC 3948) or 'esp' (IP protocol 50)")
        if len(key) not in (20, 36):
            raise ValueError("KEYMAT is 20 (AES-128-GCM) or 36 (AES-256-GCM) bytes")
        if not 0 <= proto <= 255:
            raise ValueError("the protocol is 0 (any) to 255")
        for lo, hi in (sport, dport):
            if not 0 <= lo <= hi <= 65535:
                raise ValueError(f"bad port range {lo}-{hi}")
        if not proto and (tuple(sport) != (0, 65535) or tuple(dport) != (0, 65535)):
            raise ValueError("port ranges need a protocol")
        local_b = _ipaddress.ip_address(local).packed
        peer_b = _ipaddress.ip_address(peer).packed
        if len(local_b) != len(peer_b):
            raise ValueError("local and peer are not of one address family")
        family = 4 if len(peer_b) == 4 else 6
        inbound = direction == "in"
        if src_ts is None:
            src_ts = _ipaddress.ip_address(peer if inbound else local)
        if dst_ts is None:
            dst_ts = _ipaddress.ip_address(local if inbound else peer)
        ts_version, src_lo, src_hi = _ts_range(src_ts)
        dst_version, dst_lo, dst_hi = _ts_range(dst_ts)
        if ts_version != dst_version:
            raise ValueError("traffic selectors mix address families")
        if not tunnel and ts_version != family:
            raise ValueError("transport mode carries the outer address family only")
        window = self.c.replay_window if replay_window is None else replay_window
        if window < 1 or window > 0x7FFFFFFF:
            raise ValueError("the replay window is 1 to 2^31 - 1 packets")
        mtu = path_mtu - esp_overhead(family, encap, tunnel)
        if mtu < 68:
            raise ValueError(f"path MTU {path_mtu} leaves no room for ESP")
        digest = _hashlib.sha256(key).digest()
        if inbound and sa_find(&self.c.sa_in, spi) != NULL:
            self._refuse(f"inbound SPI {spi:08x} is already installed")
        if digest in self._keys:
            used = self._keys[digest]
            self._refuse(f"this KEYMAT is already installed ({used[0]}bound SA {used[1]:#x}): "
                         "re-installing it would repeat GCM nonces")
        if not inbound and self._next_handle == 0xFFFFFFFF:
            self._refuse("no outbound SA handle left")
        handle = spi if inbound else self._next_handle
        sa = <EspSa *>calloc(1, sizeof(EspSa))
        if sa == NULL:
            raise MemoryError()
        try:
            sa.handle = handle
            sa.spi = spi
            sa.direction = DIR_IN if inbound else DIR_OUT
            sa.tunnel = tunnel
            sa.esn = esn
            sa.encap = ENCAP_UDP if encap == "udp" else ENCAP_RAW
            sa.family = family
            memcpy(sa.local, <const char *>local_b, len(local_b))
            memcpy(sa.peer, <const char *>peer_b, len(peer_b))
            sa.local_port = local_port
            sa.peer_port = peer_port
            memcpy(sa.salt, (<const char *>key) + len(key) - 4, 4)
            if replay_init(&sa.replay, window) != 0:
                raise MemoryError()
            if inbound:
                sa.replay.top = seq
            else:
                sa.seq = seq
            for k in range(NCTX):
                sa.ctx[k] = aead_context(key, not inbound)
            sa.ts_version = ts_version
            memcpy(sa.ts_src_lo, <const char *>src_lo, len(src_lo))
            memcpy(sa.ts_src_hi, <const char *>src_hi, len(src_hi))
            memcpy(sa.ts_dst_lo, <const char *>dst_lo, len(dst_lo))
            memcpy(sa.ts_dst_hi, <const char *>dst_hi, len(dst_hi))
            sa.ts_proto = proto
            sa.ts_sport_lo = sport[0]
            sa.ts_sport_hi = sport[1]
            sa.ts_dport_lo = dport[0]
            sa.ts_dport_hi = dport[1]
            sa.soft_bytes = soft_bytes
            sa.hard_bytes = hard_bytes
            sa.soft_packets = soft_packets
            sa.hard_packets = hard_packets
            sa.soft_time = t0 + soft_time if soft_time > 0 else 0.0
            sa.hard_time = t0 + hard_time if hard_time > 0 else 0.0
            sa.mtu = mtu
        except BaseException:
            sa_free(sa)
            raise
        with nogil:
            oe_wr_lock(&self.c.sa_lock)
        table = &self.c.sa_in if inbound else &self.c.sa_out
        k = sa_table_put(table, sa)
        oe_rw_unlock(&self.c.sa_lock)
        if k != 0:
            sa_free(sa)
            raise MemoryError()
        if not inbound:
            self._next_handle += 1
        self._keys[digest] = (direction, handle)
        self._digests[direction, handle] = digest
        return handle

    cdef _refuse(self, str why):
        dp_count(self.c, C_SA_REFUSED)
        raise ValueError(f"add_sa refused: {why}")

    def move_sa(self, uint32_t handle, str direction, peer, int peer_port) -> bool:
        """The peer's NAT mapping changed (RFC 7296 2.23): send to / accept from its new
        address and port. Keys, sequence numbers and the replay window stay as they are; an
        SA is never re-added for this, which would restart its IVs under the same key."""
        cdef EspSa *sa
        cdef bytes peer_b = _ipaddress.ip_address(peer).packed
        if direction not in ("in", "out"):
            raise ValueError("direction is 'in' or 'out'")
        with nogil:
            oe_wr_lock(&self.c.sa_lock)
        sa = sa_find(&self.c.sa_in if direction == "in" else &self.c.sa_out, handle)
        if sa != NULL and len(peer_b) == (4 if sa.family == 4 else 16):
            memcpy(sa.peer, <const char *>peer_b, len(peer_b))
            sa.peer_port = peer_port
        oe_rw_unlock(&self.c.sa_lock)
        return sa != NULL

    def del_sa(self, uint32_t handle, str direction) -> bool:
        """Remove an SA by its handle; True if it existed. Packets in flight finish under the
        read lock."""
        cdef EspSa *sa
        if direction not in ("in", "out"):
            raise ValueError("direction is 'in' or 'out'")
        with nogil:
            oe_wr_lock(&self.c.sa_lock)
        sa = sa_table_remove(&self.c.sa_in if direction == "in" else &self.c.sa_out, handle)
        oe_rw_unlock(&self.c.sa_lock)
        if sa != NULL:
            del self._keys[self._digests.pop((direction, handle))]
        sa_free(sa)
        return sa != NULL

    def sa_stats(self, uint32_t handle, str direction) -> dict | None:
        """Counters of one SA (by its handle), or None."""
        cdef EspSa *sa
        with nogil:
            oe_rd_lock(&self.c.sa_lock)
        sa = sa_find(&self.c.sa_in if direction == "in" else &self.c.sa_out, handle)
        result = None if sa == NULL else _sa_dict(sa)
        oe_rw_unlock(&self.c.sa_lock)
        return result

    def sas(self) -> list:
        """Every SA with its counters."""
        cdef uint32_t i
        result = []
        with nogil:
            oe_rd_lock(&self.c.sa_lock)
        for i in range(self.c.sa_out.cap):
            if self.c.sa_out.slots[i] != NULL:
                result.append(_sa_dict(self.c.sa_out.slots[i]))
        for i in range(self.c.sa_in.cap):
            if self.c.sa_in.slots[i] != NULL:
                result.append(_sa_dict(self.c.sa_in.slots[i]))
        oe_rw_unlock(&self.c.sa_lock)
        return result

    def check_lifetimes(self, now=None) -> None:
        """Fire time-based soft/hard events due at `now` (the loops do this twice a second)."""
        dp_sweep(self.c, oe_now() if now is None else now)

    # ------------------------------------------------------------------ eroutes and holds

    def replace_eroutes(self, table) -> None:
        """Swap in an oe.eroute.ErouteTable atomically; holds it no longer traps are released.
        Costs in proportion to the table (it is compared with the one in force)."""
        self.classifier.replace(table)
        oe_store_int(&self.c.recheck, 1)
        self._wake()

    def update_eroutes(self, add=(), remove=()) -> None:
        """Atomically remove the eroutes of the selectors `remove`, then add the Eroutes `add`
        (replacing any of the same selector): the cost of one change does not grow with the
        table (issue 10, 6). Holds the table no longer traps are released."""
        self.classifier.update(add, remove)
        oe_store_int(&self.c.recheck, 1)
        self._wake()

    def release_holds(self, now=None) -> list:
        """Without the loops: recheck holds now and return what their release produced."""
        cdef double t = oe_now() if now is None else now
        result = []
        cdef OutBatch *b = _api_batch(result)
        try:
            hold_recheck(self.c, self.classifier, CTX_API, b, t, True)
            batch_flush(self.c, b)
        finally:
            _api_batch_free(b)
        return result

    def holds(self) -> list:
        """(src, dst, packets queued) for every %hold the datapath keeps."""
        cdef Hold *h
        cdef int k
        result = []
        oe_mutex_lock(&self.c.hold_lock)
        try:
            for k in range(HOLD_BUCKETS):
                h = self.c.holds[k]
                while h != NULL:
                    alen = 4 if h.version == 4 else 16
                    result.append((_ipaddress.ip_address((<char *>h.src)[:alen]),
                                   _ipaddress.ip_address((<char *>h.dst)[:alen]), h.npkts))
                    h = h.next
        finally:
            oe_mutex_unlock(&self.c.hold_lock)
        return result

    # ---------------------------------------------------------------------- events

    @property
    def events_fd(self) -> int:
        """Readable when events are waiting (an eventfd: loop.add_reader(fd, ...))."""
        return self.c.ev_fd

    def read_events(self) -> list:
        """Drain the events (oe.dpevents dataclasses): lifetime events first, then the queue
        oldest first."""
        cdef uint64_t junk
        cdef DpEvent e
        esp_sys_read(self.c.ev_fd, &junk, 8)
        result = self._lifetime_events() if oe_swap_int(&self.c.lifetime_pending, 0) else []
        while True:
            oe_mutex_lock(&self.c.ev_lock)
            if self.c.ev_count == 0:
                oe_mutex_unlock(&self.c.ev_lock)
                break
            e = self.c.events[self.c.ev_head]
            self.c.ev_head = (self.c.ev_head + 1) % EV_CAP
            self.c.ev_count -= 1
            self.c.ev_ike -= e.kind == EV_IKE
            oe_mutex_unlock(&self.c.ev_lock)
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
            oe_rd_lock(&self.c.sa_lock)
        for k in range(2):
            table = &self.c.sa_out if k == 0 else &self.c.sa_in
            for i in range(table.cap):
                sa = table.slots[i]
                if sa == NULL:
                    continue
                bits = oe_and32(&sa.pending, ~(<uint32_t>(PENDING_SOFT | PENDING_HARD)))
                direction = "in" if sa.direction == DIR_IN else "out"
                if bits & PENDING_SOFT:
                    result.append(SaSoftLimit(spi=sa.spi, direction=direction,
                                              reason=REASONS[sa.soft_reason], handle=sa.handle))
                if bits & PENDING_HARD:
                    result.append(SaExpired(spi=sa.spi, direction=direction,
                                            reason=REASONS[sa.hard_reason], handle=sa.handle))
        oe_rw_unlock(&self.c.sa_lock)
        return result

    cdef object _event(self, DpEvent *e):
        cdef EspSa *sa
        if e.kind == EV_ACQUIRE:
            alen = 4 if e.version == 4 else 16
            return Acquire(src=_ipaddress.ip_address((<char *>e.src)[:alen]),
                           dst=_ipaddress.ip_address((<char *>e.dst)[:alen]),
                           proto=e.proto, sport=e.sport, dport=e.dport)
        if e.kind == EV_IKE:
            alen = 4 if e.version == 4 else 16
            data = (<char *>e.data)[:e.length]
            free(e.data)
            return IkeMessage(src=_ipaddress.ip_address((<char *>e.src)[:alen]), sport=e.sport,
                              data=data)
        # Failure events are coalesced: re-arm so the next failure raises a new one.
        with nogil:
            oe_rd_lock(&self.c.sa_lock)
        sa = sa_find(&self.c.sa_in, e.handle)
        if sa != NULL:
            oe_and32(&sa.pending, <uint32_t>~(PENDING_REPLAY if e.kind == EV_REPLAY else PENDING_AUTH))
        oe_rw_unlock(&self.c.sa_lock)
        if e.kind == EV_REPLAY:
            return ReplayFailure(spi=e.spi, total=e.count)
        return AuthFailure(spi=e.spi, total=e.count)

    def stats(self) -> dict:
        """Global counters by name, then the holds in place and their caps."""
        result = {name: oe_load64(&self.c.counters[i]) for i, name in enumerate(COUNTER_NAMES)}
        oe_mutex_lock(&self.c.hold_lock)
        result.update(holds=self.c.nholds, hold_total_bytes=self.c.hold_total,
                      max_holds=self.c.max_holds, max_hold_total=self.c.max_hold_total)
        oe_mutex_unlock(&self.c.hold_lock)
        return result

    # ------------------------------------------------------ packet functions from Python

    def seal(self, uint32_t handle, packet) -> bytes:
        """ESP-encapsulate one IP packet on the outbound SA `handle` (no eroute, hold or MTU)."""
        cdef EspSa *sa
        cdef uint64_t seq
        cdef int r
        cdef bytes data = bytes(packet)
        out = bytearray(len(data) + 64)
        cdef uint8_t[::1] view = out
        with nogil:
            oe_rd_lock(&self.c.sa_lock)
        try:
            sa = sa_find(&self.c.sa_out, handle)
            if sa == NULL:
                raise EspError(REASONS[R_UNKNOWN_SPI])
            if not sa_admit(self.c, sa, len(data), oe_now()):
                raise EspError(REASONS[R_EXPIRED])
            r = esp_seal(sa, CTX_API, <const uint8_t *><const char *>data, len(data), &view[0],
                         len(out), &seq)
            if r == -R_SEQUENCE:
                sa_fire(self.c, sa, 1, R_SEQUENCE)
            if r < 0:
                raise EspError(REASONS[-r])
            sa_account(self.c, sa, len(data), seq, oe_now())
        finally:
            oe_rw_unlock(&self.c.sa_lock)
        return bytes(out[:r])

    def open(self, esp) -> tuple:
        """Decapsulate one ESP packet: (spi, next header, payload); raise EspError if refused.

        Counts like the loops, but does not check selectors (see inbound() for the full path).
        """
        cdef EspSa *sa
        cdef uint64_t seq
        cdef int r, nh
        cdef bytes data = bytes(esp)
        out = bytearray(max(len(data), 16))
        cdef uint8_t[::1] view = out
        if len(data) < ESP_HDR:
            dp_count(self.c, C_MALFORMED)
            raise EspError(REASONS[R_MALFORMED])
        with nogil:
            oe_rd_lock(&self.c.sa_lock)
        try:
            spi = oe_rd32(<const uint8_t *><const char *>data)
            sa = sa_find(&self.c.sa_in, spi)
            if sa == NULL:
                dp_count(self.c, C_UNKNOWN_SPI)
                raise EspError(REASONS[R_UNKNOWN_SPI])
            r = esp_open(sa, CTX_API, <const uint8_t *><const char *>data, len(data), &view[0],
                         len(out), &nh, &seq)
            if r == -R_REPLAY or r == -R_AUTH:
                sa_failure(self.c, sa, -r)
            elif r == -R_PADDING:
                oe_add64(&sa.err_malformed, 1)
                dp_count(self.c, C_PADDING)
            elif r < 0:
                oe_add64(&sa.err_malformed, 1)
                dp_count(self.c, C_MALFORMED)
            if r < 0:
                raise EspError(REASONS[-r])
            sa_account(self.c, sa, r, seq, oe_now())
        finally:
            oe_rw_unlock(&self.c.sa_lock)
        return spi, nh, bytes(out[:r])

    def outbound(self, packet, now=None) -> list:
        """Process one packet as if read from the TUN: [(kind, address, port, bytes)].

        kind is "udp" (ESP-in-UDP to address:port), "esp" (raw ESP to address), "pass" (clear,
        to address) or "tun" (an ICMP error written back to the host).
        """
        cdef bytearray buf = bytearray(packet)
        cdef double t = oe_now() if now is None else now
        if len(buf) == 0:
            dp_count(self.c, C_MALFORMED)
            return []
        dp_count(self.c, C_TUN_READ)
        cdef uint8_t[::1] view = buf
        result = []
        cdef OutBatch *b = _api_batch(result)
        try:
            dp_outbound(self.c, self.classifier, CTX_API, &view[0], len(buf), b, False, t)
            batch_flush(self.c, b)
        finally:
            _api_batch_free(b)
        return result

    def inbound(self, data, src, int sport=4500, str encap="udp", now=None) -> list:
        """Process one datagram as if received from `src` (UDP payload or raw ESP)."""
        cdef bytes d = bytes(data)
        cdef double t = oe_now() if now is None else now
        cdef bytes srcb = _ipaddress.ip_address(src).packed
        cdef int fam = 4 if len(srcb) == 4 else 6
        cdef bytes padded = srcb + bytes(16 - len(srcb))
        result = []
        cdef OutBatch *b = _api_batch(result)
        try:
            dp_inbound(self.c, CTX_API, <const uint8_t *><const char *>d, len(d), fam,
                       <const uint8_t *><const char *>padded, sport,
                       ENCAP_UDP if encap == "udp" else ENCAP_RAW, b, t)
            batch_flush(self.c, b)
        finally:
            _api_batch_free(b)
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
            if fd >= 0:
                dp_deepen(fd, SOCKET_BUFFER)
            if fd >= 0 and k < 2:
                dp_udp_gro(fd)
        self.c.udp_gso = 1
        oe_store_int(&self.c.running, 1)
        roles = [LOOP_OUT | LOOP_IN] if threads == 1 else [LOOP_OUT, LOOP_IN]
        for k, role in enumerate(roles):
            self._args[k].datapath = <void *>self
            self._args[k].role = role
            if esp_thread_create(&self._threads[k], NULL, _loop_thread, &self._args[k]) != 0:
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
                esp_thread_join(self._threads[k], NULL)
        self._nthreads = 0

    cdef _run(self, int role):
        with nogil:
            dp_loop(self.c, self.classifier, role)


cdef OutBatch *_api_batch(list result) except NULL:
    cdef OutBatch *b = <OutBatch *>calloc(1, sizeof(OutBatch))
    if b == NULL:
        raise MemoryError()
    b.arena = <uint8_t *>malloc(<size_t>BATCH * SLOT)
    if b.arena == NULL:
        free(b)
        raise MemoryError()
    b.pylist = <PyObject *>result
    return b


cdef void _api_batch_free(OutBatch *b) noexcept:
    free(b.arena)
    free(b)


cdef dict _sa_dict(EspSa *sa):
    alen = 4 if sa.family == 4 else 16
    return {
        "handle": sa.handle,
        "spi": sa.spi,
        "direction": "in" if sa.direction == DIR_IN else "out",
        "peer": _ipaddress.ip_address((<char *>sa.peer)[:alen]),
        "local": _ipaddress.ip_address((<char *>sa.local)[:alen]),
        "mode": "tunnel" if sa.tunnel else "transport",
        "encap": "udp" if sa.encap == ENCAP_UDP else "esp",
        "esn": bool(sa.esn),
        "mtu": sa.mtu,
        "packets": oe_load64(&sa.packets),
        "bytes": oe_load64(&sa.nbytes),
        "seq": oe_load64(&sa.seq) if sa.direction == DIR_OUT else sa.replay.top,
        "replay": oe_load64(&sa.err_replay),
        "authentication": oe_load64(&sa.err_auth),
        "policy": oe_load64(&sa.err_policy),
        "malformed": oe_load64(&sa.err_malformed),
        "expired": oe_load64(&sa.err_expired),
        "soft_fired": bool(sa.fired & FIRED_SOFT),
        "hard_fired": bool(sa.fired & FIRED_HARD),
    }
