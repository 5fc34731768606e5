# cython: language_level=3
# The compiled eroute classifier (classifier.pyx): what the outbound pipeline asks per packet.

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from oe.dp.sync cimport oe_rwlock_t

cdef enum:
    ACT_NONE = 0
    ACT_TRAP = 1
    ACT_HOLD = 2
    ACT_PASS = 3
    ACT_DROP = 4
    ACT_REJECT = 5
    ACT_SA = 6

cdef enum:
    FLOW_CACHE_SLOTS = 4096  # a power of two
    OP_REMOVE = 0
    OP_SET = 1               # same selector, new action
    OP_INSERT = 2

cdef struct Verdict:
    int32_t entry       # entry id; -1 = no eroute matched
    int action          # ACT_*
    uint32_t sa         # for ACT_SA: the outbound SA's handle (Datapath.add_sa)

cdef struct CEntry:
    uint8_t src[16]     # prefixes, host bits cleared
    uint8_t dst[16]
    uint8_t version
    uint8_t src_len
    uint8_t dst_len
    uint8_t proto
    uint16_t sport
    uint16_t dport
    uint8_t action
    uint32_t sa
    int32_t next        # next entry of the run (same prefix pair, narrowing desc); free list
    uint64_t packets
    uint64_t nbytes

cdef struct CGroup:
    uint8_t version
    uint8_t src_len
    uint8_t dst_len
    uint8_t src_mask[16]
    uint8_t dst_mask[16]
    uint32_t nslots     # a power of two
    uint32_t nruns
    int32_t *slots      # head entry of a run with one (src, dst); -1 = empty

cdef struct FlowSlot:
    uint32_t seq        # seqlock: odd while being written
    uint32_t gen        # CTable.gen when filled: older answers are ignored
    uint8_t version
    uint8_t proto
    uint16_t sport
    uint16_t dport
    uint8_t src[16]
    uint8_t dst[16]
    int32_t entry       # entry id, -1 = no match

cdef struct CTable:
    int32_t cap         # entries allocated
    int32_t used        # entries[0:used] were handed out at some point
    int32_t free_head   # freed entries, linked by next
    CEntry *entries
    int ngroups
    int ngroups4        # groups[0:ngroups4] are IPv4, the rest IPv6
    int gcap
    CGroup *groups      # in lookup order: most specific first
    uint32_t gen        # bumped by every update: invalidates the flow cache at once
    FlowSlot *cache

cdef struct ClsOp:
    int kind            # OP_*
    int32_t entry       # OP_REMOVE, OP_SET: the entry; OP_INSERT: set to the new entry
    CEntry e            # OP_SET: action and sa; OP_INSERT: everything


cdef class Classifier:
    cdef CTable *_table
    cdef oe_rwlock_t _lock
    cdef dict _eroutes      # selector -> (Eroute, entry id): what is compiled into _table
    cdef object _view       # the ErouteTable of _eroutes, or None until asked for
    cdef int32_t *_position # entry id -> position in _view.entries (-1: none)
    cdef uint32_t _position_gen # CTable.gen _position was built for

    cdef int _positions(self) except -1
    cdef Verdict classify(self, int version, const uint8_t *src, const uint8_t *dst, int proto,
                          int sport, int dport, size_t nbytes) noexcept nogil
