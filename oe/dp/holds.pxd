# cython: language_level=3
# Holds: packets of a pair (source, destination) queued while the pair's %trap or %hold is
# negotiated, so a trap raises one acquire, never one per packet (Hannum's PF_KEY critique).
# Each hold is bounded (packets, bytes), and so are all of them together (max_holds,
# max_hold_total): beyond that the oldest hold goes (issue 10, 6).

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from oe.dp.sync cimport oe_mutex_t

cdef enum:
    HOLD_BUCKETS = 256
    HOLD_MARKS = 64             # pairs to recheck before "recheck every hold" is cheaper


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


cdef struct HoldPair:
    uint8_t version
    uint8_t src[16]
    uint8_t dst[16]


cdef struct HoldTable:
    oe_mutex_t lock
    Hold *buckets[256]
    Hold *oldest
    Hold *newest
    int count
    int recheck                 # the eroutes changed: reclassify every hold
    HoldPair marked[64]         # the eroutes of these pairs changed: reclassify their holds
    int nmarked
    uint32_t hold_packets       # per hold
    uint32_t hold_bytes
    uint32_t max_holds          # global caps: beyond them the oldest hold goes
    uint64_t max_total
    uint64_t total              # bytes queued in all holds
    double timeout


cdef void holds_init(HoldTable *t) noexcept nogil
cdef void holds_free(HoldTable *t) noexcept nogil
cdef Hold *hold_find(HoldTable *t, int version, const uint8_t *src,
                     const uint8_t *dst) noexcept nogil
cdef Hold *hold_create(HoldTable *t, uint64_t *counters, int version, const uint8_t *src,
                       const uint8_t *dst, double now) noexcept nogil
cdef void hold_remove(HoldTable *t, Hold *h) noexcept nogil
cdef void hold_forget(HoldTable *t, Hold *h) noexcept nogil
cdef void hold_enqueue(HoldTable *t, uint64_t *counters, Hold *h, const uint8_t *pkt,
                       size_t n) noexcept nogil
cdef void hold_free(Hold *h) noexcept nogil
cdef bint hold_mark(HoldTable *t, int version, const uint8_t *src,
                    const uint8_t *dst) noexcept nogil
