# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The inbound pipeline (inbound.pxd), per datagram: UDP 4500 demux (RFC 3948: 0xFF keepalive,
non-ESP marker -> IKE event) or raw ESP -> SPI -> replay check -> ICV -> window update ->
selectors (RFC 4322 12.1) -> TUN, where TCP segments of one flow coalesce (batch.pxd)."""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc
from libc.string cimport memcpy, memset

from oe.dp.batch cimport HEADROOM, OUT_TUN, SLOT, batch_commit, batch_slot
from oe.dp.codes cimport (C_DUMMY, C_ESP_IN, C_EXPIRED, C_IKE, C_KEEPALIVES, C_MALFORMED,
                          C_MSS_CLAMPED, C_PMTU_ACKS, C_POLICY, C_UNKNOWN_SPI, count)
from oe.dp.esp cimport ESP_HDR, NH_IPV4, NH_IPV6, NH_NONE, esp_open
from oe.dp.events cimport EV_IKE, EV_PROBE_ACK, DpEvent, ev_push
from oe.dp.packet cimport (PROBE_ECHO, PROBE_ID, PROBE_MAGIC_HI, PROBE_MAGIC_LO, PROTO_ICMP,
                           PROTO_ICMPV6, PktInfo, addr_len, mss_clamp, oe_csum_add,
                           oe_csum_fold, oe_rd16, oe_rd32, oe_wr16, parse_ip)
from oe.dp.sa cimport (ENCAP_UDP, EspSa, sa_account, sa_admit, sa_find, sa_refused,
                       ts_allows)
from oe.dp.sync cimport oe_add64, oe_rd_lock, oe_rw_unlock


cdef void dp_inbound(DpCore *c, int ctxi, const uint8_t *data, size_t n, int family,
                     const uint8_t *src, const uint8_t *dst, uint16_t sport, int encap,
                     OutBatch *b, double now) noexcept nogil:
    cdef PktInfo info
    cdef uint8_t *inner
    cdef int length
    cdef uint32_t mtu = c.tun_mtu
    if encap == ENCAP_UDP and _nat_t_control(c, data, n, family, src, dst, sport):
        return
    if n < ESP_HDR:
        count(c.counters, C_MALFORMED)
        return
    inner = batch_slot(c, b) + HEADROOM
    oe_rd_lock(&c.sas.lock)
    length = _open_locked(c, ctxi, data, n, &inner, &info, &mtu, now)
    oe_rw_unlock(&c.sas.lock)
    if length < 0:
        return
    if _probe_ack(c, inner, &info, family, src):
        return
    # The SYN's answer goes back over our path to the peer: the SA's MTU, not the TUN's.
    if mss_clamp(inner, &info, mtu):
        count(c.counters, C_MSS_CLAMPED)
    batch_commit(b, OUT_TUN, info.version, NULL, NULL, 0, inner, <uint32_t>length, 0)
    count(c.counters, C_ESP_IN)


cdef bint _probe_ack(DpCore *c, const uint8_t *p, const PktInfo *info, int family,
                     const uint8_t *src) noexcept nogil:
    """The echo reply to one of our path MTU probes (outbound.pyx, dp_probe): taken here, not
    written to the TUN, and raised as the probe's acknowledgement (its size). True if it was."""
    cdef const uint8_t *icmp = p + info.l4off
    cdef DpEvent e
    if info.total != info.l4off + PROBE_ECHO or not info.first_fragment:
        return False
    if not ((info.proto == PROTO_ICMP and icmp[0] == 0)
            or (info.proto == PROTO_ICMPV6 and icmp[0] == 129)):
        return False
    if (oe_rd16(icmp + 4) != PROBE_ID or oe_rd32(icmp + 8) != PROBE_MAGIC_HI
            or oe_rd32(icmp + 12) != PROBE_MAGIC_LO):
        return False
    memset(&e, 0, sizeof(DpEvent))
    e.kind = EV_PROBE_ACK
    e.version = family
    memcpy(e.src, src, addr_len(family))
    e.count = oe_rd16(icmp + 6)
    count(c.counters, C_PMTU_ACKS)
    ev_push(&c.events, c.counters, &e)
    return True


cdef bint _nat_t_control(DpCore *c, const uint8_t *data, size_t n, int family,
                         const uint8_t *src, const uint8_t *dst, uint16_t sport) noexcept nogil:
    """A NAT-keepalive or an IKE message on the ESP-in-UDP port (taken: True), or ESP. An IKE
    message keeps its destination: the engine answers from it (docs/gateway.md 1)."""
    cdef DpEvent e
    if n == 1 and data[0] == 0xFF:        # RFC 3948 2.3: NAT-keepalive
        count(c.counters, C_KEEPALIVES)
        return True
    if n < 4 or oe_rd32(data) != 0:       # RFC 3948 2.2: the non-ESP marker, IKE follows
        return False
    memset(&e, 0, sizeof(DpEvent))
    e.kind = EV_IKE
    e.version = family
    memcpy(e.src, src, addr_len(family))
    memcpy(e.dst, dst, addr_len(family))
    e.sport = sport
    e.length = <uint32_t>(n - 4)
    e.data = <uint8_t *>malloc(n - 4 if n > 4 else 1)
    if e.data == NULL:
        return True
    memcpy(e.data, data + 4, n - 4)
    count(c.counters, C_IKE)
    ev_push(&c.events, c.counters, &e)
    return True


cdef int _open_locked(DpCore *c, int ctxi, const uint8_t *data, size_t n, uint8_t **inner,
                      PktInfo *info, uint32_t *mtu, double now) noexcept nogil:
    """Open the ESP packet under its SA (the SA read lock held) into *inner, which a rebuilt
    transport header may move, and give the SA's inner MTU; the inner packet's length, or -1
    (counted)."""
    cdef EspSa *sa = sa_find(&c.sas.inb, oe_rd32(data))
    cdef int r, nh
    cdef uint64_t seq
    cdef size_t length
    if sa == NULL:
        count(c.counters, C_UNKNOWN_SPI)         # RFC 4303 3.4.2: discard, auditable event
        return -1
    if not sa_admit(&c.events, sa, n, now):
        oe_add64(&sa.err_expired, 1)
        count(c.counters, C_EXPIRED)
        return -1
    r = esp_open(sa, ctxi, data, n, inner[0], SLOT - HEADROOM, &nh, &seq)
    if r < 0:
        sa_refused(&c.events, c.counters, sa, -r)
        return -1
    length = r
    if nh == NH_NONE:
        count(c.counters, C_DUMMY)
        return -1
    if sa.tunnel:
        if (nh != NH_IPV4 and nh != NH_IPV6) or parse_ip(inner[0], length, info) < 0 \
                or info.version != (4 if nh == NH_IPV4 else 6):
            return _malformed(c, sa)
        length = info.total     # RFC 4303 2.7: TFC padding after the inner datagram
    else:
        inner[0] = _transport_header(sa, inner[0], &length, nh)
        if parse_ip(inner[0], length, info) < 0:
            return _malformed(c, sa)
    if not ts_allows(sa, info):
        # RFC 4322 12.1: what arrives under an SA must be what the SA was negotiated for.
        oe_add64(&sa.err_policy, 1)
        count(c.counters, C_POLICY)
        return -1
    sa_account(&c.events, sa, length, seq, now)
    if sa.mtu < mtu[0]:
        mtu[0] = sa.mtu
    return <int>length


cdef int _malformed(DpCore *c, EspSa *sa) noexcept nogil:
    oe_add64(&sa.err_malformed, 1)
    count(c.counters, C_MALFORMED)
    return -1


cdef uint8_t *_transport_header(const EspSa *sa, uint8_t *payload, size_t *length,
                                int nh) noexcept nogil:
    """Transport mode: put back the IP header, from the SA's (outer) addresses, in the headroom
    before the payload; where the packet now starts."""
    cdef uint8_t *ip
    if sa.family == 4:
        ip = payload - 20
        memset(ip, 0, 20)
        ip[0] = 0x45
        oe_wr16(ip + 2, <uint16_t>(length[0] + 20))
        ip[8] = 64
        ip[9] = nh
        memcpy(ip + 12, sa.peer, 4)
        memcpy(ip + 16, sa.local, 4)
        oe_wr16(ip + 10, ~oe_csum_fold(oe_csum_add(0, ip, 20)))
        length[0] += 20
    else:
        ip = payload - 40
        memset(ip, 0, 40)
        ip[0] = 0x60
        oe_wr16(ip + 4, <uint16_t>length[0])
        ip[6] = nh
        ip[7] = 64
        memcpy(ip + 8, sa.peer, 16)
        memcpy(ip + 24, sa.local, 16)
        length[0] += 40
    return ip
