# Declarations of packet.h: byte readers and writers, the Internet checksum, the pair hash.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "packet.h" nogil:
    uint16_t oe_rd16(const uint8_t *p)
    uint32_t oe_rd32(const uint8_t *p)
    void oe_wr16(uint8_t *p, uint16_t v)
    void oe_wr32(uint8_t *p, uint32_t v)
    uint64_t oe_csum_add(uint64_t s, const uint8_t *p, size_t n)
    uint16_t oe_csum_fold(uint64_t s)
    uint32_t oe_pair_hash(const uint8_t *src, const uint8_t *dst, int alen)
