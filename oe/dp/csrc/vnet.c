/* See vnet.h. */
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>

#include "packet.h"
#include "vnet.h"

#define DP_TCP_FIN 0x01
#define DP_TCP_PSH 0x08
#define DP_TCP_ACK 0x10
#define DP_TCP_CWR 0x80

/* The TCP pseudo-header's partial sum (RFC 793 3.1, RFC 8200 8.1). */
static uint64_t dp_pseudo(const uint8_t *ip, int version, uint32_t l4len) {
    if (version == 4) return oe_csum_add(0, ip + 12, 8) + 6 + l4len;
    return oe_csum_add(0, ip + 8, 32) + 6 + l4len;
}

/* Finish a checksum the kernel left partial: the field holds the pseudo-header sum. */
void dp_finish_csum(uint8_t *pkt, size_t n, unsigned start, unsigned offset) {
    if (start + offset + 2 > n) return;
    oe_wr16(pkt + start + offset, (uint16_t)~oe_csum_fold(oe_csum_add(0, pkt + start, n - start)));
}

/* Segment k of a TCP superframe, written to out: its length, 0 after the last, -1 bad. */
int dp_tso_segment(const uint8_t *pkt, int n, int mss, int k, uint8_t *out) {
    int version = pkt[0] >> 4, ihl, thl, hl, total, payload, start, len, last;
    uint8_t *tcp;
    if (version == 4) { ihl = (pkt[0] & 0x0F) * 4; total = oe_rd16(pkt + 2); }
    else if (version == 6) { ihl = 40; total = 40 + oe_rd16(pkt + 4); if (pkt[6] != 6) return -1; }
    else return -1;
    if (total > n || total < ihl + 20 || mss <= 0) return -1;
    thl = (pkt[ihl + 12] >> 4) * 4;
    hl = ihl + thl;
    if (thl < 20 || hl > total) return -1;
    payload = total - hl;
    start = k * mss;
    if (start >= payload) return 0;
    len = payload - start < mss ? payload - start : mss;
    last = start + len >= payload;
    memcpy(out, pkt, hl);
    memcpy(out + hl, pkt + hl + start, len);
    if (version == 4) {
        oe_wr16(out + 2, (uint16_t)(hl + len));
        oe_wr16(out + 4, (uint16_t)(oe_rd16(pkt + 4) + k));
        oe_wr16(out + 10, 0);
        oe_wr16(out + 10, (uint16_t)~oe_csum_fold(oe_csum_add(0, out, ihl)));
    } else {
        oe_wr16(out + 4, (uint16_t)(thl + len));
    }
    tcp = out + ihl;
    oe_wr32(tcp + 4, oe_rd32(pkt + ihl + 4) + (uint32_t)start);
    if (!last) tcp[13] &= ~(DP_TCP_FIN | DP_TCP_PSH);
    if (k) tcp[13] &= ~DP_TCP_CWR;
    oe_wr16(tcp + 16, 0);
    oe_wr16(tcp + 16, (uint16_t)~oe_csum_fold(oe_csum_add(dp_pseudo(out, version, thl + len),
                                                          tcp, thl + len)));
    return hl + len;
}

/* Header length if pkt is a TCP segment GRO may merge (ACK, maybe PSH, with data), else 0. */
static int dp_gro_header(const uint8_t *p, uint32_t n) {
    int ihl, thl;
    if (n < 40) return 0;
    if ((p[0] >> 4) == 4) {
        if (p[0] != 0x45 || p[9] != 6 || (oe_rd16(p + 6) & 0x3FFF) || oe_rd16(p + 2) != n)
            return 0;
        ihl = 20;
    } else if ((p[0] >> 4) == 6) {
        if (n < 60 || p[6] != 6 || 40u + oe_rd16(p + 4) != n) return 0;
        ihl = 40;
    } else return 0;
    thl = (p[ihl + 12] >> 4) * 4;
    if (thl < 20 || (uint32_t)(ihl + thl) >= n) return 0;
    if ((p[ihl + 13] & ~DP_TCP_PSH) != DP_TCP_ACK) return 0;
    return ihl + thl;
}

#define DP_IHL(p) (((p)[0] >> 4) == 4 ? 20 : 40)   /* of a dp_gro_header() packet */

/* Same flow and same headers apart from lengths, IPv4 id and checksum, seq and PSH? */
static int dp_gro_same(const uint8_t *a, const uint8_t *b, int hl) {
    int ihl = DP_IHL(a);
    if ((a[0] >> 4) == 4) {
        if (a[1] != b[1] || a[8] != b[8] || (a[6] & 0x40) != (b[6] & 0x40)
                || memcmp(a + 12, b + 12, 8)) return 0;
    } else if (memcmp(a, b, 4) || a[7] != b[7] || memcmp(a + 8, b + 8, 32)) return 0;
    a += ihl; b += ihl;
    return memcmp(a, b, 4) == 0 && memcmp(a + 8, b + 8, 5) == 0
        && (a[13] & ~DP_TCP_PSH) == (b[13] & ~DP_TCP_PSH) && memcmp(a + 14, b + 14, 2) == 0
        && memcmp(a + 20, b + 20, hl - ihl - 20) == 0;
}

/* How many packets from pkts[0] form one run GRO may merge (1: none), and its length. */
static int dp_gro_run(uint8_t **pkts, uint32_t *lens, int n, size_t scratch_size,
                      int *hl_out, uint32_t *total_out) {
    int j = 1, hl = dp_gro_header(pkts[0], lens[0]), mss;
    uint32_t total = lens[0], seq, pl;
    if (hl) {
        mss = lens[0] - hl;
        seq = oe_rd32(pkts[0] + DP_IHL(pkts[0]) + 4) + mss;
        while (j < n && !(pkts[j - 1][DP_IHL(pkts[j - 1]) + 13] & DP_TCP_PSH)
               && dp_gro_header(pkts[j], lens[j]) == hl && dp_gro_same(pkts[0], pkts[j], hl)
               && oe_rd32(pkts[j] + DP_IHL(pkts[j]) + 4) == seq
               && (pl = lens[j] - hl) <= (uint32_t)mss
               && DP_VNET_LEN + total + pl <= scratch_size && total + pl <= 65535) {
            total += pl;
            seq += pl;
            j++;
            if (pl < (uint32_t)mss) break;      /* a short segment ends the run */
        }
    }
    *hl_out = hl;
    *total_out = total;
    return j;
}

/* Build the superframe of pkts[0:m] in scratch behind its virtio_net_hdr: the first segment's
   headers, every payload, fixed lengths. */
static void dp_gro_build(uint8_t **pkts, uint32_t *lens, int m, int hl, uint32_t total,
                         uint8_t *scratch) {
    int version = pkts[0][0] >> 4, ihl = version == 4 ? 20 : 40, k;
    uint8_t *sf = scratch + DP_VNET_LEN;
    uint32_t off = lens[0];
    memset(scratch, 0, DP_VNET_LEN);
    memcpy(sf, pkts[0], lens[0]);
    for (k = 1; k < m; k++) {
        memcpy(sf + off, pkts[k] + hl, lens[k] - hl);
        off += lens[k] - hl;
    }
    sf[ihl + 13] |= pkts[m - 1][ihl + 13] & DP_TCP_PSH;
    if (version == 4) {
        oe_wr16(sf + 2, (uint16_t)total);
        oe_wr16(sf + 10, 0);
        oe_wr16(sf + 10, (uint16_t)~oe_csum_fold(oe_csum_add(0, sf, 20)));
    } else {
        oe_wr16(sf + 4, (uint16_t)(total - 40));
    }
    /* CHECKSUM_PARTIAL: the TCP field holds the pseudo-header sum (not inverted). */
    oe_wr16(sf + ihl + 16, oe_csum_fold(dp_pseudo(sf, version, total - ihl)));
    scratch[0] = DP_F_NEEDS_CSUM;
    scratch[1] = version == 4 ? DP_GSO_TCPV4 : DP_GSO_TCPV6;
    *(uint16_t *)(scratch + 2) = (uint16_t)hl;           /* host order: little endian */
    *(uint16_t *)(scratch + 4) = (uint16_t)(lens[0] - hl);
    *(uint16_t *)(scratch + 6) = (uint16_t)ihl;
    *(uint16_t *)(scratch + 8) = 16;
}

/* Write n packets to the TUN, each behind a virtio_net_hdr, coalescing runs of one TCP flow
   into superframes. Returns the number of packets the kernel refused. */
int dp_tun_write(int fd, uint8_t **pkts, uint32_t *lens, int n, uint8_t *scratch,
                 size_t scratch_size, uint64_t *writes) {
    uint8_t hdr[DP_VNET_LEN];
    struct iovec iov[2];
    int i = 0, m, hl, failed = 0;
    uint32_t total;
    while (i < n) {
        m = dp_gro_run(pkts + i, lens + i, n - i, scratch_size, &hl, &total);
        (*writes)++;
        if (m == 1) {
            memset(hdr, 0, DP_VNET_LEN);
            iov[0].iov_base = hdr; iov[0].iov_len = DP_VNET_LEN;
            iov[1].iov_base = pkts[i]; iov[1].iov_len = lens[i];
            if (writev(fd, iov, 2) < 0) failed++;
        } else {
            dp_gro_build(pkts + i, lens + i, m, hl, total, scratch);
            if (write(fd, scratch, DP_VNET_LEN + total) < 0) failed += m;
        }
        i += m;
    }
    return failed;
}
