/* The datapath's UDP and raw sockets: batched sends and receives (sendmmsg, recvmmsg), UDP
   segmentation and receive offloads (GSO, GRO), deep buffers and the wait for readiness. */
#ifndef OE_DP_SOCK_H
#define OE_DP_SOCK_H

#include <stddef.h>
#include <stdint.h>

#define DP_BATCH 64

int dp_sendmany(int fd, int family, uint8_t **bufs, uint32_t *lens, uint8_t (*addrs)[16],
                uint8_t (*srcs)[16], uint16_t *ports, int n, int *errs);
int dp_sendrun(int fd, int family, uint8_t **bufs, uint32_t *lens, uint8_t (*addrs)[16],
               uint8_t (*srcs)[16], uint16_t *ports, int n, int *gso, int *errs);
int dp_recvmany(int fd, int family, uint8_t **bufs, size_t size, uint32_t *lens,
                uint8_t (*addrs)[16], uint8_t (*dsts)[16], uint16_t *ports, uint16_t *segs,
                int n);
void dp_udp_gro(int fd);
void dp_deepen(int fd, int bytes);
int dp_wait(int *fds, int n, int timeout_ms, unsigned *ready, unsigned *errs);
void dp_recverr_on(int fd, int family);
int dp_recverr(int fd, int family, uint8_t *dst, uint32_t *spi, uint32_t *mtu, int *local);

#endif
