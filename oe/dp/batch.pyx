# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Output batches (batch.pxd): flush to the sockets and the TUN, or to a Python list."""

import ipaddress

from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.errno cimport EMSGSIZE
from libc.string cimport memcmp, memcpy, memset

from oe.dp.codes cimport (C_PMTU_TOO_BIG, C_PMTU_TOO_BIG_IGNORED, C_SEND_ERRORS, C_TUN_WRITE,
                          count, count_n)
from oe.dp.events cimport EV_PATH_MTU, DpEvent, ev_push
from oe.dp.posix cimport sys_write
from oe.dp.sa cimport EspSa, sa_find
from oe.dp.sock cimport dp_recverr, dp_sendmany, dp_sendrun
from oe.dp.sync cimport oe_add64, oe_rd_lock, oe_rw_unlock
from oe.dp.vnet cimport dp_tun_write

OUT_KINDS = ("udp", "esp", "pass", "tun")


cdef OutBatch *batch_new(bint scratch) noexcept nogil:
    """A batch with its arena (and a superframe scratch buffer for the loops); NULL: no memory."""
    cdef OutBatch *b = <OutBatch *>calloc(1, sizeof(OutBatch))
    if b == NULL:
        return NULL
    b.arena = <uint8_t *>malloc(<size_t>BATCH * SLOT)
    if scratch:
        b.scratch = <uint8_t *>malloc(SLOT)
    if b.arena == NULL or (scratch and b.scratch == NULL):
        batch_free(b)
        return NULL
    return b


cdef void batch_free(OutBatch *b) noexcept nogil:
    if b != NULL:
        free(b.arena)
        free(b.scratch)
        free(b)


cdef OutBatch *api_batch(list result) except NULL:
    """A batch whose flushes append (kind, address, port, bytes) to `result`."""
    cdef OutBatch *b = batch_new(False)
    if b == NULL:
        raise MemoryError()
    b.pylist = <PyObject *>result
    return b


cdef void batch_flush(DpCore *c, OutBatch *b) noexcept nogil:
    cdef uint8_t *bufs[64]
    cdef uint32_t lens[64]
    cdef uint8_t addrs[64][16]
    cdef uint8_t srcs[64][16]
    cdef uint16_t ports[64]
    cdef int errs[64]
    cdef int i, j, k, m, fd, kind, fam
    cdef uint64_t writes
    if b.n == 0:
        return
    if b.pylist != NULL:
        with gil:
            _flush_to_list(b)
        b.n = 0
        return
    i = 0
    while i < b.n:
        kind = b.items[i].kind
        fam = b.items[i].family
        if kind == OUT_TUN and c.vnet:
            # A run of packets for the TUN: TCP segments of one flow coalesce (GRO).
            m = 0
            while i + m < b.n and b.items[i + m].kind == OUT_TUN:
                bufs[m] = b.items[i + m].data
                lens[m] = b.items[i + m].length
                m += 1
            writes = 0
            k = dp_tun_write(c.tun_fd, bufs, lens, m, b.scratch, SLOT, &writes)
            count_n(c.counters, C_TUN_WRITE, writes)
            if k:
                count_n(c.counters, C_SEND_ERRORS, k)
            i += m
            continue
        if kind == OUT_TUN:
            if sys_write(c.tun_fd, b.items[i].data, b.items[i].length) < 0:
                count(c.counters, C_SEND_ERRORS)
            else:
                count(c.counters, C_TUN_WRITE)
            i += 1
            continue
        # A run of consecutive items for one socket goes out in one sendmmsg().
        m = 0
        while i + m < b.n and b.items[i + m].kind == kind and b.items[i + m].family == fam:
            k = i + m
            bufs[m] = b.items[k].data
            lens[m] = b.items[k].length
            memcpy(addrs[m], b.items[k].addr, 16)
            memcpy(srcs[m], b.items[k].src, 16)
            ports[m] = b.items[k].port
            m += 1
        fd = c.fds[(kind * 2) + (0 if fam == 4 else 1)]
        if fd < 0:
            k = 0
        elif kind == OUT_UDP:
            k = dp_sendrun(fd, fam, bufs, lens, addrs, srcs, ports, m, &c.udp_gso, errs)
        else:
            k = dp_sendmany(fd, fam, bufs, lens, addrs, srcs, ports, m, errs)
        if k < m:
            count_n(c.counters, C_SEND_ERRORS, m - k)
            for j in range(m if fd >= 0 else 0):
                if errs[j]:
                    _refused(b, b.items[i + j].handle, errs[j], kind * 2 + (0 if fam == 4 else 1))
        i += m
    b.n = 0


cdef inline void _refused(OutBatch *b, uint32_t handle, int err, int k) noexcept nogil:
    """The kernel refused an item sent on fds[k]: noted for batch_settle, by SA (a run of one
    SA's items in one entry; past BATCH SAs per round only the global count has them)."""
    cdef SendFailure *f
    if err == EMSGSIZE:
        b.drain |= 1u << k
    if handle == 0:
        return
    if b.nfailed and b.failed[b.nfailed - 1].handle == handle:
        f = &b.failed[b.nfailed - 1]
    elif b.nfailed < BATCH:
        f = &b.failed[b.nfailed]
        b.nfailed += 1
        f.handle = handle
        f.errors = f.emsgsize = 0
    else:
        return
    f.errors += 1
    f.emsgsize += err == EMSGSIZE


cdef void batch_settle(DpCore *c, OutBatch *b) noexcept nogil:
    """After the flushes, outside the SA lock (a flush may run under it): what the kernel
    refused goes to each SA's counters, and a socket that refused a datagram as too big has its
    error queue read at once: the kernel's own EMSGSIZE names the route's MTU (issue 17, 3)."""
    cdef EspSa *sa
    cdef int i
    if b.nfailed:
        oe_rd_lock(&c.sas.lock)
        for i in range(b.nfailed):
            sa = sa_find(&c.sas.out, b.failed[i].handle)    # handles are never reused
            if sa != NULL:
                oe_add64(&sa.err_send, b.failed[i].errors)
                oe_add64(&sa.err_emsgsize, b.failed[i].emsgsize)
        oe_rw_unlock(&c.sas.lock)
        b.nfailed = 0
    for i in range(6):
        if b.drain & (1u << i) and c.fds[i] >= 0:
            drain_errors(c, c.fds[i], 4 if i % 2 == 0 else 6)
    b.drain = 0


cdef void drain_errors(DpCore *c, int fd, int family) noexcept nogil:
    """Empty a socket's error queue (IP_RECVERR): each "too big" about a datagram of ours goes
    to path_mtu_error; anything else is counted and dropped."""
    cdef uint8_t dst[16]
    cdef uint32_t spi, mtu
    cdef int local, r
    r = dp_recverr(fd, family, dst, &spi, &mtu, &local)
    while r != 0:
        if r < 0:
            count(c.counters, C_PMTU_TOO_BIG_IGNORED)
        else:
            path_mtu_error(c, family, dst, spi, mtu, local)
        r = dp_recverr(fd, family, dst, &spi, &mtu, &local)


cdef bint path_mtu_error(DpCore *c, int family, const uint8_t *dst, uint32_t spi, uint32_t mtu,
                         bint local) noexcept nogil:
    """A datagram to dst was too big: raised for the path MTU search (PathMtuTooBig) if it was
    ours: an ICMP must quote the SPI of one of our outbound SAs to that peer (RFC 8899 4.6.1's
    validation), the kernel's own refusal (local) quotes nothing and needs an SA to the peer.
    Anything else is counted and changes nothing."""
    cdef DpEvent e
    if not _sa_to(c, family, dst, spi, local):
        count(c.counters, C_PMTU_TOO_BIG_IGNORED)
        return False
    memset(&e, 0, sizeof(DpEvent))
    e.kind = EV_PATH_MTU
    e.version = family
    memcpy(e.src, dst, 16)
    e.count = mtu
    e.reason = local
    count(c.counters, C_PMTU_TOO_BIG)
    ev_push(&c.events, c.counters, &e)
    return True


cdef bint _sa_to(DpCore *c, int family, const uint8_t *dst, uint32_t spi,
                 bint any_spi) noexcept nogil:
    """Is there an outbound SA to this peer with this SPI (or any)?"""
    cdef uint32_t i
    cdef EspSa *sa
    cdef bint found = False
    oe_rd_lock(&c.sas.lock)
    for i in range(c.sas.out.cap):
        sa = c.sas.out.slots[i]
        if (sa != NULL and (any_spi or sa.spi == spi) and sa.family == family
                and memcmp(sa.peer, dst, 4 if family == 4 else 16) == 0):
            found = True
            break
    oe_rw_unlock(&c.sas.lock)
    return found


cdef void send_clear(DpCore *c, int family, const uint8_t *addr, uint8_t *data,
                     uint32_t length) noexcept nogil:
    """One packet with its IP header on the clear raw socket of its family, outside any batch
    (a path MTU probe from the API thread); a failure is counted, and if the packet was too
    big for the local route, the route's MTU is read from the error queue."""
    cdef uint8_t addrs[1][16]
    cdef uint16_t port = 0
    cdef int err = 0
    cdef int fd = c.fds[OUT_PASS * 2 + (0 if family == 4 else 1)]
    memcpy(addrs[0], addr, 16)
    if fd >= 0 and dp_sendmany(fd, family, &data, &length, addrs, NULL, &port, 1, &err) < 1:
        count(c.counters, C_SEND_ERRORS)
        if err == EMSGSIZE:
            drain_errors(c, fd, family)


cdef void _flush_to_list(OutBatch *b) noexcept:
    cdef int i
    cdef OutItem *it
    lst = <list>b.pylist
    for i in range(b.n):
        it = &b.items[i]
        addr = None
        if it.kind != OUT_TUN:
            addr = ipaddress.ip_address((<char *>it.addr)[:4 if it.family == 4 else 16])
        lst.append((OUT_KINDS[it.kind], addr, it.port, (<char *>it.data)[:it.length]))


