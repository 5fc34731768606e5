# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The event queue between the loop threads and the control plane (events.pxd)."""

from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free

from oe.dp.codes cimport C_LOST_ACQUIRE, C_LOST_AUTH, C_LOST_IKE, C_LOST_REPLAY, count
from oe.dp.posix cimport EFD_CLOEXEC, EFD_NONBLOCK, eventfd, sys_close, sys_write
from oe.dp.sync cimport oe_mutex_destroy, oe_mutex_init, oe_mutex_lock, oe_mutex_unlock


cdef int ev_init(EventQueue *q) noexcept nogil:
    """-1: no memory or no eventfd."""
    q.events = <DpEvent *>calloc(EV_CAP, sizeof(DpEvent))
    oe_mutex_init(&q.lock)
    q.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    return -1 if q.events == NULL or q.fd < 0 else 0


cdef void ev_free(EventQueue *q) noexcept nogil:
    cdef DpEvent e
    if q.events != NULL:
        while ev_pop(q, &e):
            free(e.data)
    free(q.events)
    if q.fd >= 0:
        sys_close(q.fd)
    oe_mutex_destroy(&q.lock)


cdef void ev_signal(EventQueue *q) noexcept nogil:
    cdef uint64_t one = 1
    sys_write(q.fd, &one, 8)


cdef bint ev_push(EventQueue *q, uint64_t *counters, DpEvent *e) noexcept nogil:
    """Queue a droppable event; False (counted per kind) when the queue is full.

    IKE-on-4500 datagrams are spoofable: they may take half the queue at most, so a flood of
    them never crowds out acquires. Lifetime events never come here (sa_fire).
    """
    cdef bint ike = e.kind == EV_IKE
    oe_mutex_lock(&q.lock)
    if q.count == EV_CAP or (ike and q.ike >= EV_IKE_CAP):
        oe_mutex_unlock(&q.lock)
        count(counters, C_LOST_ACQUIRE if e.kind == EV_ACQUIRE else C_LOST_IKE if ike
              else C_LOST_REPLAY if e.kind == EV_REPLAY else C_LOST_AUTH)
        free(e.data)
        return False
    q.events[(q.head + q.count) % EV_CAP] = e[0]
    q.count += 1
    q.ike += ike
    oe_mutex_unlock(&q.lock)
    ev_signal(q)
    return True


cdef bint ev_pop(EventQueue *q, DpEvent *e) noexcept nogil:
    """The oldest event into e; False if none."""
    oe_mutex_lock(&q.lock)
    if q.count == 0:
        oe_mutex_unlock(&q.lock)
        return False
    e[0] = q.events[q.head]
    q.head = (q.head + 1) % EV_CAP
    q.count -= 1
    q.ike -= e.kind == EV_IKE
    oe_mutex_unlock(&q.lock)
    return True
