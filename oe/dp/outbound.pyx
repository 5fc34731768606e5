# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The outbound pipeline (outbound.pxd), per packet read from the TUN:

1. parse the IP header (IPv4 options and fragments pass untouched);
2. a pair with a hold is queued at once (so a trap raises one acquire, never one per packet);
3. classify on the compiled eroute table, then by action:
   SA      -> too-big check (ICMP back if DF), MSS clamp, fragment (IPv4 without DF), seal
              with the outer DF by policy (RFC 4301 8.1), batch
   %trap   -> new hold + one Acquire event;  %hold -> queue
   %pass   -> raw socket (bypass mark) in clear;  %drop -> discard
   %reject -> ICMP administratively prohibited written back into the TUN

Holds: when the eroutes change, every hold is reclassified; a pair no longer %trap/%hold has
its queue sent, in order, under the new verdict (hold_recheck).
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

from oe.dp.batch cimport OUT_PASS, OUT_RAW, OUT_TUN, OUT_UDP, SLOT, batch_commit, batch_slot
from oe.dp.classifier cimport ACT_DROP, ACT_HOLD, ACT_PASS, ACT_REJECT, ACT_SA, ACT_TRAP, Verdict
from oe.dp.codes cimport (C_ACQUIRES, C_DROPPED, C_ESP_OUT, C_EXPIRED, C_HOLD_DISCARDED,
                          C_HOLD_RELEASED, C_MALFORMED, C_MSS_CLAMPED, C_NO_POLICY, C_NO_SA,
                          C_PASSED, C_PMTU_BLACK_HOLES, C_REJECTED, C_TOO_BIG, R_SEQUENCE, count,
                          count_n)
from oe.dp.esp cimport ESP_HDR, ESP_ICV, ESP_IV, ESP_TRAILER, esp_seal
from oe.dp.events cimport EV_ACQUIRE, EV_BLACK_HOLE, DpEvent, ev_push
from oe.dp.holds cimport (HOLD_BUCKETS, HeldPkt, Hold, HoldPair, hold_create, hold_enqueue,
                          hold_find, hold_forget, hold_free, hold_remove)
from oe.dp.core cimport DF_CLEAR, DF_SET
from oe.dp.packet cimport (PROBE_ECHO, PROBE_ID, PROBE_MAGIC_HI, PROBE_MAGIC_LO, PROTO_ICMP,
                           PROTO_ICMPV6, PROTO_TCP, PktInfo, addr_len, icmp_error,
                           is_link_chatter, mss_clamp, oe_csum_add, oe_csum_fold, oe_rd16,
                           oe_rd32, oe_wr16, oe_wr32, option_len, outer_ip, parse_ip)
from oe.dp.sa cimport ENCAP_UDP, EspSa, sa_account, sa_admit, sa_find, sa_fire
from oe.dp.sync cimport (oe_add64, oe_load_int, oe_mutex_lock, oe_mutex_unlock, oe_now,
                         oe_rd_lock, oe_rw_unlock, oe_store_int, oe_swap_int)

cdef enum:
    IPV6_MIN_MTU = 1280         # RFC 8200 5
    BASE_V4 = 1200              # RFC 8899 5.1.2's BASE_PLPMTU (oe.pmtu.BASE_PLPMTU)
    BASE_V6 = 1280


cdef void dp_outbound(DpCore *c, Classifier cls, int ctxi, uint8_t *pkt, size_t n, OutBatch *b,
                      bint from_hold, double now) noexcept nogil:
    cdef PktInfo info
    cdef Verdict v
    if parse_ip(pkt, n, &info) < 0:
        count(c.counters, C_MALFORMED)
        return
    n = info.total              # ignore anything the TUN gave beyond the IP datagram
    if not from_hold and oe_load_int(&c.holds.count) > 0 and _join_hold(c, &info, pkt, n):
        return
    v = cls.classify(info.version, info.src, info.dst, info.proto, info.sport, info.dport, n)
    if v.action == ACT_SA:
        _send_esp(c, ctxi, v.sa, pkt, n, &info, b, now)
    elif v.action == ACT_TRAP or v.action == ACT_HOLD:
        if from_hold:
            count(c.counters, C_HOLD_DISCARDED)
        else:
            _hold(c, &info, pkt, n, v.action == ACT_TRAP, now)
    elif v.action == ACT_PASS:
        _send_clear(c, pkt, n, &info, b, C_PASSED)
    elif v.action == ACT_REJECT:
        # ICMP destination unreachable, communication administratively prohibited:
        # IPv4 type 3 code 13 (RFC 1812 5.2.7.1), IPv6 type 1 code 1 (RFC 4443 3.1).
        _send_icmp(c, pkt, &info, b, 3, 13, 1, 1, 0, C_REJECTED)
    elif v.action == ACT_DROP:
        count(c.counters, C_DROPPED)
    elif is_link_chatter(&info):
        # The kernel's own link-local or multicast traffic on the TUN: quietly dropped.
        count(c.counters, C_NO_POLICY)
    else:
        # No eroute, yet routed here: a CIDR steered in for a narrowed entry (`tcp 0 22`)
        # whose other traffic is in no group. No group means clear (README: Policy groups).
        _send_clear(c, pkt, n, &info, b, C_NO_POLICY)


# ----------------------------------------------------------------------- the verdicts

cdef void _send_esp(DpCore *c, int ctxi, uint32_t handle, uint8_t *pkt, size_t n,
                    const PktInfo *info, OutBatch *b, double now) noexcept nogil:
    """Seal under the outbound SA `handle`, or answer with ICMP "too big" (after the lock)."""
    cdef uint32_t too_big
    oe_rd_lock(&c.sas.lock)
    too_big = _seal_locked(c, ctxi, handle, pkt, n, info, b, now)
    oe_rw_unlock(&c.sas.lock)
    if too_big:
        # Path MTU discovery instead of a black hole (FreeS/WAN's BUGS; Bantoft's ICMP
        # black-hole proposal).
        _send_icmp(c, pkt, info, b, 3, 4, 2, 0, too_big, C_TOO_BIG)


cdef uint32_t _seal_locked(DpCore *c, int ctxi, uint32_t handle, uint8_t *pkt, size_t n,
                           const PktInfo *info, OutBatch *b, double now) noexcept nogil:
    """The SA part of _send_esp (the SA read lock held); the SA's MTU if the packet is too big
    for it and may not be fragmented, else 0."""
    cdef EspSa *sa = sa_find(&c.sas.out, handle)
    if sa == NULL:
        count(c.counters, C_NO_SA)
        return 0
    if n > sa.mtu and info.df:
        if info.version == 4:
            return sa.mtu
        if n > IPV6_MIN_MTU:
            return sa.mtu if sa.mtu > IPV6_MIN_MTU else IPV6_MIN_MTU
        # RFC 8200 5, RFC 4459 3: every IPv6 path carries 1280 bytes and no sender may be told
        # less, so such a packet goes in an outer packet the path may fragment (outer IPv4).
        _seal_one(c, ctxi, sa, pkt, n, False, b, now)
        return 0
    if mss_clamp(pkt, info, sa.mtu):
        count(c.counters, C_MSS_CLAMPED)
    if info.proto == PROTO_TCP and info.first_fragment:
        _watch_retransmission(c, sa, pkt, n, info, now)
    if n > sa.mtu:
        _seal_fragments(c, ctxi, sa, pkt, n, info, b, now)
    else:
        _seal_one(c, ctxi, sa, pkt, n, _outer_df(c, info), b, now)
    return 0


cdef void _watch_retransmission(DpCore *c, EspSa *sa, const uint8_t *pkt, size_t n,
                                const PktInfo *info, double now) noexcept nogil:
    """RFC 8899 4.3 / 5.2: black hole evidence from the datapath itself. A TCP segment whose
    ESP packet would exceed the base size (a size the path may have stopped carrying) that is
    sent again, its data at or below what its flow already sent, raises PathMtuBlackHole for
    the peer (once a second at most): the search confirms its size at once instead of at the
    next confirmation. Small segments sent again say nothing about the path MTU."""
    cdef const uint8_t *tcp = pkt + info.l4off
    cdef uint32_t flow, end
    cdef int k, alen = addr_len(info.version)
    cdef size_t hl
    cdef DpEvent e
    if n + sa.path_mtu - sa.mtu <= <size_t>(BASE_V4 if sa.family == 4 else BASE_V6):
        return
    if n < <size_t>info.l4off + 20:
        return
    hl = (tcp[12] >> 4) * 4
    if n <= info.l4off + hl:
        return
    end = oe_rd32(tcp + 4) + <uint32_t>(n - info.l4off - hl)
    flow = ((<uint32_t>info.sport << 16) | info.dport) ^ oe_rd32(info.src + alen - 4) \
        ^ oe_rd32(info.dst + alen - 4)
    k = (flow ^ (flow >> 16)) & 3
    if sa.bh_flow[k] != flow or <int32_t>(end - sa.bh_end[k]) > 0:
        sa.bh_flow[k] = flow
        sa.bh_end[k] = end
        return
    if now - sa.bh_raised < 1.0:
        return
    sa.bh_raised = now
    memset(&e, 0, sizeof(DpEvent))
    e.kind = EV_BLACK_HOLE
    e.version = sa.family
    memcpy(e.src, sa.peer, 16)
    count(c.counters, C_PMTU_BLACK_HOLES)
    ev_push(&c.events, c.counters, &e)


cdef inline bint _outer_df(const DpCore *c, const PktInfo *info) noexcept nogil:
    """RFC 4301 8.1: the outer DF bit by the policy (IPv6 inner packets count as DF)."""
    if c.df_policy == DF_SET:
        return True
    if c.df_policy == DF_CLEAR:
        return False
    return info.df


cdef bint _seal_one(DpCore *c, int ctxi, EspSa *sa, const uint8_t *pkt, size_t n, bint df,
                    OutBatch *b, double now) noexcept nogil:
    """Seal one inner packet and batch it; False if the SA refused it (counted).

    Linux sets the outer IPv4 DF bit per socket (IP_MTU_DISCOVER), not per packet: the ESP and
    UDP sockets set it; without it oe builds the outer header itself and sends it on the clear
    raw socket (IP_HDRINCL, the bypass mark), which the kernel leaves unfragmented. An outer
    IPv6 packet without "DF" (an inner IPv6 packet of up to 1280 bytes, RFC 8200 5) that does
    not fit the path is cut into IPv6 fragments here: the kernel does not know the path."""
    cdef uint8_t whole[1536]    # such an IPv6 packet: at most 1280 bytes inside
    cdef uint8_t *buf
    cdef size_t cap = SLOT
    cdef uint64_t seq
    cdef int r
    cdef int hdr = 0
    cdef bint udp = sa.encap == ENCAP_UDP
    cdef bint outer6 = sa.family == 6 and not df and n <= IPV6_MIN_MTU
    if not sa_admit(&c.events, sa, n, now):
        oe_add64(&sa.err_expired, 1)
        count(c.counters, C_EXPIRED)
        return False
    if sa.family == 4 and not df:
        hdr = 20 + (8 if udp else 0)
    elif outer6:
        hdr = 40 + (8 if udp else 0)
        buf = whole
        cap = sizeof(whole)
    if not outer6:
        buf = batch_slot(c, b)
    r = esp_seal(sa, ctxi, pkt, n, buf + hdr, cap - hdr, &seq)
    if r < 0:
        if -r == R_SEQUENCE:
            sa_fire(&c.events, sa, 1, R_SEQUENCE)
        oe_add64(&sa.err_expired, 1)
        count(c.counters, C_EXPIRED)
        return False
    sa_account(&c.events, sa, n, seq, now)
    if outer6 and <uint32_t>(hdr + r) > sa.path_mtu:
        outer_ip(buf, 6, sa.local, sa.peer, udp, sa.local_port, sa.peer_port, r, False)
        _outer_fragments(c, b, sa, buf, hdr + r, <uint32_t>seq ^ sa.spi)
    elif outer6:                # it fits whole: out on the ESP socket as ever
        buf = batch_slot(c, b)
        memcpy(buf, whole + hdr, r)
        batch_commit(b, OUT_UDP if udp else OUT_RAW, 6, sa.peer, sa.local,
                     sa.peer_port if udp else 0, buf, r, sa.handle)
    elif hdr:
        outer_ip(buf, 4, sa.local, sa.peer, udp, sa.local_port, sa.peer_port, r, False)
        batch_commit(b, OUT_PASS, 4, sa.peer, NULL, 0, buf, hdr + r, sa.handle)
    else:
        # Raw sockets take no port (IPv6 refuses any but the protocol's). Packet info sends
        # from the SA's own address: the host may have many (docs/gateway.md 1).
        batch_commit(b, OUT_UDP if udp else OUT_RAW, sa.family, sa.peer, sa.local,
                     sa.peer_port if udp else 0, buf, r, sa.handle)
    count(c.counters, C_ESP_OUT)
    return True


cdef void _outer_fragments(DpCore *c, OutBatch *b, const EspSa *sa, const uint8_t *pkt,
                           int total, uint32_t ident) noexcept nogil:
    """Cut an outer IPv6 packet into fragments that fit the SA's path MTU (RFC 8200 4.5),
    each sent whole on the clear raw socket; the peer's kernel reassembles them."""
    cdef int chunk = (<int>sa.path_mtu - 48) & ~7
    cdef int off = 0, piece
    cdef uint8_t *slot
    while off < total - 40:
        piece = chunk if total - 40 - off > chunk else total - 40 - off
        slot = batch_slot(c, b)
        memcpy(slot, pkt, 40)
        oe_wr16(slot + 4, <uint16_t>(8 + piece))
        slot[6] = 44                            # Fragment header
        slot[40] = pkt[6]
        slot[41] = 0
        oe_wr16(slot + 42, <uint16_t>(off | (1 if off + piece < total - 40 else 0)))
        oe_wr32(slot + 44, ident)
        memcpy(slot + 48, pkt + 40 + off, piece)
        batch_commit(b, OUT_PASS, 6, sa.peer, NULL, 0, slot, 48 + piece, sa.handle)
        off += piece


cdef void _seal_fragments(DpCore *c, int ctxi, EspSa *sa, uint8_t *pkt, size_t n,
                          const PktInfo *info, OutBatch *b, double now) noexcept nogil:
    """An inner IPv4 packet without DF too big for the SA: fragmented before encryption (RFC
    4301 8.1, RFC 791), each fragment its own ESP packet, so no outer fragment crosses the
    path. In place: each fragment's header is written just before its data, over data sent."""
    cdef uint8_t head[60]
    cdef int hlen = info.hlen
    cdef uint16_t field = oe_rd16(pkt + 6)
    cdef size_t step = (sa.mtu - hlen) & ~(<size_t>7)
    cdef size_t data = n - hlen
    cdef size_t off = 0, piece
    cdef uint8_t *frag
    cdef bint last
    memcpy(head, pkt, hlen)
    while off < data:
        piece = step if data - off > step else data - off
        last = off + piece == data
        frag = pkt + off
        memcpy(frag, head, hlen)
        oe_wr16(frag + 2, <uint16_t>(hlen + piece))
        oe_wr16(frag + 6, <uint16_t>(((field & 0x1FFF) + off // 8)
                                     | (0x2000 if not last or field & 0x2000 else 0)))
        frag[10] = 0
        frag[11] = 0
        oe_wr16(frag + 10, ~oe_csum_fold(oe_csum_add(0, frag, hlen)))
        if not _seal_one(c, ctxi, sa, frag, hlen + piece, _outer_df(c, info), b, now):
            return
        if off == 0:
            _keep_copied_options(head, hlen)
        off += piece


cdef void _keep_copied_options(uint8_t *head, int hlen) noexcept nogil:
    """RFC 791: fragments after the first carry only the options whose copied flag is set;
    the others become NOPs (the header keeps its length)."""
    cdef int i = 20, olen
    while i < hlen:
        olen = option_len(head, i, hlen)
        if olen == 0:
            break
        if not head[i] & 0x80:
            memset(head + i, 1, olen)
        i += olen


# ------------------------------------------------------------------- path MTU probes

cdef int dp_probe(DpCore *c, int ctxi, EspSa *sa, int size, uint8_t *plain, uint8_t *out,
                  size_t cap) noexcept nogil:
    """A path MTU probe of `size` outer bytes to the peer (docs/pmtu.md) on its tunnel mode
    outbound SA `sa` (its newest, which the caller found under the read lock), with DF: an
    ICMP echo request from the SA's inner source to its inner destination, padded with TFC
    padding (RFC 4303 2.4, 2.7) so the ESP packet has the size; the peer's stack answers it
    through its SA (inbound.pyx takes the reply as the ack). `plain` holds size bytes. The
    outer packet's length (at most size), or 0: too small."""
    cdef int hdr, room, plen, r
    cdef uint64_t seq
    hdr = (20 if sa.family == 4 else 40) + (8 if sa.encap == ENCAP_UDP else 0)
    room = (size - hdr - ESP_HDR - ESP_IV - ESP_ICV) & ~3    # payload, padding, trailer
    plen = room - ESP_TRAILER
    if plen < (20 if sa.ts_version == 4 else 40) + PROBE_ECHO or <size_t>size > cap:
        return 0
    _probe_request(plain, plen, sa, size)
    r = esp_seal(sa, ctxi, plain, plen, out + hdr, cap - hdr, &seq)
    if r < 0:
        return 0
    sa_account(&c.events, sa, plen, seq, oe_now())
    return outer_ip(out, sa.family, sa.local, sa.peer, sa.encap == ENCAP_UDP, sa.local_port,
                    sa.peer_port, r, True) + r


cdef void _probe_request(uint8_t *p, int plen, const EspSa *sa, int size) noexcept nogil:
    """The probe's inner packet: an echo request (PROBE_ID, sequence = size), then zeros."""
    cdef int hl = 20 if sa.ts_version == 4 else 40
    cdef uint8_t *icmp = p + hl
    cdef uint64_t s
    memset(p, 0, plen)
    if sa.ts_version == 4:
        p[0] = 0x45
        oe_wr16(p + 2, <uint16_t>(hl + PROBE_ECHO))
        p[8] = 64
        p[9] = PROTO_ICMP
        memcpy(p + 12, sa.ts_src_lo, 4)
        memcpy(p + 16, sa.ts_dst_lo, 4)
        oe_wr16(p + 10, ~oe_csum_fold(oe_csum_add(0, p, 20)))
        icmp[0] = 8
    else:
        p[0] = 0x60
        oe_wr16(p + 4, PROBE_ECHO)
        p[6] = PROTO_ICMPV6
        p[7] = 64
        memcpy(p + 8, sa.ts_src_lo, 16)
        memcpy(p + 24, sa.ts_dst_lo, 16)
        icmp[0] = 128
    oe_wr16(icmp + 4, PROBE_ID)
    oe_wr16(icmp + 6, <uint16_t>size)
    oe_wr32(icmp + 8, PROBE_MAGIC_HI)
    oe_wr32(icmp + 12, PROBE_MAGIC_LO)
    s = 0
    if sa.ts_version == 6:      # RFC 4443 2.3: the pseudo-header (RFC 8200 8.1)
        s = oe_csum_add(0, p + 8, 32) + PROBE_ECHO + PROTO_ICMPV6
    oe_wr16(icmp + 2, ~oe_csum_fold(oe_csum_add(s, icmp, PROBE_ECHO)))


cdef void _send_clear(DpCore *c, const uint8_t *pkt, size_t n, const PktInfo *info,
                      OutBatch *b, int counter) noexcept nogil:
    cdef uint8_t *slot = batch_slot(c, b)
    memcpy(slot, pkt, n)
    batch_commit(b, OUT_PASS, info.version, info.dst, NULL, 0, slot, n, 0)
    count(c.counters, counter)


cdef void _send_icmp(DpCore *c, const uint8_t *pkt, const PktInfo *info, OutBatch *b,
                     int type4, int code4, int type6, int code6, uint32_t mtu,
                     int counter) noexcept nogil:
    """An ICMP error about pkt, written back into the TUN."""
    cdef uint8_t *slot = batch_slot(c, b)
    cdef int r = icmp_error(slot, pkt, info, type4, code4, type6, code6, mtu)
    if r > 0:
        batch_commit(b, OUT_TUN, info.version, NULL, NULL, 0, slot, r, 0)
    count(c.counters, counter)


# ---------------------------------------------------------------------------- holds

cdef bint _join_hold(DpCore *c, const PktInfo *info, const uint8_t *pkt,
                     size_t n) noexcept nogil:
    """Queue the packet on its pair's hold, if there is one."""
    cdef Hold *h
    oe_mutex_lock(&c.holds.lock)
    h = hold_find(&c.holds, info.version, info.src, info.dst)
    if h != NULL:
        hold_enqueue(&c.holds, c.counters, h, pkt, n)
    oe_mutex_unlock(&c.holds.lock)
    return h != NULL


cdef void _hold(DpCore *c, const PktInfo *info, const uint8_t *pkt, size_t n, bint trap,
                double now) noexcept nogil:
    """%hold: queue; %trap: queue on a new hold and raise one acquire."""
    cdef bint created
    oe_mutex_lock(&c.holds.lock)
    created = _hold_locked(c, info, pkt, n, now)
    oe_mutex_unlock(&c.holds.lock)
    if created and trap and not _acquire(c, info):
        # Nobody will negotiate: without its hold the pair's next packet traps again.
        oe_mutex_lock(&c.holds.lock)
        _drop_hold_locked(c, info)
        oe_mutex_unlock(&c.holds.lock)


cdef bint _hold_locked(DpCore *c, const PktInfo *info, const uint8_t *pkt, size_t n,
                       double now) noexcept nogil:
    """Queue on the pair's hold, created if need be (hold lock held); True if created."""
    cdef Hold *h = hold_find(&c.holds, info.version, info.src, info.dst)
    cdef bint created = False
    if h == NULL:
        h = hold_create(&c.holds, c.counters, info.version, info.src, info.dst, now)
        created = h != NULL
    if h != NULL:
        hold_enqueue(&c.holds, c.counters, h, pkt, n)
    return created


cdef void _drop_hold_locked(DpCore *c, const PktInfo *info) noexcept nogil:
    cdef Hold *h = hold_find(&c.holds, info.version, info.src, info.dst)
    if h != NULL:
        hold_remove(&c.holds, h)
        count_n(c.counters, C_HOLD_DISCARDED, h.npkts)
        hold_free(h)


cdef bint _acquire(DpCore *c, const PktInfo *info) noexcept nogil:
    """Queue an Acquire for the packet's pair; False if the queue dropped it."""
    cdef DpEvent e
    cdef int alen = addr_len(info.version)
    memset(&e, 0, sizeof(DpEvent))
    e.kind = EV_ACQUIRE
    e.version = info.version
    memcpy(e.src, info.src, alen)
    memcpy(e.dst, info.dst, alen)
    e.proto = info.proto
    e.sport = info.sport
    e.dport = info.dport
    count(c.counters, C_ACQUIRES)
    return ev_push(&c.events, c.counters, &e)


cdef void hold_recheck(DpCore *c, Classifier cls, int ctxi, OutBatch *b, double now,
                       bint reclassify, bint sweep) noexcept nogil:
    """Release, in order, the holds whose pair the eroute table no longer traps or holds.

    Reclassified: every hold with `reclassify` or after a change of the table beyond single
    pairs (holds.recheck), else the holds of the pairs whose eroutes changed (hold_mark): a
    change costs the holds it concerns, not all of them (issue 14: a burst of acquires makes
    thousands of changes a second). `sweep`: also every hold past the hold timeout goes; a
    hold is never counted against an eroute unless it is reclassified.
    """
    cdef Hold *released = NULL
    cdef Hold *h
    cdef HeldPkt *p
    cdef HeldPkt *q
    cdef HoldPair *m
    cdef int k
    oe_mutex_lock(&c.holds.lock)
    if oe_swap_int(&c.holds.recheck, 0):
        reclassify = True
    if reclassify or sweep:
        released = _take_released_locked(c, cls, now, reclassify)
    if not reclassify:
        for k in range(c.holds.nmarked):
            m = &c.holds.marked[k]
            h = hold_find(&c.holds, m.version, m.src, m.dst)
            if h != NULL and _goes(c, cls, h, now, True):
                hold_remove(&c.holds, h)
                released = _taken_out(c, h, now, released)
    oe_store_int(&c.holds.nmarked, 0)
    oe_mutex_unlock(&c.holds.lock)
    while released != NULL:
        h = released
        released = h.next
        p = h.head
        while p != NULL:
            q = p.next
            count(c.counters, C_HOLD_RELEASED)
            dp_outbound(c, cls, ctxi, p.data, p.length, b, True, now)
            free(p)
            p = q
        free(h)


cdef bint _goes(DpCore *c, Classifier cls, Hold *h, double now, bint reclassify) noexcept nogil:
    """Whether the hold leaves the table: past the hold timeout, or (reclassified) no longer
    trapped or held."""
    cdef PktInfo info
    cdef Verdict v
    if now - h.created >= c.holds.timeout:
        return True
    if (not reclassify or h.head == NULL
            or parse_ip(h.head.data, h.head.length, &info) != 0):
        return False
    v = cls.classify(info.version, info.src, info.dst, info.proto, info.sport, info.dport, 0)
    return v.action != ACT_TRAP and v.action != ACT_HOLD


cdef Hold *_taken_out(DpCore *c, Hold *h, double now, Hold *released) noexcept nogil:
    """A hold out of the table: discarded if timed out, else onto the list of holds to
    release (returned)."""
    if now - h.created >= c.holds.timeout:
        count_n(c.counters, C_HOLD_DISCARDED, h.npkts)
        hold_free(h)
        return released
    h.next = released
    return h


cdef Hold *_take_released_locked(DpCore *c, Classifier cls, double now,
                                 bint reclassify) noexcept nogil:
    """Take out the holds to release (a list linked by next); discard the timed-out ones."""
    cdef Hold *released = NULL
    cdef Hold **link
    cdef Hold *h
    cdef int k
    for k in range(HOLD_BUCKETS):
        link = &c.holds.buckets[k]
        while link[0] != NULL:
            h = link[0]
            if not _goes(c, cls, h, now, reclassify):
                link = &h.next
                continue
            link[0] = h.next
            hold_forget(&c.holds, h)
            released = _taken_out(c, h, now, released)
    return released
