# cython: language_level=3
# Events for the control plane: a bounded queue (acquires, IKE-on-4500, replay and
# authentication failures), which may drop (counted per kind), and the flag that SAs have
# lifetime events waiting (never lost: they are bits on the SA, see sa.pxd).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from oe.dp.sync cimport oe_mutex_t

cdef enum:
    EV_ACQUIRE = 1
    EV_SOFT = 2
    EV_HARD = 3
    EV_REPLAY = 4
    EV_AUTH = 5
    EV_IKE = 6
    EV_PROBE_ACK = 7            # a path MTU probe's echo reply came back (count: its size)
    EV_PATH_MTU = 8             # a datagram to src was too big (count: the MTU named; reason:
                                # 1 if the kernel said so, 0 an ICMP)
    EV_BLACK_HOLE = 9           # large packets to src seem lost (a TCP segment sent again)
    EV_CAP = 4096               # events buffered for the control plane
    EV_IKE_CAP = EV_CAP // 2    # IKE-on-4500 (spoofable) never fills the queue for acquires


cdef struct DpEvent:
    uint8_t kind
    uint8_t version
    uint8_t proto
    uint8_t reason
    uint8_t direction
    uint16_t sport
    uint16_t dport
    uint32_t spi
    uint32_t handle
    uint8_t src[16]
    uint8_t dst[16]
    uint64_t count
    uint8_t *data               # EV_IKE: malloc'd message, owned by the event
    uint32_t length


cdef struct EventQueue:
    oe_mutex_t lock
    DpEvent *events             # a ring of EV_CAP
    uint32_t head
    uint32_t count
    uint32_t ike                # IKE events among count
    int fd                      # eventfd: readable while events wait
    int lifetime_pending        # some SA has a PENDING_SOFT / PENDING_HARD bit set


cdef int ev_init(EventQueue *q) noexcept nogil
cdef void ev_free(EventQueue *q) noexcept nogil
cdef void ev_signal(EventQueue *q) noexcept nogil
cdef bint ev_push(EventQueue *q, uint64_t *counters, DpEvent *e) noexcept nogil
cdef bint ev_pop(EventQueue *q, DpEvent *e) noexcept nogil
