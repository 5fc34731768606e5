# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-packet engine: compiled eroute classifier, ESP, replay window, TUN/UDP loops.

Classifier: theory of operation
-------------------------------
The reference model (oe/eroute.py) scans a list sorted by priority, where priority is
(srcbits << 16) | (dstbits << 8) | narrowing. Here the same order is kept as a tuple-space
search (Srinivasan et al.): entries are grouped by (version, srcbits, dstbits), groups are tried
from the most specific down, and inside a group one hash probe on the masked (src, dst) finds the
run of entries with exactly that prefix pair, ordered by narrowing (dport > sport > proto). The
first entry of the first group that matches is the answer the reference model gives, because
distinct selectors never tie (see oe/eroute.py). An exact-flow cache in front answers repeated
5-tuples with one probe.

Concurrency: a compiled table is immutable except for its counters (relaxed atomics) and its
flow cache (a seqlock per slot: a torn slot is detected and ignored, never used). Replacing the
table builds the new one completely, then swaps the pointer under a write lock; readers hold the
read lock for one lookup, so a reader sees the old table or the new one, never a mixture.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

import ipaddress

from oe.eroute import ErouteTable, SaAction, Shunt

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_rwlock_t:
        pass
    int pthread_rwlock_init(pthread_rwlock_t *lock, void *attr)
    int pthread_rwlock_destroy(pthread_rwlock_t *lock)
    int pthread_rwlock_rdlock(pthread_rwlock_t *lock)
    int pthread_rwlock_wrlock(pthread_rwlock_t *lock)
    int pthread_rwlock_unlock(pthread_rwlock_t *lock)

cdef extern from *:
    """
    static inline void oe_add64(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
    static inline uint64_t oe_load64(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline uint32_t oe_load_acq32(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void oe_store_rel32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int oe_cas32(uint32_t *p, uint32_t expect, uint32_t v) {
        return __atomic_compare_exchange_n(p, &expect, v, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
    }
    static inline void oe_fence_acq(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    static inline void oe_fence_rel(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    """
    void oe_add64(uint64_t *p, uint64_t v) nogil
    uint64_t oe_load64(uint64_t *p) nogil
    uint32_t oe_load_acq32(uint32_t *p) nogil
    void oe_store_rel32(uint32_t *p, uint32_t v) nogil
    bint oe_cas32(uint32_t *p, uint32_t expect, uint32_t v) nogil
    void oe_fence_acq() nogil
    void oe_fence_rel() nogil


# ------------------------------------------------------------------------- the classifier

cdef enum:
    ACT_NONE = 0
    ACT_TRAP = 1
    ACT_HOLD = 2
    ACT_PASS = 3
    ACT_DROP = 4
    ACT_REJECT = 5
    ACT_SA = 6

_ACTION_CODES = {
    Shunt.TRAP: ACT_TRAP, Shunt.HOLD: ACT_HOLD, Shunt.PASS: ACT_PASS,
    Shunt.DROP: ACT_DROP, Shunt.REJECT: ACT_REJECT,
}

cdef enum:
    FLOW_CACHE_SLOTS = 4096  # a power of two

cdef struct Verdict:
    int index           # entry index in the Python ErouteTable; -1 = no eroute matched
    int action          # ACT_*
    uint32_t spi        # for ACT_SA: the outbound SPI

cdef struct CEntry:
    uint8_t src[16]     # prefixes, host bits cleared
    uint8_t dst[16]
    uint8_t src_len
    uint8_t dst_len
    uint8_t proto
    uint16_t sport
    uint16_t dport
    uint8_t action
    uint32_t spi
    int32_t index       # position in the Python table
    uint64_t packets
    uint64_t nbytes

cdef struct CGroup:
    uint8_t version
    uint8_t src_len
    uint8_t dst_len
    uint8_t src_mask[16]
    uint8_t dst_mask[16]
    uint32_t nslots     # a power of two
    int32_t *slots      # first entry (in entries order) of a run with one (src, dst); -1 = empty

cdef struct FlowSlot:
    uint32_t seq        # seqlock: odd while being written
    uint8_t version
    uint8_t proto
    uint16_t sport
    uint16_t dport
    uint8_t src[16]
    uint8_t dst[16]
    int32_t entry       # position in CTable.entries, -1 = no match

cdef struct CTable:
    int nentries
    CEntry *entries     # grouped: by (version, src_len desc, dst_len desc), runs, narrowing desc
    int ngroups
    int ngroups4        # groups[0:ngroups4] are IPv4, the rest IPv6
    CGroup *groups      # in lookup order
    int32_t *by_index   # Python table index -> position in entries
    FlowSlot *cache


cdef inline uint32_t _hash(const uint8_t *src, const uint8_t *dst, int alen) noexcept nogil:
    # FNV-1a over the masked addresses: cheap and good enough for a per-group hash table.
    cdef uint32_t h = 2166136261u
    cdef int i
    for i in range(alen):
        h = (h ^ src[i]) * 16777619u
    for i in range(alen):
        h = (h ^ dst[i]) * 16777619u
    return h


cdef inline bint _entry_matches(const CEntry *e, int proto, int sport, int dport) noexcept nogil:
    return ((e.proto == 0 or e.proto == proto)
            and (e.sport == 0 or e.sport == sport)
            and (e.dport == 0 or e.dport == dport))


cdef int32_t _search(const CTable *t, int version, const uint8_t *src, const uint8_t *dst,
                     int proto, int sport, int dport) noexcept nogil:
    """Position of the most specific matching entry, or -1."""
    cdef int alen = 4 if version == 4 else 16
    cdef uint8_t msrc[16]
    cdef uint8_t mdst[16]
    cdef int g, i
    cdef int32_t pos
    cdef uint32_t slot
    cdef const CGroup *grp
    cdef const CEntry *e
    cdef int first = 0 if version == 4 else t.ngroups4
    cdef int last = t.ngroups4 if version == 4 else t.ngroups
    for g in range(first, last):
        grp = &t.groups[g]
        for i in range(alen):
            msrc[i] = src[i] & grp.src_mask[i]
            mdst[i] = dst[i] & grp.dst_mask[i]
        slot = _hash(msrc, mdst, alen) & (grp.nslots - 1)
        while True:
            pos = grp.slots[slot]
            if pos < 0:
                break
            e = &t.entries[pos]
            if memcmp(e.src, msrc, alen) == 0 and memcmp(e.dst, mdst, alen) == 0:
                # The run: consecutive entries with this prefix pair, most narrowed first.
                while True:
                    if _entry_matches(e, proto, sport, dport):
                        return pos
                    pos += 1
                    if pos >= t.nentries:
                        break
                    e = &t.entries[pos]
                    if (e.src_len != grp.src_len or e.dst_len != grp.dst_len
                            or memcmp(e.src, msrc, alen) != 0 or memcmp(e.dst, mdst, alen) != 0):
                        break
                break
            slot = (slot + 1) & (grp.nslots - 1)
    return -1


cdef inline uint32_t _flow_hash(int version, const uint8_t *src, const uint8_t *dst, int proto,
                                int sport, int dport) noexcept nogil:
    cdef int alen = 4 if version == 4 else 16
    cdef uint32_t h = _hash(src, dst, alen)
    h = (h ^ <uint32_t>proto) * 16777619u
    h = (h ^ <uint32_t>sport) * 16777619u
    h = (h ^ <uint32_t>dport) * 16777619u
    return h ^ (h >> 15)


cdef int32_t _lookup(CTable *t, int version, const uint8_t *src, const uint8_t *dst,
                     int proto, int sport, int dport) noexcept nogil:
    cdef int alen = 4 if version == 4 else 16
    cdef FlowSlot *s = &t.cache[_flow_hash(version, src, dst, proto, sport, dport)
                                & (FLOW_CACHE_SLOTS - 1)]
    cdef uint32_t seq = oe_load_acq32(&s.seq)
    cdef FlowSlot copy
    cdef int32_t pos
    if seq != 0 and (seq & 1) == 0:
        memcpy(&copy, s, sizeof(FlowSlot))
        oe_fence_acq()
        if (oe_load_acq32(&s.seq) == seq and copy.version == version and copy.proto == proto
                and copy.sport == sport and copy.dport == dport
                and memcmp(copy.src, src, alen) == 0 and memcmp(copy.dst, dst, alen) == 0):
            return copy.entry
    pos = _search(t, version, src, dst, proto, sport, dport)
    # Fill the slot only if no other thread is writing it; losing the race just skips caching.
    seq = oe_load_acq32(&s.seq)
    if (seq & 1) == 0 and oe_cas32(&s.seq, seq, seq + 1):
        s.version = version
        s.proto = proto
        s.sport = sport
        s.dport = dport
        memset(s.src, 0, 16)
        memset(s.dst, 0, 16)
        memcpy(s.src, src, alen)
        memcpy(s.dst, dst, alen)
        s.entry = pos
        oe_fence_rel()
        oe_store_rel32(&s.seq, seq + 2)
    return pos


cdef void _free_table(CTable *t) noexcept nogil:
    cdef int g
    if t == NULL:
        return
    for g in range(t.ngroups):
        free(t.groups[g].slots)
    free(t.groups)
    free(t.entries)
    free(t.by_index)
    free(t.cache)
    free(t)


cdef void _make_mask(uint8_t *mask, int bits) noexcept nogil:
    cdef int i
    memset(mask, 0, 16)
    for i in range(16):
        if bits >= 8:
            mask[i] = 0xff
            bits -= 8
        elif bits > 0:
            mask[i] = <uint8_t>((0xff << (8 - bits)) & 0xff)
            bits = 0


cdef CTable *_compile(table) except NULL:
    """Build a compiled copy of an ErouteTable; nothing shared with any other table."""
    cdef int n = len(table.entries)
    cdef CTable *t = <CTable *>calloc(1, sizeof(CTable))
    if t == NULL:
        raise MemoryError()
    t.nentries = n
    t.entries = <CEntry *>calloc(n if n else 1, sizeof(CEntry))
    t.by_index = <int32_t *>calloc(n if n else 1, sizeof(int32_t))
    t.cache = <FlowSlot *>calloc(FLOW_CACHE_SLOTS, sizeof(FlowSlot))
    if t.entries == NULL or t.by_index == NULL or t.cache == NULL:
        _free_table(t)
        raise MemoryError()
    # Order: groups most specific first, runs of one prefix pair together, most narrowed first.
    order = sorted(
        range(n),
        key=lambda i: _sort_key(table.entries[i].selector),
    )
    cdef int pos, i, g, runs, start
    cdef CEntry *e
    keys = []
    for pos, i in enumerate(order):
        eroute = table.entries[i]
        sel = eroute.selector
        e = &t.entries[pos]
        _put_address(e.src, sel.src.network_address.packed)
        _put_address(e.dst, sel.dst.network_address.packed)
        e.src_len = sel.src.prefixlen
        e.dst_len = sel.dst.prefixlen
        e.proto = sel.proto
        e.sport = sel.sport
        e.dport = sel.dport
        if isinstance(eroute.action, SaAction):
            e.action = ACT_SA
            e.spi = eroute.action.spi
        else:
            e.action = _ACTION_CODES[eroute.action]
        e.index = i
        t.by_index[i] = pos
        keys.append((sel.version, sel.src.prefixlen, sel.dst.prefixlen))
    # Groups: contiguous ranges of equal (version, src_len, dst_len).
    bounds = [p for p in range(n) if p == 0 or keys[p] != keys[p - 1]] + [n]
    t.ngroups = len(bounds) - 1
    t.ngroups4 = sum(1 for g in range(t.ngroups) if keys[bounds[g]][0] == 4)
    t.groups = <CGroup *>calloc(t.ngroups if t.ngroups else 1, sizeof(CGroup))
    if t.groups == NULL:
        _free_table(t)
        raise MemoryError()
    cdef CGroup *grp
    cdef int alen
    cdef uint32_t slot
    for g in range(t.ngroups):
        grp = &t.groups[g]
        start = bounds[g]
        grp.version, grp.src_len, grp.dst_len = keys[start]
        _make_mask(grp.src_mask, grp.src_len)
        _make_mask(grp.dst_mask, grp.dst_len)
        alen = 4 if grp.version == 4 else 16
        run_starts = [p for p in range(start, bounds[g + 1])
                      if p == start or not _same_prefixes(&t.entries[p], &t.entries[p - 1], alen)]
        runs = len(run_starts)
        grp.nslots = 4
        while grp.nslots < <uint32_t>(2 * runs):
            grp.nslots *= 2
        grp.slots = <int32_t *>malloc(grp.nslots * sizeof(int32_t))
        if grp.slots == NULL:
            _free_table(t)
            raise MemoryError()
        memset(grp.slots, 0xff, grp.nslots * sizeof(int32_t))
        for pos in run_starts:
            slot = _hash(t.entries[pos].src, t.entries[pos].dst, alen) & (grp.nslots - 1)
            while grp.slots[slot] >= 0:
                slot = (slot + 1) & (grp.nslots - 1)
            grp.slots[slot] = pos
    return t


def _sort_key(sel):
    narrowing = sel.priority & 0xFF
    return (sel.version, -sel.src.prefixlen, -sel.dst.prefixlen,
            sel.src.network_address.packed, sel.dst.network_address.packed, -narrowing)


cdef inline bint _same_prefixes(const CEntry *a, const CEntry *b, int alen) noexcept nogil:
    return memcmp(a.src, b.src, alen) == 0 and memcmp(a.dst, b.dst, alen) == 0


cdef void _put_address(uint8_t *out, bytes packed):
    memset(out, 0, 16)
    memcpy(out, <const char *>packed, len(packed))


cdef bytes _packed(address):
    if isinstance(address, (bytes, bytearray)):
        if len(address) not in (4, 16):
            raise ValueError(f"an address is 4 or 16 bytes, not {len(address)}")
        return bytes(address)
    return ipaddress.ip_address(address).packed


# Record layout of lookup_many(): version, proto, sport (big endian), dport (big endian),
# 2 bytes padding, src (16 bytes, IPv4 in the first 4), dst (16 bytes).
cdef enum:
    RECORD_SIZE = 40
FLOW_RECORD_SIZE = RECORD_SIZE


cdef class Classifier:
    """The compiled eroute classifier used per packet; agrees with oe.eroute.ErouteTable."""

    cdef CTable *_table
    cdef pthread_rwlock_t _lock
    cdef object _source     # the ErouteTable compiled into _table

    def __cinit__(self):
        pthread_rwlock_init(&self._lock, NULL)
        self._table = _compile(ErouteTable())
        self._source = ErouteTable()

    def __dealloc__(self):
        _free_table(self._table)
        pthread_rwlock_destroy(&self._lock)

    def __init__(self, table=None):
        if table is not None:
            self.replace(table)

    @property
    def table(self):
        """The ErouteTable currently in force."""
        return self._source

    def replace(self, table) -> None:
        """Swap in `table` atomically; counters of eroutes kept (same selector) carry over."""
        cdef CTable *new = _compile(table)
        cdef CTable *old
        cdef Py_ssize_t k
        # Pairs (new position, old position) of eroutes whose selector stays.
        old_index = {eroute.selector: j for j, eroute in enumerate(self._source.entries)}
        pairs = [(i, old_index[e.selector]) for i, e in enumerate(table.entries)
                 if e.selector in old_index]
        with nogil:
            pthread_rwlock_wrlock(&self._lock)
        old = self._table
        for i, j in pairs:
            new.entries[new.by_index[i]].packets = old.entries[old.by_index[j]].packets
            new.entries[new.by_index[i]].nbytes = old.entries[old.by_index[j]].nbytes
        self._table = new
        self._source = table
        pthread_rwlock_unlock(&self._lock)
        _free_table(old)

    cdef Verdict classify(self, int version, const uint8_t *src, const uint8_t *dst, int proto,
                          int sport, int dport, size_t nbytes) noexcept nogil:
        """Classify one packet and count it; callable from native threads without the GIL."""
        cdef Verdict v
        cdef int32_t pos
        cdef CEntry *e
        pthread_rwlock_rdlock(&self._lock)
        pos = _lookup(self._table, version, src, dst, proto, sport, dport)
        if pos < 0:
            v.index = -1
            v.action = ACT_NONE
            v.spi = 0
        else:
            e = &self._table.entries[pos]
            oe_add64(&e.packets, 1)
            oe_add64(&e.nbytes, nbytes)
            v.index = e.index
            v.action = e.action
            v.spi = e.spi
        pthread_rwlock_unlock(&self._lock)
        return v

    def lookup(self, src, dst, int proto=0, int sport=0, int dport=0, nbytes=None):
        """Index of the matching eroute in `table`, or None. Counts the packet if nbytes is given."""
        cdef bytes s = _packed(src)
        cdef bytes d = _packed(dst)
        cdef int32_t pos
        cdef int version = 4 if len(s) == 4 else 6
        if len(s) != len(d):
            raise ValueError("source and destination are not of one address family")
        if nbytes is not None:
            v = self.classify(version, <const uint8_t *><const char *>s,
                              <const uint8_t *><const char *>d, proto, sport, dport, nbytes)
            return None if v.index < 0 else v.index
        pthread_rwlock_rdlock(&self._lock)
        pos = _lookup(self._table, version, <const uint8_t *><const char *>s,
                      <const uint8_t *><const char *>d, proto, sport, dport)
        result = None if pos < 0 else self._table.entries[pos].index
        pthread_rwlock_unlock(&self._lock)
        return result

    def lookup_many(self, const uint8_t[::1] records not None, int32_t[::1] out not None) -> None:
        """Classify packed FLOW_RECORD_SIZE-byte records in C; write each index (-1: none)."""
        cdef Py_ssize_t n = records.shape[0] // RECORD_SIZE
        cdef Py_ssize_t k
        cdef const uint8_t *r
        cdef int32_t pos
        if out.shape[0] < n:
            raise ValueError("out is shorter than the number of records")
        with nogil:
            pthread_rwlock_rdlock(&self._lock)
            for k in range(n):
                r = &records[k * RECORD_SIZE]
                pos = _lookup(self._table, r[0], r + 8, r + 24, r[1],
                              (r[2] << 8) | r[3], (r[4] << 8) | r[5])
                out[k] = -1 if pos < 0 else self._table.entries[pos].index
            pthread_rwlock_unlock(&self._lock)

    def counters(self) -> list:
        """(packets, bytes) for each eroute of `table`, in its order."""
        cdef int i
        cdef CEntry *e
        result = []
        pthread_rwlock_rdlock(&self._lock)
        for i in range(self._table.nentries):
            e = &self._table.entries[self._table.by_index[i]]
            result.append((oe_load64(&e.packets), oe_load64(&e.nbytes)))
        pthread_rwlock_unlock(&self._lock)
        return result


# The ESP datapath (issue 6): replay window, ESP seal/open, holds, loops and the Python API.
include "replay.pxi"
include "esp.pxi"
include "loops.pxi"
