# cython: language_level=3
# Anti-replay window: RFC 4303 section 3.4.3 and Appendix A, laid out as RFC 6479 ("IPsec
# Anti-Replay Algorithm without Bit Shifting"): a ring of 64-bit blocks where the bit for
# sequence number s sits at block (s >> 6) mod nblocks, bit s & 63. Moving the window forward
# only clears the blocks it passes over; nothing is ever shifted. One block is kept spare so the
# top block can be partly filled: the ring holds (nblocks - 1) * 64 >= window bits.
#
# Order of use on receive (RFC 4303 3.4.3): replay_check() on the clear sequence number, then
# verify the ICV, and only then replay_update(), so forged packets never move the window.

from libc.stdint cimport uint32_t, uint64_t


cdef struct ReplayWin:
    uint64_t top        # highest sequence number accepted so far (64-bit: ESN)
    uint64_t window     # packets covered below and including top
    uint64_t nblocks    # ring size in 64-bit blocks, a power of two
    uint64_t *bits


cdef int replay_init(ReplayWin *r, uint64_t window) noexcept nogil
cdef void replay_free(ReplayWin *r) noexcept nogil


cdef inline bint replay_check(const ReplayWin *r, uint64_t seq) noexcept nogil:
    """True if `seq` is new and inside the window (sequence numbers start at 1)."""
    if seq == 0:
        return False
    if seq > r.top:
        return True
    if r.top - seq >= r.window:
        return False
    return ((r.bits[(seq >> 6) & (r.nblocks - 1)] >> (seq & 63)) & 1) == 0


cdef inline void replay_update(ReplayWin *r, uint64_t seq) noexcept nogil:
    """Record `seq` as received; call only after replay_check() and a good ICV."""
    cdef uint64_t cur, diff, i
    if seq > r.top:
        cur = r.top >> 6
        diff = (seq >> 6) - cur
        if diff > r.nblocks:
            diff = r.nblocks
        for i in range(1, diff + 1):
            r.bits[(cur + i) & (r.nblocks - 1)] = 0
        r.top = seq
    r.bits[(seq >> 6) & (r.nblocks - 1)] |= (<uint64_t>1) << (seq & 63)


cdef inline uint64_t replay_esn_seq(const ReplayWin *r, uint32_t seql) noexcept nogil:
    """The full 64-bit ESN for the low half `seql` (RFC 4303 Appendix A2.2); 0 if impossible.

    A wrong guess is caught by the ICV, since the high half goes into the AAD (RFC 4106 5).
    """
    cdef uint32_t tl = <uint32_t>(r.top & 0xFFFFFFFFu)
    cdef uint32_t th = <uint32_t>(r.top >> 32)
    cdef uint32_t w = <uint32_t>r.window
    cdef uint32_t bl = tl - w + 1          # bottom of the window, modulo 2^32
    if tl >= w - 1:                        # Case A: the window lies within one epoch
        if seql >= bl:
            return ((<uint64_t>th) << 32) | seql
        if th == 0xFFFFFFFFu:
            return 0
        return ((<uint64_t>(th + 1)) << 32) | seql
    # Case B: the window spans two epochs
    if seql >= bl:
        if th == 0:
            return 0
        return ((<uint64_t>(th - 1)) << 32) | seql
    return ((<uint64_t>th) << 32) | seql
