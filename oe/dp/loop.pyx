# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The loop threads (loop.pxd), as named stages in the manner of wireguard-go's Routine*:

    dp_loop               wait for the TUN, the sockets or a wake-up; then, in turn,
      routine_housekeeping  release or expire holds, fire time lifetimes (twice a second)
      routine_read_tun      up to BATCH reads: offloads undone (tun_packet), dp_outbound
      routine_receive       recvmmsg() runs: UDP GRO split, raw IPv4 header cut, dp_inbound
    and the batch is flushed after each run.

Each SA has a cipher context for the loop thread that uses it (CTX_LOOP). The threads release
the GIL for good once started.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

from oe.dp.batch cimport (BATCH, SLOT, OutBatch, batch_flush, batch_free, batch_new,
                         batch_settle, drain_errors)
from oe.dp.classifier cimport Classifier
from oe.dp.codes cimport C_MALFORMED, C_TUN_READ, count
from oe.dp.inbound cimport dp_inbound
from oe.dp.outbound cimport dp_outbound, hold_recheck
from oe.dp.posix cimport sys_read
from oe.dp.sa cimport CTX_LOOP, ENCAP_RAW, ENCAP_UDP, sa_sweep
from oe.dp.sock cimport dp_deepen, dp_recverr_on, dp_recvmany, dp_udp_gro, dp_wait
from oe.dp.sync cimport oe_load_int, oe_now
from oe.dp.vnet cimport (DP_F_NEEDS_CSUM, DP_GSO_ECN, DP_GSO_NONE, DP_GSO_TCPV4, DP_GSO_TCPV6,
                         DP_VNET_LEN, dp_finish_csum, dp_tso_segment)

cdef extern from "<pthread.h>" nogil:
    int pthread_create(pthread_t *t, void *attr, void *(*start)(void *) noexcept nogil,
                       void *arg)
    int pthread_join(pthread_t t, void **ret)

cdef enum:
    TUN = 4                     # which[]: 0-3 are the sockets udp4, udp6, esp4, esp6
    WAKE = 5

cdef double HOUSEKEEPING = 0.5  # seconds between hold and lifetime checks

cdef enum:
    SOCKET_BUFFER = 8 * 1024 * 1024


cdef struct LoopBuffers:
    uint8_t *arena              # BATCH receive slots of SLOT bytes
    uint8_t *bufs[64]
    uint32_t lens[64]
    uint8_t addrs[64][16]
    uint8_t dsts[64][16]        # each datagram's destination (packet info), or zero
    uint16_t ports[64]
    uint16_t segs[64]


cdef void loop_sockets(DpCore *c) noexcept nogil:
    """Deep buffers on every socket, UDP GRO on the ESP-in-UDP ones, GSO to be tried."""
    cdef int k
    for k in range(6):
        if c.fds[k] >= 0:
            dp_deepen(c.fds[k], SOCKET_BUFFER)
        if c.fds[k] >= 0 and k < 2:
            dp_udp_gro(c.fds[k])
        if c.fds[k] >= 0:      # the clear ones too: the kernel's own EMSGSIZE (batch_settle)
            dp_recverr_on(c.fds[k], 4 if k % 2 == 0 else 6)
    c.udp_gso = 1


cdef int loop_start(LoopThread *t) noexcept nogil:
    return pthread_create(&t.thread, NULL, _thread, t)


cdef void loop_join(LoopThread *t) noexcept nogil:
    pthread_join(t.thread, NULL)


cdef void *_thread(void *arg) noexcept nogil:
    with gil:
        _run(<LoopThread *>arg)
    return NULL


cdef void _run(LoopThread *t) noexcept:
    cdef Classifier cls = <Classifier>t.classifier
    with nogil:
        dp_loop(t.core, cls, t.role)


cdef void dp_loop(DpCore *c, Classifier cls, int role) noexcept nogil:
    """One loop thread: outbound, inbound or both."""
    cdef OutBatch *b = batch_new(True)
    cdef LoopBuffers *lb = <LoopBuffers *>malloc(sizeof(LoopBuffers))
    cdef int fds[7]
    cdef int which[7]           # socket index 0-3 (udp4, udp6, esp4, esp6), TUN, WAKE
    cdef int nfds, i
    cdef int wake = c.wake_fds[0 if role & LOOP_OUT else 1]
    cdef unsigned ready, errs
    cdef uint64_t junk
    cdef double now
    if b != NULL and lb != NULL:
        lb.arena = <uint8_t *>malloc(<size_t>BATCH * SLOT)
    if b == NULL or lb == NULL or lb.arena == NULL:
        batch_free(b)
        if lb != NULL:
            free(lb.arena)
        free(lb)
        return
    for i in range(BATCH):
        lb.bufs[i] = lb.arena + <size_t>i * SLOT
    nfds = _loop_fds(c, role, wake, fds, which)
    while oe_load_int(&c.running):
        dp_wait(fds, nfds, 500, &ready, &errs)
        now = oe_now()
        # The wake-up (last of fds) is taken before looking at the work it announces: taken
        # after, it could swallow a wake-up for work posted in between (hold marks), which
        # would then wait for the poll timeout.
        if ready & (1u << (nfds - 1)):
            sys_read(wake, &junk, 8)
        if role & LOOP_OUT:
            routine_housekeeping(c, cls, b, now)
        for i in range(nfds - 1):
            if not (ready & (1u << i)):
                continue
            if which[i] == TUN:
                routine_read_tun(c, cls, lb, b, now)
            else:
                if errs & (1u << i):
                    routine_errors(c, fds[i], which[i])
                routine_receive(c, fds[i], which[i], lb, b, now)
        batch_flush(c, b)
        batch_settle(c, b)
    batch_free(b)
    free(lb.arena)
    free(lb)


cdef int _loop_fds(DpCore *c, int role, int wake, int *fds, int *which) noexcept nogil:
    """The descriptors this loop waits on; how many."""
    cdef int n = 0, k
    if role & LOOP_IN:
        for k in range(4):
            if c.fds[k] >= 0:
                fds[n] = c.fds[k]
                which[n] = k
                n += 1
    if role & LOOP_OUT:
        fds[n] = c.tun_fd
        which[n] = TUN
        n += 1
    fds[n] = wake
    which[n] = WAKE
    return n + 1


cdef void routine_housekeeping(DpCore *c, Classifier cls, OutBatch *b,
                               double now) noexcept nogil:
    """Holds to release (the eroutes changed) or past their timeout; time lifetimes."""
    cdef bint due = now - c.last_sweep >= HOUSEKEEPING
    if (oe_load_int(&c.holds.recheck) or oe_load_int(&c.holds.nmarked)
            or (c.holds.count > 0 and due)):
        hold_recheck(c, cls, CTX_LOOP, b, now, False, due)
    if due:
        sa_sweep(&c.events, &c.sas, now)
        c.last_sweep = now


cdef void routine_read_tun(DpCore *c, Classifier cls, LoopBuffers *lb, OutBatch *b,
                           double now) noexcept nogil:
    """Up to BATCH packets from the TUN, each through the outbound pipeline."""
    cdef ssize_t n
    cdef int k
    for k in range(BATCH):
        n = sys_read(c.tun_fd, lb.bufs[0], SLOT)
        if n <= 0:
            break
        count(c.counters, C_TUN_READ)
        if c.vnet:
            tun_packet(c, cls, lb.bufs[0], n, lb.bufs[1], b, now)
        else:
            dp_outbound(c, cls, CTX_LOOP, lb.bufs[0], n, b, False, now)


cdef void tun_packet(DpCore *c, Classifier cls, uint8_t *frame, size_t n, uint8_t *segment,
                     OutBatch *b, double now) noexcept nogil:
    """A read behind a virtio_net_hdr: finish a partial checksum, or cut a TCP superframe
    (TSO) into segments of gso_size, here, into `segment`."""
    cdef uint8_t *pkt = frame + DP_VNET_LEN
    cdef int gso = frame[1] & ~DP_GSO_ECN
    cdef int mss, seg, seglen
    if n <= <size_t>DP_VNET_LEN:
        count(c.counters, C_MALFORMED)
        return
    n -= DP_VNET_LEN
    if gso == DP_GSO_NONE:
        if frame[0] & DP_F_NEEDS_CSUM:
            dp_finish_csum(pkt, n, frame[6] | (frame[7] << 8), frame[8] | (frame[9] << 8))
        dp_outbound(c, cls, CTX_LOOP, pkt, n, b, False, now)
        return
    if gso != DP_GSO_TCPV4 and gso != DP_GSO_TCPV6:
        count(c.counters, C_MALFORMED)
        return
    mss = frame[4] | (frame[5] << 8)
    seg = 0
    seglen = dp_tso_segment(pkt, <int>n, mss, seg, segment)
    while seglen > 0:
        dp_outbound(c, cls, CTX_LOOP, segment, seglen, b, False, now)
        seg += 1
        seglen = dp_tso_segment(pkt, <int>n, mss, seg, segment)
    if seglen < 0:
        count(c.counters, C_MALFORMED)


cdef void routine_receive(DpCore *c, int fd, int which, LoopBuffers *lb, OutBatch *b,
                          double now) noexcept nogil:
    """Drain one socket in recvmmsg() runs, each datagram through the inbound pipeline."""
    cdef int fam = 4 if which % 2 == 0 else 6
    cdef int r = BATCH, k
    while r == BATCH:
        r = dp_recvmany(fd, fam, lb.bufs, SLOT, lb.lens, lb.addrs, lb.dsts, lb.ports, lb.segs,
                        BATCH)
        for k in range(r):
            datagram(c, which, fam, lb.bufs[k], lb.lens[k], lb.segs[k], lb.addrs[k],
                     lb.dsts[k], lb.ports[k], b, now)
        if r > 0:
            batch_flush(c, b)


cdef void routine_errors(DpCore *c, int fd, int which) noexcept nogil:
    """The socket's error queue (IP_RECVERR): a "too big" about a datagram of ours that names
    one of our outbound SAs to that peer is raised for the path MTU search (drain_errors)."""
    drain_errors(c, fd, 4 if which % 2 == 0 else 6)


cdef void datagram(DpCore *c, int which, int fam, uint8_t *data, uint32_t n, uint16_t seg,
                   const uint8_t *src, const uint8_t *dst, uint16_t sport, OutBatch *b,
                   double now) noexcept nogil:
    """One received buffer: several ESP datagrams (UDP GRO), raw ESP over IPv4 (the socket
    hands over the IP header too; IPv6 does not), or one datagram."""
    cdef uint32_t off = 0, piece
    cdef int hl
    if seg and n > seg:
        while off < n:
            piece = min(<uint32_t>seg, n - off)
            dp_inbound(c, CTX_LOOP, data + off, piece, fam, src, dst, sport, ENCAP_UDP, b, now)
            off += piece
    elif which == 2:
        hl = (data[0] & 0x0F) * 4 if n >= 20 else <int>n
        dp_inbound(c, CTX_LOOP, data + hl, n - hl, 4, src, dst, sport, ENCAP_RAW, b, now)
    else:
        dp_inbound(c, CTX_LOOP, data, n, fam, src, dst, sport,
                   ENCAP_UDP if which < 2 else ENCAP_RAW, b, now)
