# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The outbound pipeline (outbound.pxd), per packet read from the TUN:

1. parse the IP header (IPv4 options and fragments pass untouched);
2. a pair with a hold is queued at once (so a trap raises one acquire, never one per packet);
3. classify on the compiled eroute table, then by action:
   SA      -> MSS clamp, too-big check (ICMP back if DF), seal, batch
   %trap   -> new hold + one Acquire event;  %hold -> queue
   %pass   -> raw socket (bypass mark) in clear;  %drop -> discard
   %reject -> ICMP administratively prohibited written back into the TUN

Holds: when the eroutes change, every hold is reclassified; a pair no longer %trap/%hold has
its queue sent, in order, under the new verdict (hold_recheck).
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

from oe.dp.batch cimport OUT_PASS, OUT_RAW, OUT_TUN, OUT_UDP, SLOT, batch_commit, batch_slot
from oe.dp.classifier cimport ACT_DROP, ACT_HOLD, ACT_PASS, ACT_REJECT, ACT_SA, ACT_TRAP, Verdict
from oe.dp.codes cimport (C_ACQUIRES, C_DROPPED, C_ESP_OUT, C_EXPIRED, C_HOLD_DISCARDED,
                          C_HOLD_RELEASED, C_MALFORMED, C_MSS_CLAMPED, C_NO_POLICY, C_NO_SA,
                          C_PASSED, C_REJECTED, C_TOO_BIG, R_SEQUENCE, count, count_n)
from oe.dp.esp cimport esp_seal
from oe.dp.events cimport EV_ACQUIRE, DpEvent, ev_push
from oe.dp.holds cimport (HOLD_BUCKETS, HeldPkt, Hold, hold_create, hold_enqueue, hold_find,
                          hold_forget, hold_free, hold_remove)
from oe.dp.packet cimport PktInfo, addr_len, icmp_error, is_link_chatter, mss_clamp, parse_ip
from oe.dp.sa cimport ENCAP_UDP, EspSa, sa_account, sa_admit, sa_find, sa_fire
from oe.dp.sync cimport (oe_add64, oe_load_int, oe_mutex_lock, oe_mutex_unlock, oe_rd_lock,
                         oe_rw_unlock, oe_swap_int)


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
    cdef uint8_t *slot
    cdef uint64_t seq
    cdef int r
    if sa == NULL:
        count(c.counters, C_NO_SA)
        return 0
    if n > sa.mtu and info.df:
        return sa.mtu
    if not sa_admit(&c.events, sa, n, now):
        oe_add64(&sa.err_expired, 1)
        count(c.counters, C_EXPIRED)
        return 0
    if mss_clamp(pkt, info, sa.mtu):
        count(c.counters, C_MSS_CLAMPED)
    slot = batch_slot(c, b)
    r = esp_seal(sa, ctxi, pkt, n, slot, SLOT, &seq)
    if r < 0:
        if -r == R_SEQUENCE:
            sa_fire(&c.events, sa, 1, R_SEQUENCE)
        oe_add64(&sa.err_expired, 1)
        count(c.counters, C_EXPIRED)
        return 0
    sa_account(&c.events, sa, n, seq, now)
    # Raw sockets take no port (IPv6 refuses any but the protocol's).
    batch_commit(b, OUT_UDP if sa.encap == ENCAP_UDP else OUT_RAW, sa.family, sa.peer,
                 sa.peer_port if sa.encap == ENCAP_UDP else 0, slot, r)
    count(c.counters, C_ESP_OUT)
    return 0


cdef void _send_clear(DpCore *c, const uint8_t *pkt, size_t n, const PktInfo *info,
                      OutBatch *b, int counter) noexcept nogil:
    cdef uint8_t *slot = batch_slot(c, b)
    memcpy(slot, pkt, n)
    batch_commit(b, OUT_PASS, info.version, info.dst, 0, slot, n)
    count(c.counters, counter)


cdef void _send_icmp(DpCore *c, const uint8_t *pkt, const PktInfo *info, OutBatch *b,
                     int type4, int code4, int type6, int code6, uint32_t mtu,
                     int counter) noexcept nogil:
    """An ICMP error about pkt, written back into the TUN."""
    cdef uint8_t *slot = batch_slot(c, b)
    cdef int r = icmp_error(slot, pkt, info, type4, code4, type6, code6, mtu)
    if r > 0:
        batch_commit(b, OUT_TUN, info.version, NULL, 0, slot, r)
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
                       bint reclassify) noexcept nogil:
    """Release, in order, every hold whose pair the eroute table no longer traps or holds.

    Unless `reclassify` or the table changed since the last check, only holds past the hold
    timeout go, so the periodic check adds nothing to the eroutes' packet counters.
    """
    cdef Hold *released
    cdef Hold *h
    cdef HeldPkt *p
    cdef HeldPkt *q
    oe_mutex_lock(&c.holds.lock)
    if oe_swap_int(&c.holds.recheck, 0):
        reclassify = True
    released = _take_released_locked(c, cls, now, reclassify)
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


cdef Hold *_take_released_locked(DpCore *c, Classifier cls, double now,
                                 bint reclassify) noexcept nogil:
    """Take out the holds to release (a list linked by next); discard the timed-out ones."""
    cdef Hold *released = NULL
    cdef Hold **link
    cdef Hold *h
    cdef PktInfo info
    cdef Verdict v
    cdef int k
    cdef bint keep
    for k in range(HOLD_BUCKETS):
        link = &c.holds.buckets[k]
        while link[0] != NULL:
            h = link[0]
            keep = now - h.created < c.holds.timeout
            if (keep and reclassify and h.head != NULL
                    and parse_ip(h.head.data, h.head.length, &info) == 0):
                v = cls.classify(info.version, info.src, info.dst, info.proto, info.sport,
                                 info.dport, 0)
                keep = v.action == ACT_TRAP or v.action == ACT_HOLD
            if keep:
                link = &h.next
                continue
            link[0] = h.next
            hold_forget(&c.holds, h)
            if now - h.created >= c.holds.timeout:
                count_n(c.counters, C_HOLD_DISCARDED, h.npkts)
                hold_free(h)
                continue
            h.next = released
            released = h
    return released
