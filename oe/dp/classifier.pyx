# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled eroute classifier: the reference model's answers at the datapath's speed.

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

Updates are incremental (issue 10, 6): entries live in a slab with stable ids, each group keeps
a hash table of runs (linked lists, most narrowed first), and groups are kept in lookup order,
so adding or removing an eroute touches one group, whatever the size of the table.

Concurrency: readers hold the read lock for one lookup; an update (a batch of removals and
additions) runs entirely under the write lock, so a reader sees the table before or after it,
never a mixture. Under the read lock only counters (relaxed atomics) and the flow cache change:
a seqlock per slot (a torn slot is detected and ignored, never used) and a generation number
that every update bumps, so no answer cached before an update is used after it.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove, memset

import ipaddress

from oe.dp.packet cimport addr_len, oe_pair_hash, shift_back
from oe.dp.sync cimport (oe_add64, oe_cas32, oe_fence_acq, oe_fence_rel, oe_load64,
                         oe_load_acq32, oe_rd_lock, oe_rw_unlock, oe_rwlock_destroy,
                         oe_rwlock_init, oe_store_rel32, oe_wr_lock)

from oe.eroute import ErouteTable, SaAction, Shunt

_ACTION_CODES = {
    Shunt.TRAP: ACT_TRAP, Shunt.HOLD: ACT_HOLD, Shunt.PASS: ACT_PASS,
    Shunt.DROP: ACT_DROP, Shunt.REJECT: ACT_REJECT,
}


cdef inline int _narrowing(const CEntry *e) noexcept nogil:
    # oe/eroute.py Selector.priority, low byte: dport (4) > sport (2) > proto (1).
    return (4 if e.dport else 0) | (2 if e.sport else 0) | (1 if e.proto else 0)


cdef inline bint _entry_matches(const CEntry *e, int proto, int sport, int dport) noexcept nogil:
    return ((e.proto == 0 or e.proto == proto)
            and (e.sport == 0 or e.sport == sport)
            and (e.dport == 0 or e.dport == dport))


cdef int32_t _search(const CTable *t, int version, const uint8_t *src, const uint8_t *dst,
                     int proto, int sport, int dport) noexcept nogil:
    """Entry id of the most specific matching entry, or -1."""
    cdef int alen = addr_len(version)
    cdef uint8_t msrc[16]
    cdef uint8_t mdst[16]
    cdef int g, i
    cdef int32_t id
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
        slot = oe_pair_hash(msrc, mdst, alen) & (grp.nslots - 1)
        while True:
            id = grp.slots[slot]
            if id < 0:
                break
            e = &t.entries[id]
            if memcmp(e.src, msrc, alen) == 0 and memcmp(e.dst, mdst, alen) == 0:
                # The run: entries with this prefix pair, most narrowed first.
                while id >= 0:
                    e = &t.entries[id]
                    if _entry_matches(e, proto, sport, dport):
                        return id
                    id = e.next
                break
            slot = (slot + 1) & (grp.nslots - 1)
    return -1


cdef inline uint32_t _flow_hash(int version, const uint8_t *src, const uint8_t *dst, int proto,
                                int sport, int dport) noexcept nogil:
    cdef uint32_t h = oe_pair_hash(src, dst, addr_len(version))
    h = (h ^ <uint32_t>proto) * 16777619u
    h = (h ^ <uint32_t>sport) * 16777619u
    h = (h ^ <uint32_t>dport) * 16777619u
    return h ^ (h >> 15)


cdef int32_t _lookup(CTable *t, int version, const uint8_t *src, const uint8_t *dst,
                     int proto, int sport, int dport) noexcept nogil:
    """_search behind the exact-flow cache; the caller holds the read lock, so t.gen is
    stable here, and readers race only with each other, on a slot (the seqlock)."""
    cdef int alen = addr_len(version)
    cdef FlowSlot *s = &t.cache[_flow_hash(version, src, dst, proto, sport, dport)
                                & (FLOW_CACHE_SLOTS - 1)]
    cdef uint32_t seq = oe_load_acq32(&s.seq)
    cdef FlowSlot copy
    cdef int32_t id
    if seq != 0 and (seq & 1) == 0:
        memcpy(&copy, s, sizeof(FlowSlot))
        oe_fence_acq()
        if (oe_load_acq32(&s.seq) == seq and copy.gen == t.gen and copy.version == version
                and copy.proto == proto and copy.sport == sport and copy.dport == dport
                and memcmp(copy.src, src, alen) == 0 and memcmp(copy.dst, dst, alen) == 0):
            return copy.entry
    id = _search(t, version, src, dst, proto, sport, dport)
    # Fill the slot only if no other thread is writing it; losing the race just skips caching.
    seq = oe_load_acq32(&s.seq)
    if (seq & 1) == 0 and oe_cas32(&s.seq, seq, seq + 1):
        s.gen = t.gen
        s.version = version
        s.proto = proto
        s.sport = sport
        s.dport = dport
        memset(s.src, 0, 16)
        memset(s.dst, 0, 16)
        memcpy(s.src, src, alen)
        memcpy(s.dst, dst, alen)
        s.entry = id
        oe_fence_rel()
        oe_store_rel32(&s.seq, seq + 2)
    return id


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


# Updates run under the write lock, so no reader sees a table half-changed; each costs a few
# probes in one group plus the scan of the group list (bounded by the distinct prefix-length
# pairs, not by the number of entries); hash tables and the entry array grow by doubling.

cdef int _group_index(const CTable *t, int version, int src_len, int dst_len,
                      bint *found) noexcept nogil:
    """Where the group is, or where it would go in lookup order."""
    cdef int g = 0
    cdef const CGroup *grp
    found[0] = False
    while g < t.ngroups:
        grp = &t.groups[g]
        if grp.version == version and grp.src_len == src_len and grp.dst_len == dst_len:
            found[0] = True
            return g
        if (grp.version > version or (grp.version == version and (
                grp.src_len < src_len or (grp.src_len == src_len and grp.dst_len < dst_len)))):
            return g
        g += 1
    return g


cdef int _group_add(CTable *t, int g, const CEntry *e) noexcept nogil:
    """A new, empty group at position g; -1: no memory."""
    cdef CGroup *groups
    cdef int32_t *slots = <int32_t *>malloc(4 * sizeof(int32_t))
    if slots == NULL:
        return -1
    if t.ngroups == t.gcap:
        groups = <CGroup *>realloc(t.groups, (t.gcap * 2 if t.gcap else 8) * sizeof(CGroup))
        if groups == NULL:
            free(slots)
            return -1
        t.groups = groups
        t.gcap = t.gcap * 2 if t.gcap else 8
    memmove(&t.groups[g + 1], &t.groups[g], (t.ngroups - g) * sizeof(CGroup))
    memset(&t.groups[g], 0, sizeof(CGroup))
    t.groups[g].version = e.version
    t.groups[g].src_len = e.src_len
    t.groups[g].dst_len = e.dst_len
    _make_mask(t.groups[g].src_mask, e.src_len)
    _make_mask(t.groups[g].dst_mask, e.dst_len)
    t.groups[g].nslots = 4
    t.groups[g].slots = slots
    memset(slots, 0xff, 4 * sizeof(int32_t))
    t.ngroups += 1
    if e.version == 4:
        t.ngroups4 += 1
    return 0


cdef void _group_drop(CTable *t, int g) noexcept nogil:
    if t.groups[g].version == 4:
        t.ngroups4 -= 1
    free(t.groups[g].slots)
    memmove(&t.groups[g], &t.groups[g + 1], (t.ngroups - g - 1) * sizeof(CGroup))
    t.ngroups -= 1


cdef uint32_t _run_slot(const CTable *t, const CGroup *grp, const CEntry *e) noexcept nogil:
    """The slot of e's run in grp, or the empty slot where it would go."""
    cdef int alen = addr_len(e.version)
    cdef uint32_t slot = oe_pair_hash(e.src, e.dst, alen) & (grp.nslots - 1)
    cdef const CEntry *head
    while grp.slots[slot] >= 0:
        head = &t.entries[grp.slots[slot]]
        if memcmp(head.src, e.src, alen) == 0 and memcmp(head.dst, e.dst, alen) == 0:
            break
        slot = (slot + 1) & (grp.nslots - 1)
    return slot


cdef int _group_grow(CTable *t, CGroup *grp) noexcept nogil:
    cdef uint32_t n = grp.nslots * 2
    cdef int32_t *old = grp.slots
    cdef uint32_t old_n = grp.nslots, i, slot
    cdef int32_t *slots = <int32_t *>malloc(n * sizeof(int32_t))
    if slots == NULL:
        return -1
    memset(slots, 0xff, n * sizeof(int32_t))
    grp.slots = slots
    grp.nslots = n
    for i in range(old_n):
        if old[i] >= 0:
            slot = _run_slot(t, grp, &t.entries[old[i]])
            slots[slot] = old[i]
    free(old)
    return 0


cdef void _slot_remove(const CTable *t, CGroup *grp, uint32_t i) noexcept nogil:
    """Empty slot i (backward-shift deletion keeps probe chains intact)."""
    cdef uint32_t j = i, home
    cdef uint32_t mask = grp.nslots - 1
    cdef const CEntry *e
    grp.slots[i] = -1
    while True:
        j = (j + 1) & mask
        if grp.slots[j] < 0:
            return
        e = &t.entries[grp.slots[j]]
        home = oe_pair_hash(e.src, e.dst, addr_len(e.version)) & mask
        if shift_back(i, j, home):
            grp.slots[i] = grp.slots[j]
            grp.slots[j] = -1
            i = j


cdef int32_t _entry_insert(CTable *t, const CEntry *tmpl) noexcept nogil:
    """Add an entry (its selector is not in the table); its id, or -1: no memory."""
    cdef bint found
    cdef int g = _group_index(t, tmpl.version, tmpl.src_len, tmpl.dst_len, &found)
    cdef CGroup *grp
    cdef CEntry *entries
    cdef int32_t id, prev, cur
    cdef uint32_t slot
    if t.free_head < 0 and t.used == t.cap:
        entries = <CEntry *>realloc(t.entries, (t.cap * 2 if t.cap else 64) * sizeof(CEntry))
        if entries == NULL:
            return -1
        t.entries = entries
        t.cap = t.cap * 2 if t.cap else 64
    if not found and _group_add(t, g, tmpl) < 0:
        return -1
    grp = &t.groups[g]
    if (grp.nruns + 1) * 2 > grp.nslots and _group_grow(t, grp) < 0:
        if grp.nruns == 0:
            _group_drop(t, g)
        return -1
    if t.free_head >= 0:
        id = t.free_head
        t.free_head = t.entries[id].next
    else:
        id = t.used
        t.used += 1
    t.entries[id] = tmpl[0]
    t.entries[id].packets = 0
    t.entries[id].nbytes = 0
    slot = _run_slot(t, grp, tmpl)
    cur = grp.slots[slot]
    if cur < 0:
        t.entries[id].next = -1
        grp.slots[slot] = id
        grp.nruns += 1
        return id
    # Into the run, after every entry at least as narrowed (distinct selectors never tie).
    prev = -1
    while cur >= 0 and _narrowing(&t.entries[cur]) >= _narrowing(tmpl):
        prev = cur
        cur = t.entries[cur].next
    t.entries[id].next = cur
    if prev < 0:
        grp.slots[slot] = id
    else:
        t.entries[prev].next = id
    return id


cdef void _entry_remove(CTable *t, int32_t id) noexcept nogil:
    cdef CEntry *e = &t.entries[id]
    cdef bint found
    cdef int g = _group_index(t, e.version, e.src_len, e.dst_len, &found)
    cdef CGroup *grp = &t.groups[g]
    cdef uint32_t slot = _run_slot(t, grp, e)
    cdef int32_t cur = grp.slots[slot]
    if cur == id:
        if e.next >= 0:
            grp.slots[slot] = e.next
        else:
            _slot_remove(t, grp, slot)
            grp.nruns -= 1
            if grp.nruns == 0:
                _group_drop(t, g)
    else:
        while t.entries[cur].next != id:
            cur = t.entries[cur].next
        t.entries[cur].next = e.next
    e.next = t.free_head
    t.free_head = id


cdef int _apply(CTable *t, ClsOp *ops, int n) noexcept nogil:
    """Apply ops in order (write lock held); how many were applied (< n: out of memory)."""
    cdef int k
    for k in range(n):
        if ops[k].kind == OP_REMOVE:
            _entry_remove(t, ops[k].entry)
        elif ops[k].kind == OP_SET:
            t.entries[ops[k].entry].action = ops[k].e.action
            t.entries[ops[k].entry].sa = ops[k].e.sa
        else:
            ops[k].entry = _entry_insert(t, &ops[k].e)
            if ops[k].entry < 0:
                return k
    t.gen += 1
    if t.gen == 0:                  # wrapped: no slot may carry an old generation that matches
        memset(t.cache, 0, FLOW_CACHE_SLOTS * sizeof(FlowSlot))
    return n


cdef void _free_table(CTable *t) noexcept nogil:
    cdef int g
    if t == NULL:
        return
    for g in range(t.ngroups):
        free(t.groups[g].slots)
    free(t.groups)
    free(t.entries)
    free(t.cache)
    free(t)


cdef void _put_address(uint8_t *out, bytes packed):
    memset(out, 0, 16)
    memcpy(out, <const char *>packed, len(packed))


cdef void _fill_entry(CEntry *e, eroute) except *:
    """The compiled form of an oe.eroute.Eroute."""
    sel = eroute.selector
    memset(e, 0, sizeof(CEntry))
    _put_address(e.src, sel.src.network_address.packed)
    _put_address(e.dst, sel.dst.network_address.packed)
    e.version = sel.version
    e.src_len = sel.src.prefixlen
    e.dst_len = sel.dst.prefixlen
    e.proto = sel.proto
    e.sport = sel.sport
    e.dport = sel.dport
    e.next = -1
    if isinstance(eroute.action, SaAction):
        e.action = ACT_SA
        e.sa = eroute.action.handle
    else:
        e.action = _ACTION_CODES[eroute.action]


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
    """The compiled eroute classifier used per packet; agrees with oe.eroute.ErouteTable.

    Updated in place (update(), replace()): the cost of a change does not grow with the
    number of eroutes. Entry ids are stable while an eroute stays; `table`, lookup() and
    counters() speak in positions of the ErouteTable view, built when first asked for.
    """

    def __cinit__(self):
        oe_rwlock_init(&self._lock)
        self._table = <CTable *>calloc(1, sizeof(CTable))
        if self._table == NULL:
            raise MemoryError()
        self._table.free_head = -1
        self._table.cache = <FlowSlot *>calloc(FLOW_CACHE_SLOTS, sizeof(FlowSlot))
        if self._table.cache == NULL:
            raise MemoryError()
        self._eroutes = {}
        self._view = None

    def __dealloc__(self):
        _free_table(self._table)
        free(self._position)
        oe_rwlock_destroy(&self._lock)

    def __init__(self, table=None):
        if table is not None:
            self.replace(table)

    @property
    def table(self):
        """The ErouteTable currently in force."""
        if self._view is None:
            self._view = ErouteTable(e for e, _ in self._eroutes.values())
        return self._view

    def replace(self, table) -> None:
        """Swap in `table` atomically; eroutes kept (same selector) keep their counters."""
        new = {e.selector: e for e in table.entries}
        self.update([e for s, e in new.items() if self._eroutes.get(s, (None,))[0] != e],
                    [s for s in self._eroutes if s not in new])
        self._view = table          # its order, for lookup() positions
        free(self._position)
        self._position = NULL

    def update(self, add=(), remove=()) -> None:
        """Atomically remove the eroutes of the selectors `remove` (absent ones are ignored),
        then add the Eroutes `add` (replacing any with the same selector; counters stay).

        Readers (the loop threads, without the GIL) see the table before or after, never
        between; the flow cache is invalidated at once (a generation number per slot).
        """
        cdef list ops = []
        cdef int n, k, done
        cdef ClsOp *cops
        added = {}
        for eroute in add:
            added[eroute.selector] = eroute
        for sel in set(remove):
            if sel in self._eroutes and sel not in added:
                ops.append((OP_REMOVE, sel, None))
        for sel, eroute in added.items():
            ops.append((OP_SET if sel in self._eroutes else OP_INSERT, sel, eroute))
        n = len(ops)
        if n == 0:
            return
        cops = <ClsOp *>calloc(n, sizeof(ClsOp))
        if cops == NULL:
            raise MemoryError()
        try:
            for k, (kind, sel, eroute) in enumerate(ops):
                cops[k].kind = kind
                if kind != OP_INSERT:
                    cops[k].entry = self._eroutes[sel][1]
                if kind != OP_REMOVE:
                    _fill_entry(&cops[k].e, eroute)
            with nogil:
                oe_wr_lock(&self._lock)
                done = _apply(self._table, cops, n)
                oe_rw_unlock(&self._lock)
            for k in range(done):
                kind, sel, eroute = ops[k]
                if kind == OP_REMOVE:
                    del self._eroutes[sel]
                else:
                    self._eroutes[sel] = (eroute, cops[k].entry)
        finally:
            free(cops)
            self._view = None
        if done < n:
            raise MemoryError("the classifier could not grow; the update was cut short")

    cdef int _positions(self) except -1:
        """Map entry ids to positions in `table` (for lookup(), lookup_many(), counters())."""
        cdef int32_t *position
        cdef int32_t n = self._table.used
        if self._position != NULL and self._position_gen == self._table.gen:
            return 0
        table = self.table
        position = <int32_t *>malloc((n if n else 1) * sizeof(int32_t))
        if position == NULL:
            raise MemoryError()
        memset(position, 0xff, (n if n else 1) * sizeof(int32_t))
        for i, eroute in enumerate(table.entries):
            position[self._eroutes[eroute.selector][1]] = i
        free(self._position)
        self._position = position
        self._position_gen = self._table.gen
        return 0

    cdef Verdict classify(self, int version, const uint8_t *src, const uint8_t *dst, int proto,
                          int sport, int dport, size_t nbytes) noexcept nogil:
        """Classify one packet and count it (unless `nbytes` is 0: a lookup, not a packet);
        callable from native threads without the GIL."""
        cdef Verdict v
        cdef int32_t id
        cdef CEntry *e
        oe_rd_lock(&self._lock)
        id = _lookup(self._table, version, src, dst, proto, sport, dport)
        v.entry = id
        if id < 0:
            v.action = ACT_NONE
            v.sa = 0
        else:
            e = &self._table.entries[id]
            if nbytes:  # a held packet's recheck (nbytes 0) is no packet: counts agree with SAs
                oe_add64(&e.packets, 1)
                oe_add64(&e.nbytes, nbytes)
            v.action = e.action
            v.sa = e.sa
        oe_rw_unlock(&self._lock)
        return v

    def lookup(self, src, dst, int proto=0, int sport=0, int dport=0, nbytes=None):
        """Index of the matching eroute in `table`, or None; counts the packet if nbytes is
        given."""
        cdef bytes s = _packed(src)
        cdef bytes d = _packed(dst)
        cdef int32_t id
        cdef int version = 4 if len(s) == 4 else 6
        if len(s) != len(d):
            raise ValueError("source and destination are not of one address family")
        self._positions()
        if nbytes is not None:
            id = self.classify(version, <const uint8_t *><const char *>s,
                               <const uint8_t *><const char *>d, proto, sport, dport,
                               nbytes).entry
        else:
            oe_rd_lock(&self._lock)
            id = _lookup(self._table, version, <const uint8_t *><const char *>s,
                         <const uint8_t *><const char *>d, proto, sport, dport)
            oe_rw_unlock(&self._lock)
        return None if id < 0 else self._position[id]

    def lookup_many(self, const uint8_t[::1] records not None, int32_t[::1] out not None) -> None:
        """Classify packed FLOW_RECORD_SIZE-byte records in C; write each index (-1: none)."""
        cdef Py_ssize_t n = records.shape[0] // RECORD_SIZE
        cdef Py_ssize_t k
        cdef const uint8_t *r
        cdef int32_t id
        if out.shape[0] < n:
            raise ValueError("out is shorter than the number of records")
        self._positions()
        # With the GIL held throughout: no update() can start, and _position stays valid.
        oe_rd_lock(&self._lock)
        for k in range(n):
            r = &records[k * RECORD_SIZE]
            id = _lookup(self._table, r[0], r + 8, r + 24, r[1],
                         (r[2] << 8) | r[3], (r[4] << 8) | r[5])
            out[k] = -1 if id < 0 else self._position[id]
        oe_rw_unlock(&self._lock)

    def counters(self) -> list:
        """(packets, bytes) for each eroute of `table`, in its order."""
        cdef CEntry *e
        ids = [self._eroutes[eroute.selector][1] for eroute in self.table.entries]
        result = []
        oe_rd_lock(&self._lock)
        for i in ids:
            e = &self._table.entries[<int32_t>i]
            result.append((oe_load64(&e.packets), oe_load64(&e.nbytes)))
        oe_rw_unlock(&self._lock)
        return result


