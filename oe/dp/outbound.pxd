# cython: language_level=3
# The outbound pipeline: a packet read from the TUN goes to its hold, or by its eroute to ESP,
# in clear, back as ICMP, into a new hold (with an acquire) or nowhere. Each lock is taken in
# one place around one function that does the work under it: no exit path can forget it.

from libc.stdint cimport uint8_t

from oe.dp.batch cimport OutBatch
from oe.dp.classifier cimport Classifier
from oe.dp.core cimport DpCore
from oe.dp.sa cimport EspSa


cdef void dp_outbound(DpCore *c, Classifier cls, int ctxi, uint8_t *pkt, size_t n, OutBatch *b,
                      bint from_hold, double now) noexcept nogil
cdef int dp_probe(DpCore *c, int ctxi, EspSa *sa, int size, uint8_t *plain, uint8_t *out,
                  size_t cap) noexcept nogil
cdef void hold_recheck(DpCore *c, Classifier cls, int ctxi, OutBatch *b, double now,
                       bint reclassify, bint sweep) noexcept nogil
