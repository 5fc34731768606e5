# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The SA table and its accounting (sa.pxd): insert, remove and free SAs; lifetimes, failure
events and the one mapping from why an SA refused a packet to the counters."""

from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memset

from oe.dp.codes cimport (C_AUTH, C_EXPIRED, C_MALFORMED, C_PADDING, C_REPLAY, R_AUTH, R_BYTES,
                          R_EXPIRED, R_PACKETS, R_PADDING, R_REPLAY, R_SEQUENCE, R_TIME, count)
from oe.dp.events cimport EV_AUTH, EV_REPLAY, DpEvent, ev_push, ev_signal
from oe.dp.openssl cimport EVP_CIPHER_CTX_free
from oe.dp.packet cimport addr_len, has_ports, shift_back
from oe.dp.replay cimport replay_free
from oe.dp.sync cimport (oe_add64, oe_and32, oe_load64, oe_or32, oe_rd_lock, oe_rw_unlock,
                         oe_rwlock_destroy, oe_rwlock_init_writers_first, oe_store_int)


# ---------------------------------------------------------------------------- the tables

cdef void sa_db_init(SaDb *db) noexcept nogil:
    oe_rwlock_init_writers_first(&db.lock)


cdef void sa_db_free(SaDb *db) noexcept nogil:
    cdef uint32_t i
    for i in range(db.out.cap):
        sa_free(db.out.slots[i])
    for i in range(db.inb.cap):
        sa_free(db.inb.slots[i])
    free(db.out.slots)
    free(db.inb.slots)
    oe_rwlock_destroy(&db.lock)


cdef int sa_table_put(SaTable *t, EspSa *sa) noexcept nogil:
    """Insert an SA whose handle is not in the table. -1: no memory."""
    cdef EspSa **old_slots
    cdef uint32_t old_cap, i
    if (t.count + 1) * 2 > t.cap:
        old_slots = t.slots
        old_cap = t.cap
        t.cap = 16 if t.cap == 0 else t.cap * 2
        t.slots = <EspSa **>calloc(t.cap, sizeof(EspSa *))
        if t.slots == NULL:
            t.slots = old_slots
            t.cap = old_cap
            return -1
        t.count = 0
        for i in range(old_cap):
            if old_slots[i] != NULL:
                _sa_table_insert(t, old_slots[i])
        free(old_slots)
    _sa_table_insert(t, sa)
    return 0


cdef void _sa_table_insert(SaTable *t, EspSa *sa) noexcept nogil:
    cdef uint32_t i = sa_home(t, sa.handle)
    while t.slots[i] != NULL:
        i = (i + 1) & (t.cap - 1)
    t.slots[i] = sa
    t.count += 1


cdef EspSa *sa_table_remove(SaTable *t, uint32_t handle) noexcept nogil:
    """Take the SA out (backward-shift deletion keeps probing chains intact)."""
    cdef uint32_t i, j
    cdef EspSa *found
    if t.cap == 0:
        return NULL
    i = sa_home(t, handle)
    while True:
        if t.slots[i] == NULL:
            return NULL
        if t.slots[i].handle == handle:
            break
        i = (i + 1) & (t.cap - 1)
    found = t.slots[i]
    t.slots[i] = NULL
    t.count -= 1
    j = i
    while True:
        j = (j + 1) & (t.cap - 1)
        if t.slots[j] == NULL:
            break
        if shift_back(i, j, sa_home(t, t.slots[j].handle)):
            t.slots[i] = t.slots[j]
            t.slots[j] = NULL
            i = j
    return found


cdef void sa_free(EspSa *sa) noexcept nogil:
    cdef int k
    if sa == NULL:
        return
    for k in range(NCTX):
        if sa.ctx[k] != NULL:
            EVP_CIPHER_CTX_free(sa.ctx[k])
    replay_free(&sa.replay)
    free(sa)


cdef bint ts_allows(const EspSa *sa, const PktInfo *info) noexcept nogil:
    """Does the inner packet match the SA's traffic selectors (RFC 4322 12.1)?"""
    cdef int alen = addr_len(info.version)
    if info.version != sa.ts_version:
        return False
    if memcmp(info.src, sa.ts_src_lo, alen) < 0 or memcmp(info.src, sa.ts_src_hi, alen) > 0:
        return False
    if memcmp(info.dst, sa.ts_dst_lo, alen) < 0 or memcmp(info.dst, sa.ts_dst_hi, alen) > 0:
        return False
    if sa.ts_proto and info.proto != sa.ts_proto:
        return False
    if has_ports(info):
        if info.sport < sa.ts_sport_lo or info.sport > sa.ts_sport_hi:
            return False
        if info.dport < sa.ts_dport_lo or info.dport > sa.ts_dport_hi:
            return False
    return True


# ---------------------------------------------------------------------------- accounting

cdef void sa_fire(EventQueue *q, EspSa *sa, int hard, int reason) noexcept nogil:
    """Raise the soft or hard limit event of an SA, once, and never lose it.

    Not queued: a PENDING_ bit on the SA, which read_events() collects (bounded by the number
    of SAs), so a full event queue cannot leave an SA un-rekeyed or undeleted (issue 10, 7).
    """
    cdef uint32_t bit = FIRED_HARD if hard else FIRED_SOFT
    if (oe_or32(&sa.fired, bit) & bit) == 0:
        if hard:
            sa.hard_reason = reason
        else:
            sa.soft_reason = reason
        oe_or32(&sa.pending, PENDING_HARD if hard else PENDING_SOFT)
        oe_store_int(&q.lifetime_pending, 1)
        ev_signal(q)


cdef bint sa_admit(EventQueue *q, EspSa *sa, size_t n, double now) noexcept nogil:
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
        sa_fire(q, sa, 1, reason)
        return False
    return True


cdef void sa_account(EventQueue *q, EspSa *sa, size_t n, uint64_t seq, double now) noexcept nogil:
    cdef uint64_t p = oe_add64(&sa.packets, 1) + 1
    cdef uint64_t b = oe_add64(&sa.nbytes, n) + n
    if sa.fired & FIRED_SOFT:
        return
    if sa.soft_packets and p >= sa.soft_packets:
        sa_fire(q, sa, 0, R_PACKETS)
    elif sa.soft_bytes and b >= sa.soft_bytes:
        sa_fire(q, sa, 0, R_BYTES)
    elif sa.soft_time and now >= sa.soft_time:
        sa_fire(q, sa, 0, R_TIME)
    elif sa.direction == DIR_OUT and not sa.esn and seq >= SEQ_SOFT_32:
        sa_fire(q, sa, 0, R_SEQUENCE)


cdef void sa_refused(EventQueue *q, uint64_t *counters, EspSa *sa, int reason) noexcept nogil:
    """Count a packet esp_open() refused (R_*), on the SA and globally; a replayed or forged
    packet raises one event at a time per SA and kind (coalesced)."""
    cdef uint32_t bit
    cdef uint64_t total
    cdef DpEvent e
    if reason == R_EXPIRED:
        count(counters, C_EXPIRED)
        return
    if reason != R_REPLAY and reason != R_AUTH:
        oe_add64(&sa.err_malformed, 1)
        count(counters, C_PADDING if reason == R_PADDING else C_MALFORMED)
        return
    if reason == R_REPLAY:
        total = oe_add64(&sa.err_replay, 1) + 1
        count(counters, C_REPLAY)
        bit = PENDING_REPLAY
    else:
        total = oe_add64(&sa.err_auth, 1) + 1
        count(counters, C_AUTH)
        bit = PENDING_AUTH
    if (oe_or32(&sa.pending, bit) & bit) == 0:
        memset(&e, 0, sizeof(DpEvent))
        e.kind = EV_REPLAY if reason == R_REPLAY else EV_AUTH
        e.spi = sa.spi
        e.handle = sa.handle
        e.direction = sa.direction
        e.reason = reason
        e.count = total
        if not ev_push(q, counters, &e):
            oe_and32(&sa.pending, ~bit)      # re-arm: the next failure tries again


cdef void sa_sweep(EventQueue *q, SaDb *db, double now) noexcept nogil:
    """Time lifetimes fire even on idle SAs."""
    oe_rd_lock(&db.lock)
    _sweep_table(q, &db.out, now)
    _sweep_table(q, &db.inb, now)
    oe_rw_unlock(&db.lock)


cdef void _sweep_table(EventQueue *q, SaTable *t, double now) noexcept nogil:
    cdef uint32_t i
    cdef EspSa *sa
    for i in range(t.cap):
        sa = t.slots[i]
        if sa == NULL:
            continue
        if sa.hard_time and now >= sa.hard_time:
            sa_fire(q, sa, 1, R_TIME)
        elif sa.soft_time and now >= sa.soft_time:
            sa_fire(q, sa, 0, R_TIME)
