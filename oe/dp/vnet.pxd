# Declarations of vnet.h (vnet.c): the TUN's virtio_net_hdr offloads (TSO in, GRO out).

from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "vnet.h" nogil:
    int DP_VNET_LEN
    int DP_F_NEEDS_CSUM
    int DP_GSO_NONE
    int DP_GSO_TCPV4
    int DP_GSO_TCPV6
    int DP_GSO_ECN
    void dp_finish_csum(uint8_t *pkt, size_t n, unsigned start, unsigned offset)
    int dp_tso_segment(const uint8_t *pkt, int n, int mss, int k, uint8_t *out)
    int dp_tun_write(int fd, uint8_t **pkts, uint32_t *lens, int n, uint8_t *scratch,
                     size_t scratch_size, uint64_t *writes)
