# cython: language_level=3
# The inbound pipeline: a datagram from a socket is a NAT-keepalive, an IKE message (NAT-T,
# RFC 3948) or ESP, which is opened under its SA, checked against the SA's selectors
# (RFC 4322 12.1) and written to the TUN. The SA lock is taken in one place.

from libc.stdint cimport uint8_t, uint16_t

from oe.dp.batch cimport OutBatch
from oe.dp.core cimport DpCore


cdef void dp_inbound(DpCore *c, int ctxi, const uint8_t *data, size_t n, int family,
                     const uint8_t *src, const uint8_t *dst, uint16_t sport, int encap,
                     OutBatch *b,
                     double now) noexcept nogil
