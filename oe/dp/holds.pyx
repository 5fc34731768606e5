# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The hold table (holds.pxd): find, create, fill and evict holds; the caller holds the lock."""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

from oe.dp.codes cimport C_HELD, C_HOLD_OVERFLOW, C_HOLDS_EVICTED, count, count_n
from oe.dp.packet cimport addr_len, oe_pair_hash
from oe.dp.sync cimport oe_mutex_destroy, oe_mutex_init, oe_store_int


cdef void holds_init(HoldTable *t) noexcept nogil:
    oe_mutex_init(&t.lock)


cdef void holds_free(HoldTable *t) noexcept nogil:
    cdef Hold *h
    cdef int k
    for k in range(HOLD_BUCKETS):
        while t.buckets[k] != NULL:
            h = t.buckets[k]
            t.buckets[k] = h.next
            hold_free(h)
    oe_mutex_destroy(&t.lock)


cdef inline uint32_t hold_hash(int version, const uint8_t *src, const uint8_t *dst) noexcept nogil:
    cdef uint32_t h = oe_pair_hash(src, dst, addr_len(version))
    return (h ^ (h >> 16)) & (HOLD_BUCKETS - 1)


cdef Hold *hold_find(HoldTable *t, int version, const uint8_t *src,
                     const uint8_t *dst) noexcept nogil:
    cdef int alen = addr_len(version)
    cdef Hold *h = t.buckets[hold_hash(version, src, dst)]
    while h != NULL:
        if (h.version == version and memcmp(h.src, src, alen) == 0
                and memcmp(h.dst, dst, alen) == 0):
            return h
        h = h.next
    return NULL


cdef Hold *hold_create(HoldTable *t, uint64_t *counters, int version, const uint8_t *src,
                       const uint8_t *dst, double now) noexcept nogil:
    """A new, empty hold; at max_holds the oldest hold is evicted first (its packets counted
    as hold_overflow): a flood of new destinations costs bounded memory."""
    cdef int alen = addr_len(version)
    cdef uint32_t k = hold_hash(version, src, dst)
    cdef Hold *h
    while t.count > 0 and <uint32_t>t.count >= t.max_holds:
        hold_evict(t, counters, t.oldest)
    h = <Hold *>calloc(1, sizeof(Hold))
    if h == NULL:
        return NULL
    h.version = version
    memcpy(h.src, src, alen)
    memcpy(h.dst, dst, alen)
    h.created = now
    h.next = t.buckets[k]
    t.buckets[k] = h
    h.older = t.newest
    if t.newest != NULL:
        t.newest.newer = h
    else:
        t.oldest = h
    t.newest = h
    t.count += 1
    return h


cdef void hold_forget(HoldTable *t, Hold *h) noexcept nogil:
    """Take a hold out of the creation order and the global counts (not out of its bucket)."""
    if h.older != NULL:
        h.older.newer = h.newer
    else:
        t.oldest = h.newer
    if h.newer != NULL:
        h.newer.older = h.older
    else:
        t.newest = h.older
    t.count -= 1
    t.total -= h.nbytes


cdef void hold_remove(HoldTable *t, Hold *h) noexcept nogil:
    """Take a hold out of the table (hold_lock held); the caller frees it."""
    cdef Hold **link = &t.buckets[hold_hash(h.version, h.src, h.dst)]
    while link[0] != h:
        link = &link[0].next
    link[0] = h.next
    hold_forget(t, h)


cdef void hold_evict(HoldTable *t, uint64_t *counters, Hold *h) noexcept nogil:
    """Drop a whole hold to make room (hold_lock held)."""
    hold_remove(t, h)
    count(counters, C_HOLDS_EVICTED)
    count_n(counters, C_HOLD_OVERFLOW, h.npkts)
    hold_free(h)


cdef void hold_enqueue(HoldTable *t, uint64_t *counters, Hold *h, const uint8_t *pkt,
                       size_t n) noexcept nogil:
    """Queue a copy; beyond the bounds (64 packets / 256 KiB a hold) the oldest packets go:
    first whole older holds while all holds together pass max_hold_total, then this hold's
    oldest packets."""
    cdef HeldPkt *p
    cdef HeldPkt *old
    if n > t.hold_bytes or n > t.max_total:
        count(counters, C_HOLD_OVERFLOW)
        return
    p = <HeldPkt *>malloc(sizeof(HeldPkt) + n)
    if p == NULL:
        count(counters, C_HOLD_OVERFLOW)
        return
    p.next = NULL
    p.length = <uint32_t>n
    p.data = (<uint8_t *>p) + sizeof(HeldPkt)
    memcpy(p.data, pkt, n)
    while t.total + n > t.max_total and t.oldest != h:
        hold_evict(t, counters, t.oldest)
    while h.head != NULL and (h.npkts + 1 > t.hold_packets or h.nbytes + n > t.hold_bytes
                              or t.total + n > t.max_total):
        old = h.head
        h.head = old.next
        h.npkts -= 1
        h.nbytes -= old.length
        t.total -= old.length
        free(old)
        count(counters, C_HOLD_OVERFLOW)
    if h.head == NULL:
        h.tail = NULL
    if h.tail != NULL:
        h.tail.next = p
    else:
        h.head = p
    h.tail = p
    h.npkts += 1
    h.nbytes += <uint32_t>n
    t.total += n
    count(counters, C_HELD)


cdef void hold_free(Hold *h) noexcept nogil:
    cdef HeldPkt *p = h.head
    cdef HeldPkt *q
    while p != NULL:
        q = p.next
        free(p)
        p = q
    free(h)


cdef bint hold_mark(HoldTable *t, int version, const uint8_t *src,
                    const uint8_t *dst) noexcept nogil:
    """Have the pair's hold reclassified at the next recheck (lock held); False when the
    marks are full: then recheck every hold. Marked even with no hold yet: the outbound loop
    may have classified a packet of the pair under the old table and be about to hold it."""
    cdef int alen = addr_len(version)
    cdef HoldPair *m
    if t.nmarked == HOLD_MARKS:
        return False
    m = &t.marked[t.nmarked]
    m.version = version
    memcpy(m.src, src, alen)
    memcpy(m.dst, dst, alen)
    oe_store_int(&t.nmarked, t.nmarked + 1)  # the loops read it unlocked: is there work
    return True
