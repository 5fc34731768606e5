# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Output batches (batch.pxd): flush to the sockets and the TUN, or to a Python list."""

import ipaddress

from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

from oe.dp.codes cimport C_SEND_ERRORS, C_TUN_WRITE, count, count_n
from oe.dp.posix cimport sys_write
from oe.dp.sock cimport dp_sendmany, dp_sendrun
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
    cdef uint16_t ports[64]
    cdef int i, k, m, fd, kind, fam
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
            ports[m] = b.items[k].port
            m += 1
        fd = c.fds[(kind * 2) + (0 if fam == 4 else 1)]
        if fd < 0:
            k = 0
        elif kind == OUT_UDP:
            k = dp_sendrun(fd, fam, bufs, lens, addrs, ports, m, &c.udp_gso)
        else:
            k = dp_sendmany(fd, fam, bufs, lens, addrs, ports, m)
        if k < m:
            count_n(c.counters, C_SEND_ERRORS, m - k)
        i += m
    b.n = 0


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


