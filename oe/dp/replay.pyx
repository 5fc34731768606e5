# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The anti-replay window (RFC 4303 3.4.3, RFC 6479): see replay.pxd for the per-packet checks."""

from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free


cdef int replay_init(ReplayWin *r, uint64_t window) noexcept nogil:
    cdef uint64_t need = (window + 63) // 64 + 1
    cdef uint64_t n = 2
    while n < need:
        n <<= 1
    r.bits = <uint64_t *>calloc(n, sizeof(uint64_t))
    if r.bits == NULL:
        return -1
    r.top = 0
    r.window = window
    r.nblocks = n
    return 0


cdef void replay_free(ReplayWin *r) noexcept nogil:
    free(r.bits)
    r.bits = NULL


cdef class ReplayWindow:
    """A stand-alone window, for tests and tools; SAs embed the same C structure."""

    cdef ReplayWin _w

    def __cinit__(self, uint64_t window=4096):
        if window < 1 or window > 0x7FFFFFFF:
            raise ValueError("the replay window is 1 to 2^31 - 1 packets")
        if replay_init(&self._w, window) != 0:
            raise MemoryError()

    def __dealloc__(self):
        replay_free(&self._w)

    @property
    def top(self) -> int:
        return self._w.top

    def check(self, uint64_t seq) -> bool:
        return replay_check(&self._w, seq)

    def update(self, uint64_t seq) -> None:
        replay_update(&self._w, seq)

    def accept(self, uint64_t seq) -> bool:
        """check() then update(): what receiving an authentic packet does."""
        if not replay_check(&self._w, seq):
            return False
        replay_update(&self._w, seq)
        return True

    def esn_seq(self, uint32_t seql) -> int:
        return replay_esn_seq(&self._w, seql)
