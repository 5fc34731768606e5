# cython: language_level=3
# The SA table and its accounting: each ESP SA (keys, addresses, selectors, lifetimes,
# counters), the two tables the loops look SAs up in (outbound by a local handle, inbound by
# SPI), lifetimes and failure events.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from oe.dp.events cimport EventQueue
from oe.dp.openssl cimport EVP_CIPHER_CTX
from oe.dp.packet cimport PktInfo
from oe.dp.replay cimport ReplayWin
from oe.dp.sync cimport oe_rwlock_t

cdef enum:
    DIR_IN = 0
    DIR_OUT = 1
    ENCAP_UDP = 0               # ESP-in-UDP, RFC 3948
    ENCAP_RAW = 1               # IP protocol 50
    CTX_API = 0                 # the cipher context of Python callers (under the GIL)
    CTX_LOOP = 1                # ... of the loop thread that owns the SA's direction
    NCTX = 2
    SEQ_SOFT_32 = 0xFF000000    # ask for a rekey well before a 32-bit sequence number wraps
    FIRED_SOFT = 1
    FIRED_HARD = 2
    PENDING_REPLAY = 1          # coalesce failure events: one queued at a time per SA
    PENDING_AUTH = 2
    PENDING_SOFT = 4            # a lifetime event read_events() has yet to collect
    PENDING_HARD = 8


cdef struct EspSa:
    uint32_t handle             # the table key: the SPI inbound, a local number outbound
    uint32_t spi
    uint8_t direction
    uint8_t tunnel
    uint8_t esn
    uint8_t encap
    uint8_t family              # outer: 4 or 6
    uint8_t local[16]
    uint8_t peer[16]
    uint16_t local_port
    uint16_t peer_port
    uint8_t salt[4]
    EVP_CIPHER_CTX *ctx[2]      # [CTX_API], [CTX_LOOP]
    uint64_t seq                # outbound: last sequence number used
    ReplayWin replay            # inbound
    # Traffic selectors the inner packet must match (inbound: RFC 4322 12.1 ingress filter).
    uint8_t ts_version
    uint8_t ts_src_lo[16]       # address ranges, first and last (RFC 7296 3.13.1)
    uint8_t ts_src_hi[16]
    uint8_t ts_dst_lo[16]
    uint8_t ts_dst_hi[16]
    uint8_t ts_proto
    uint16_t ts_sport_lo
    uint16_t ts_sport_hi
    uint16_t ts_dport_lo
    uint16_t ts_dport_hi
    # Lifetimes (0: none). Times are absolute CLOCK_MONOTONIC deadlines.
    uint64_t soft_bytes
    uint64_t hard_bytes
    uint64_t soft_packets
    uint64_t hard_packets
    double soft_time
    double hard_time
    uint32_t path_mtu           # outer: the path MTU to the peer (Datapath.set_path_mtu)
    uint32_t mtu                # largest inner packet that fits it: too-big, MSS clamp
    uint64_t packets
    uint64_t nbytes
    uint64_t err_replay
    uint64_t err_auth
    uint64_t err_policy
    uint64_t err_malformed
    uint64_t err_expired
    # Black hole evidence (RFC 8899 4.3), outbound loop only: per flow slot, the end of the
    # data sent so far in large TCP segments; a large segment at or below it is sent again
    uint32_t bh_flow[4]
    uint32_t bh_end[4]
    double bh_raised            # when PathMtuBlackHole was last raised (once a second)
    uint64_t err_send           # outbound datagrams the kernel refused (batch_settle)
    uint64_t err_emsgsize       # ... of them as too big for the local route
    uint32_t fired              # FIRED_* (atomic)
    uint32_t pending            # PENDING_* (atomic)
    uint8_t soft_reason         # R_* of the soft / hard event, written before its PENDING_ bit
    uint8_t hard_reason


cdef struct SaTable:
    EspSa **slots               # open addressing on the handle, NULL = empty
    uint32_t cap                # a power of two
    uint32_t count


cdef struct SaDb:
    oe_rwlock_t lock            # loops read, Python API calls write (writers first)
    SaTable out                 # by local handle
    SaTable inb                 # by SPI


cdef inline uint32_t sa_home(const SaTable *t, uint32_t handle) noexcept nogil:
    return (handle * 2654435761u) & (t.cap - 1)


cdef inline EspSa *sa_find(const SaTable *t, uint32_t handle) noexcept nogil:
    cdef uint32_t i
    cdef EspSa *sa
    if t.cap == 0:
        return NULL
    i = sa_home(t, handle)
    while True:
        sa = t.slots[i]
        if sa == NULL or sa.handle == handle:
            return sa
        i = (i + 1) & (t.cap - 1)


cdef void sa_db_init(SaDb *db) noexcept nogil
cdef void sa_db_free(SaDb *db) noexcept nogil
cdef int sa_table_put(SaTable *t, EspSa *sa) noexcept nogil
cdef EspSa *sa_table_remove(SaTable *t, uint32_t handle) noexcept nogil
cdef void sa_free(EspSa *sa) noexcept nogil
cdef bint ts_allows(const EspSa *sa, const PktInfo *info) noexcept nogil

cdef void sa_fire(EventQueue *q, EspSa *sa, int hard, int reason) noexcept nogil
cdef bint sa_admit(EventQueue *q, EspSa *sa, size_t n, double now) noexcept nogil
cdef void sa_account(EventQueue *q, EspSa *sa, size_t n, uint64_t seq, double now) noexcept nogil
cdef void sa_refused(EventQueue *q, uint64_t *counters, EspSa *sa, int reason) noexcept nogil
cdef void sa_sweep(EventQueue *q, SaDb *db, double now) noexcept nogil
