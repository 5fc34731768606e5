# Declarations of sock.h (sock.c): the batched and offloaded socket calls.

from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef extern from "sock.h" nogil:
    int DP_BATCH
    int dp_sendmany(int fd, int family, uint8_t **bufs, uint32_t *lens, uint8_t (*addrs)[16],
                    uint8_t (*srcs)[16], uint16_t *ports, int n, int *errs)
    int dp_sendrun(int fd, int family, uint8_t **bufs, uint32_t *lens, uint8_t (*addrs)[16],
                   uint8_t (*srcs)[16], uint16_t *ports, int n, int *gso, int *errs)
    int dp_recvmany(int fd, int family, uint8_t **bufs, size_t size, uint32_t *lens,
                    uint8_t (*addrs)[16], uint8_t (*dsts)[16], uint16_t *ports, uint16_t *segs,
                    int n)
    void dp_udp_gro(int fd)
    void dp_deepen(int fd, int nbytes)
    int dp_wait(int *fds, int n, int timeout_ms, unsigned *ready, unsigned *errs)
    void dp_recverr_on(int fd, int family)
    int dp_recverr(int fd, int family, uint8_t *dst, uint32_t *spi, uint32_t *mtu, int *local)
