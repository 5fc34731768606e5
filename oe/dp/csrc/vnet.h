/* TUN offloads (IFF_VNET_HDR): every read and write carries a virtio_net_hdr. Reads may be TCP
   superframes (TSO) to cut into MSS-sized segments here; writes coalesce runs of one TCP
   flow's segments into one superframe (GRO), so the kernel's TCP stack handles them once. The
   scheme is wireguard-go's tun/offload_linux.go. */
#ifndef OE_DP_VNET_H
#define OE_DP_VNET_H

#include <stddef.h>
#include <stdint.h>

#define DP_VNET_LEN 10
#define DP_F_NEEDS_CSUM 1
#define DP_GSO_NONE 0
#define DP_GSO_TCPV4 1
#define DP_GSO_TCPV6 4
#define DP_GSO_ECN 0x80

void dp_finish_csum(uint8_t *pkt, size_t n, unsigned start, unsigned offset);
int dp_tso_segment(const uint8_t *pkt, int n, int mss, int k, uint8_t *out);
int dp_tun_write(int fd, uint8_t **pkts, uint32_t *lens, int n, uint8_t *scratch,
                 size_t scratch_size, uint64_t *writes);

#endif
