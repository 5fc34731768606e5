# cython: language_level=3
# Output batches: what a pipeline produced (ESP to a peer, a packet in clear, a packet for the
# TUN), gathered in an arena of BATCH slots and flushed in runs: sendmmsg() per socket, UDP GSO
# per peer, GRO superframes for the TUN (csrc/sock.c, csrc/vnet.c). Without the loops (the
# Python API) a flush appends the items to a Python list instead. What the kernel refused is
# counted per SA after the flush (batch_settle), and the sockets' error queues (IP_RECVERR)
# become path MTU events (issue 17: no silent loss).

from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset

from oe.dp.core cimport DpCore

cdef enum:
    BATCH = 64
    SLOT = 65536 + 128          # one datagram, with headroom for a rebuilt transport header
    HEADROOM = 64
    OUT_UDP = 0
    OUT_RAW = 1
    OUT_PASS = 2
    OUT_TUN = 3


cdef struct OutItem:
    uint8_t kind
    uint8_t family
    uint16_t port
    uint8_t addr[16]
    uint8_t src[16]             # our address to send from (packet info), zero: the kernel's
    uint32_t length
    uint32_t handle             # the outbound SA it was sealed under (0: none)
    uint8_t *data


cdef struct SendFailure:
    uint32_t handle             # an outbound SA whose datagrams the kernel refused
    uint32_t errors
    uint32_t emsgsize           # ... as too big for the local route (EMSGSIZE)


cdef struct OutBatch:
    int n
    OutItem items[64]
    int nfailed                 # failures since the last batch_settle, per SA
    SendFailure failed[64]
    uint32_t drain              # bit k: fds[k] refused a datagram as too big
    uint8_t *arena              # BATCH slots of SLOT bytes
    uint8_t *scratch            # SLOT bytes: a TUN superframe being built (loops only)
    PyObject *pylist            # API mode: flushed items are appended here (GIL held)


cdef void batch_flush(DpCore *c, OutBatch *b) noexcept nogil
cdef void batch_settle(DpCore *c, OutBatch *b) noexcept nogil
cdef void drain_errors(DpCore *c, int fd, int family) noexcept nogil
cdef bint path_mtu_error(DpCore *c, int family, const uint8_t *dst, uint32_t spi, uint32_t mtu,
                         bint local) noexcept nogil
cdef void send_clear(DpCore *c, int family, const uint8_t *addr, uint8_t *data,
                     uint32_t length) noexcept nogil
cdef OutBatch *batch_new(bint scratch) noexcept nogil
cdef void batch_free(OutBatch *b) noexcept nogil
cdef OutBatch *api_batch(list result) except NULL


cdef inline uint8_t *batch_slot(DpCore *c, OutBatch *b) noexcept nogil:
    if b.n == BATCH:
        batch_flush(c, b)
    return b.arena + <size_t>b.n * SLOT


cdef inline void batch_commit(OutBatch *b, int kind, int family, const uint8_t *addr,
                              const uint8_t *src, uint16_t port, uint8_t *data,
                              uint32_t length, uint32_t handle) noexcept nogil:
    cdef OutItem *it = &b.items[b.n]
    it.kind = kind
    it.family = family
    it.port = port
    memset(it.addr, 0, 16)
    memset(it.src, 0, 16)
    if addr != NULL:
        memcpy(it.addr, addr, 4 if family == 4 else 16)
    if src != NULL:
        memcpy(it.src, src, 4 if family == 4 else 16)
    it.data = data
    it.length = length
    it.handle = handle
    b.n += 1
