# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Packet helpers: parse an IP header, build an ICMP error, clamp a TCP MSS."""

from libc.string cimport memcpy, memset


cdef int parse_ip(const uint8_t *p, size_t n, PktInfo *info) noexcept nogil:
    """Fill `info` from an IP packet; -1 if it is not a well-formed IPv4/IPv6 packet."""
    cdef int off
    if n < 20:
        return -1
    info.version = p[0] >> 4
    info.sport = 0
    info.dport = 0
    if info.version == 4:
        info.hlen = (p[0] & 0x0F) * 4
        info.total = oe_rd16(p + 2)
        if info.hlen < 20 or info.total < info.hlen or <size_t>info.total > n:
            return -1
        info.proto = p[9]
        info.df = (p[6] & 0x40) != 0
        info.first_fragment = (oe_rd16(p + 6) & 0x1FFF) == 0
        info.src = p + 12
        info.dst = p + 16
        off = info.hlen
    elif info.version == 6:
        if n < 40:
            return -1
        info.hlen = 40
        info.total = 40 + oe_rd16(p + 4)
        if <size_t>info.total > n:
            return -1
        info.proto = p[6]
        info.df = True          # IPv6 routers never fragment (RFC 8200 5)
        info.first_fragment = True
        info.src = p + 8
        info.dst = p + 24
        off = 40
        if info.proto == 44:    # Fragment header: ports only in the first fragment
            if info.total < 48:
                return -1
            info.first_fragment = (oe_rd16(p + 42) & 0xFFF8) == 0
            info.proto = p[40]
            off = 48
    else:
        return -1
    info.l4off = off
    if has_ports(info) and info.total >= off + 4:
        info.sport = oe_rd16(p + off)
        info.dport = oe_rd16(p + off + 2)
    return 0


cdef int icmp_error(uint8_t *out, const uint8_t *pkt, const PktInfo *info, int type4, int code4,
                    int type6, int code6, uint32_t mtu) noexcept nogil:
    """An ICMP error about `pkt`, from its destination back to its source; length or 0."""
    cdef size_t quote, total
    cdef uint64_t s
    cdef const uint8_t *l4 = pkt + info.l4off
    if info.version == 4:
        if not info.first_fragment:
            return 0            # RFC 1122 3.2.2: never about a non-initial fragment
        if info.proto == PROTO_ICMP and info.total > info.l4off and l4[0] in (3, 4, 5, 11, 12):
            return 0            # ... nor about an ICMP error
        quote = info.total if info.total < 548 else 548
        total = 28 + quote
        memset(out, 0, 28)
        out[0] = 0x45
        oe_wr16(out + 2, <uint16_t>total)
        out[8] = 64
        out[9] = PROTO_ICMP
        memcpy(out + 12, info.dst, 4)
        memcpy(out + 16, info.src, 4)
        oe_wr16(out + 10, ~oe_csum_fold(oe_csum_add(0, out, 20)))
        out[20] = type4
        out[21] = code4
        if mtu:
            oe_wr16(out + 26, <uint16_t>mtu)    # RFC 1191 4: next-hop MTU
        memcpy(out + 28, pkt, quote)
        oe_wr16(out + 22, ~oe_csum_fold(oe_csum_add(0, out + 20, 8 + quote)))
        return <int>total
    if (info.proto == PROTO_ICMPV6 and info.first_fragment and info.total > info.l4off
            and l4[0] < 128):
        return 0                # RFC 4443 2.4 (e.1): never about an ICMPv6 error
    quote = info.total if info.total < 1280 - 48 else 1280 - 48
    total = 48 + quote
    memset(out, 0, 48)
    out[0] = 0x60
    oe_wr16(out + 4, <uint16_t>(8 + quote))
    out[6] = PROTO_ICMPV6
    out[7] = 64
    memcpy(out + 8, info.dst, 16)
    memcpy(out + 24, info.src, 16)
    out[40] = type6
    out[41] = code6
    if mtu:
        oe_wr32(out + 44, mtu)                  # RFC 4443 3.2
    memcpy(out + 48, pkt, quote)
    s = oe_csum_add(0, out + 8, 32)              # pseudo-header (RFC 8200 8.1)
    s += <uint32_t>(8 + quote) + PROTO_ICMPV6
    s = oe_csum_add(s, out + 40, 8 + quote)
    oe_wr16(out + 42, ~oe_csum_fold(s))
    return <int>total


cdef bint mss_clamp(uint8_t *pkt, const PktInfo *info, uint32_t mtu) noexcept nogil:
    """Lower the MSS option of a TCP SYN to fit `mtu` (RFC 879, RFC 6691); True if changed."""
    cdef int off = info.hlen
    cdef uint8_t *tcp
    cdef int doff, i, kind, olen
    cdef uint32_t mss, limit, s
    if info.proto != PROTO_TCP or not info.first_fragment:
        return False
    if info.version == 6 and pkt[6] == 44:
        off = 48
    if info.total < off + 20:
        return False
    tcp = pkt + off
    if (tcp[13] & 0x02) == 0:                 # SYN
        return False
    doff = (tcp[12] >> 4) * 4
    if doff < 20 or off + doff > info.total:
        return False
    limit = mtu - (40 if info.version == 4 else 60)
    i = 20
    while i < doff:
        kind = tcp[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= doff:
            break
        olen = tcp[i + 1]
        if olen < 2 or i + olen > doff:
            break
        if kind == 2 and olen == 4:
            mss = oe_rd16(tcp + i + 2)
            if mss <= limit:
                return False
            # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')
            s = (~oe_rd16(tcp + 16)) & 0xFFFF
            s += (~mss) & 0xFFFF
            s += limit
            oe_wr16(tcp + i + 2, <uint16_t>limit)
            oe_wr16(tcp + 16, ~oe_csum_fold(s))
            return True
        i += olen
    return False


cdef bint is_link_chatter(const PktInfo *info) noexcept nogil:
    """Multicast, broadcast or link-local: never anyone's OE flow, never sent on."""
    if info.version == 4:
        return (info.dst[0] >= 224 or (info.dst[0] == 169 and info.dst[1] == 254)
                or (info.src[0] == 169 and info.src[1] == 254) or info.src[0] == 0)
    return (info.dst[0] == 0xFF or (info.dst[0] == 0xFE and (info.dst[1] & 0xC0) == 0x80)
            or (info.src[0] == 0xFE and (info.src[1] & 0xC0) == 0x80))
