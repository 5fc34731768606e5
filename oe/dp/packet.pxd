# cython: language_level=3
# Packet helpers shared by the datapath's parts: the C ones (packet.h: byte readers, the one
# Internet checksum, the pair hash) and the IP parser, ICMP errors and the MSS clamp.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "packet.h" nogil:
    uint16_t oe_rd16(const uint8_t *p)
    uint32_t oe_rd32(const uint8_t *p)
    void oe_wr16(uint8_t *p, uint16_t v)
    void oe_wr32(uint8_t *p, uint32_t v)
    uint64_t oe_csum_add(uint64_t s, const uint8_t *p, size_t n)
    uint16_t oe_csum_fold(uint64_t s)
    uint32_t oe_pair_hash(const uint8_t *src, const uint8_t *dst, int alen)

cdef enum:
    PROTO_ICMP = 1
    PROTO_TCP = 6
    PROTO_UDP = 17
    PROTO_ICMPV6 = 58
    PROTO_SCTP = 132


cdef struct PktInfo:
    int version
    int hlen                    # bytes of IP header (IPv6: fixed header only)
    int l4off                   # where the transport header starts (after a Fragment header)
    int proto                   # IPv4 protocol / IPv6 next header (after the fixed header)
    int sport
    int dport
    int total                   # length the header claims
    bint first_fragment         # carries the transport header (ports valid)
    bint df                     # IPv4 Don't Fragment
    const uint8_t *src
    const uint8_t *dst


cdef inline int addr_len(int version) noexcept nogil:
    return 4 if version == 4 else 16


cdef inline bint has_ports(const PktInfo *info) noexcept nogil:
    """Does the packet carry the ports of a TCP, UDP or SCTP header?"""
    return info.first_fragment and (info.proto == PROTO_TCP or info.proto == PROTO_UDP
                                    or info.proto == PROTO_SCTP)


cdef inline bint shift_back(uint32_t hole, uint32_t j, uint32_t home) noexcept nogil:
    """Backward-shift deletion in open addressing: may the entry at j, whose home slot is home,
    move back to the hole? Yes unless its home lies cyclically in (hole, j]."""
    return (j > hole and (home <= hole or home > j)) or (j < hole and (home <= hole and home > j))


cdef int parse_ip(const uint8_t *p, size_t n, PktInfo *info) noexcept nogil
cdef int icmp_error(uint8_t *out, const uint8_t *pkt, const PktInfo *info, int type4, int code4,
                    int type6, int code6, uint32_t mtu) noexcept nogil
cdef bint mss_clamp(uint8_t *pkt, const PktInfo *info, uint32_t mtu) noexcept nogil
cdef bint is_link_chatter(const PktInfo *info) noexcept nogil
