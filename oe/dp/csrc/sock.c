/* See sock.h. */
#define _GNU_SOURCE             /* sendmmsg, recvmmsg */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <linux/errqueue.h>
#include <sys/socket.h>

#include "sock.h"

/* UDP segmentation offload (Linux 4.18+): one sendmsg() carries a run of equal-sized
   datagrams to one peer, cut by the kernel (or the NIC); GRO (5.0+) hands such runs up as one
   buffer. Both save the per-datagram route lookup and skb work. */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#define DP_GSO_MAX 65000

typedef union { struct sockaddr_in v4; struct sockaddr_in6 v6; } dp_sockaddr;

/* Fill a socket address from (addr, port); its length. */
static socklen_t dp_address(dp_sockaddr *sa, int family, const uint8_t *addr, uint16_t port) {
    memset(sa, 0, sizeof(*sa));
    if (family == 4) {
        sa->v4.sin_family = AF_INET;
        sa->v4.sin_port = htons(port);
        memcpy(&sa->v4.sin_addr, addr, 4);
        return sizeof(struct sockaddr_in);
    }
    sa->v6.sin6_family = AF_INET6;
    sa->v6.sin6_port = htons(port);
    memcpy(&sa->v6.sin6_addr, addr, 16);
    return sizeof(struct sockaddr_in6);
}

/* Packet info naming our source address src (IP_PKTINFO ipi_spec_dst, IPV6_PKTINFO
   ipi6_addr; RFC 3542 6.1), so a datagram leaves from the SA's own address of the host's many
   (docs/gateway.md 1); an all-zero src adds nothing and the kernel picks. Returns the bytes
   of control data written at cm. */
#define DP_PKTINFO_SPACE CMSG_SPACE(sizeof(struct in6_pktinfo))
static const uint8_t dp_zero[16];

static size_t dp_pktinfo(struct cmsghdr *cm, int family, const uint8_t *src) {
    union { struct in_pktinfo v4; struct in6_pktinfo v6; } info;
    size_t size = family == 4 ? sizeof(info.v4) : sizeof(info.v6);
    if (src == NULL || memcmp(src, dp_zero, family == 4 ? 4 : 16) == 0)
        return 0;
    memset(&info, 0, sizeof(info));
    if (family == 4)
        memcpy(&info.v4.ipi_spec_dst, src, 4);
    else
        memcpy(&info.v6.ipi6_addr, src, 16);
    cm->cmsg_level = family == 4 ? IPPROTO_IP : IPPROTO_IPV6;
    cm->cmsg_type = family == 4 ? IP_PKTINFO : IPV6_PKTINFO;
    cm->cmsg_len = CMSG_LEN(size);
    memcpy(CMSG_DATA(cm), &info, size);
    return CMSG_SPACE(size);
}

/* The socket buffer is full: wait a little for room instead of dropping. */
static void dp_wait_writable(int fd) {
    struct pollfd p = { fd, POLLOUT, 0 };
    poll(&p, 1, 10);
}

/* sendmmsg() a run of datagrams to (addr, port) pairs, each from srcs[i] (NULL or zero: the
   kernel picks); returns how many the kernel took.
   errs[i]: 0, or the errno of the datagram the kernel refused (sendmmsg stops at the first
   failure and reports it as the call's error when none went: that item is skipped, the rest
   sent again). */
int dp_sendmany(int fd, int family, uint8_t **bufs, uint32_t *lens, uint8_t (*addrs)[16],
                uint8_t (*srcs)[16], uint16_t *ports, int n, int *errs) {
    struct mmsghdr msgs[DP_BATCH];
    struct iovec iov[DP_BATCH];
    dp_sockaddr sa[DP_BATCH];
    union { char buf[DP_PKTINFO_SPACE]; struct cmsghdr align; } ctrl[DP_BATCH];
    size_t len;
    int i, sent = 0, ok = 0, r, retried = -1;
    if (n > DP_BATCH) n = DP_BATCH;
    memset(msgs, 0, sizeof(struct mmsghdr) * n);
    memset(errs, 0, sizeof(int) * n);
    for (i = 0; i < n; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = lens[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &sa[i];
        msgs[i].msg_hdr.msg_namelen = dp_address(&sa[i], family, addrs[i], ports[i]);
        memset(&ctrl[i], 0, sizeof(ctrl[i]));
        len = dp_pktinfo((struct cmsghdr *)ctrl[i].buf, family, srcs ? srcs[i] : NULL);
        if (len) {
            msgs[i].msg_hdr.msg_control = ctrl[i].buf;
            msgs[i].msg_hdr.msg_controllen = len;
        }
    }
    while (sent < n) {
        r = sendmmsg(fd, msgs + sent, n - sent, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == ENOBUFS) {
                dp_wait_writable(fd);
                continue;
            }
            /* With IP_RECVERR an ICMP error about an earlier datagram also fails the socket's
               next send, once (sk_err): a refused datagram is tried once more. */
            if (retried != sent) {
                retried = sent;
                continue;
            }
            errs[sent++] = errno;   /* skip the datagram refused (e.g. EMSGSIZE): counted */
            continue;
        }
        sent += r;
        ok += r;
    }
    return ok;
}

/* One sendmsg() with UDP_SEGMENT: n datagrams of lens[0] bytes (the last may be shorter). */
static int dp_send_gso(int fd, int family, uint8_t **bufs, uint32_t *lens, int n,
                       const uint8_t *addr, const uint8_t *src, uint16_t port) {
    struct msghdr m;
    struct iovec iov[DP_BATCH];
    dp_sockaddr sa;
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t)) + DP_PKTINFO_SPACE];
        struct cmsghdr align;
    } ctrl;
    struct cmsghdr *cm;
    int i;
    memset(&m, 0, sizeof(m));
    memset(&ctrl, 0, sizeof(ctrl));
    for (i = 0; i < n; i++) { iov[i].iov_base = bufs[i]; iov[i].iov_len = lens[i]; }
    m.msg_namelen = dp_address(&sa, family, addr, port);
    m.msg_name = &sa;
    m.msg_iov = iov;
    m.msg_iovlen = n;
    m.msg_control = ctrl.buf;
    m.msg_controllen = sizeof(ctrl.buf);
    cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    *(uint16_t *)CMSG_DATA(cm) = (uint16_t)lens[0];
    m.msg_controllen = CMSG_SPACE(sizeof(uint16_t)) +
        dp_pktinfo((struct cmsghdr *)(ctrl.buf + CMSG_SPACE(sizeof(uint16_t))), family, src);
    for (;;) {
        if (sendmsg(fd, &m, 0) >= 0) return 0;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == ENOBUFS) {
            dp_wait_writable(fd);
            continue;
        }
        return -errno;
    }
}

/* Send a run of datagrams: equal-sized ones to one peer together (GSO), others with
   sendmmsg(); what GSO refuses goes out one by one. *gso drops to 0 for good if the kernel or
   the device cannot do it at all. */
int dp_sendrun(int fd, int family, uint8_t **bufs, uint32_t *lens, uint8_t (*addrs)[16],
               uint8_t (*srcs)[16], uint16_t *ports, int n, int *gso, int *errs) {
    int i = 0, j, r, ok = 0;
    uint32_t total;
    while (i < n) {
        j = i + 1;
        total = lens[i];
        while (*gso && j < n && j - i < DP_BATCH && ports[j] == ports[i]
               && memcmp(addrs[j], addrs[i], 16) == 0 && memcmp(srcs[j], srcs[i], 16) == 0
               && lens[j] <= lens[i]
               && total + lens[j] <= DP_GSO_MAX) {
            total += lens[j];
            j++;
            if (lens[j - 1] < lens[i]) break;      /* only the last may be shorter */
        }
        if (j - i >= 2) {
            r = dp_send_gso(fd, family, bufs + i, lens + i, j - i, addrs[i], srcs[i], ports[i]);
            if (r == 0) {
                memset(errs + i, 0, sizeof(int) * (j - i));
                ok += j - i;
                i = j;
                continue;
            }
            /* EIO: the device cannot checksum (wireguard-go's test); the others: no GSO in
               this kernel. EINVAL (e.g. datagrams over the path MTU) only for this run. */
            if (r == -EIO || r == -ENOPROTOOPT || r == -EOPNOTSUPP)
                *gso = 0;
        }
        ok += dp_sendmany(fd, family, bufs + i, lens + i, addrs + i, srcs + i, ports + i,
                          j - i, errs + i);
        i = j;
    }
    return ok;
}

void dp_udp_gro(int fd) {
    int one = 1;
    setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one));
}

/* recvmmsg() up to n datagrams; fills lengths, source (addr, port), destination (dsts, from
   IP_PKTINFO / IPV6_PKTINFO on a wildcard socket, else zero) and, for UDP GRO buffers holding
   several datagrams, their size (segs[i], else 0). */
int dp_recvmany(int fd, int family, uint8_t **bufs, size_t size, uint32_t *lens,
                uint8_t (*addrs)[16], uint8_t (*dsts)[16], uint16_t *ports, uint16_t *segs,
                int n) {
    struct mmsghdr msgs[DP_BATCH];
    struct iovec iov[DP_BATCH];
    dp_sockaddr sa[DP_BATCH];
    /* room for both: a truncated control buffer would lose the GRO size */
    union {
        char buf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct in6_pktinfo))];
        struct cmsghdr align;
    } ctrl[DP_BATCH];
    struct cmsghdr *cm;
    int i, r;
    if (n > DP_BATCH) n = DP_BATCH;
    memset(msgs, 0, sizeof(struct mmsghdr) * n);
    for (i = 0; i < n; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &sa[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(sa[i]);
        msgs[i].msg_hdr.msg_control = ctrl[i].buf;
        msgs[i].msg_hdr.msg_controllen = sizeof(ctrl[i].buf);
    }
    r = recvmmsg(fd, msgs, n, MSG_DONTWAIT, NULL);
    for (i = 0; i < r; i++) {
        lens[i] = msgs[i].msg_len;
        segs[i] = 0;
        memset(dsts[i], 0, 16);
        for (cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm; cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)) {
            if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO)
                segs[i] = (uint16_t)*(int *)CMSG_DATA(cm);
            else if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO)
                memcpy(dsts[i], &((struct in_pktinfo *)CMSG_DATA(cm))->ipi_addr, 4);
            else if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO)
                memcpy(dsts[i], &((struct in6_pktinfo *)CMSG_DATA(cm))->ipi6_addr, 16);
        }
        memset(addrs[i], 0, 16);
        if (family == 4) {
            memcpy(addrs[i], &sa[i].v4.sin_addr, 4);
            ports[i] = ntohs(sa[i].v4.sin_port);
        } else {
            memcpy(addrs[i], &sa[i].v6.sin6_addr, 16);
            ports[i] = ntohs(sa[i].v6.sin6_port);
        }
    }
    return r;
}

/* Deep socket buffers: a burst the loop has not drained yet must not be dropped, or TCP inside
   the tunnel takes it for congestion. FORCE variants need CAP_NET_ADMIN. */
void dp_deepen(int fd, int bytes) {
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
}

/* IP_RECVERR / IPV6_RECVERR: ICMP errors about what the socket sent (and the kernel's own)
   are queued for dp_recverr(), so oe learns the path MTU to its peers (RFC 1191, RFC 8201). */
void dp_recverr_on(int fd, int family) {
    int one = 1;
    if (family == 4)
        setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof(one));
    else
        setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &one, sizeof(one));
}

/* Take one error from the socket's error queue. 1: a datagram of ours to *dst was too big,
   the MTU named in *mtu, *local if the kernel itself said so (else an ICMP), the first four
   bytes of the datagram (an SPI) in *spi (0 for the kernel's own, which quotes nothing);
   -1: an error about something else; 0: none left. */
int dp_recverr(int fd, int family, uint8_t *dst, uint32_t *spi, uint32_t *mtu, int *local) {
    uint8_t data[16];
    union { char buf[512]; struct cmsghdr align; } ctrl;
    dp_sockaddr sa;
    struct iovec iov = { data, sizeof(data) };
    struct msghdr m;
    struct cmsghdr *cm;
    struct sock_extended_err *ee = NULL;
    ssize_t r;
    memset(&m, 0, sizeof(m));
    m.msg_name = &sa;
    m.msg_namelen = sizeof(sa);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctrl.buf;
    m.msg_controllen = sizeof(ctrl.buf);
    r = recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT);
    if (r < 0) return 0;
    for (cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm))
        if ((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_RECVERR)
            || (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_RECVERR))
            ee = (struct sock_extended_err *)CMSG_DATA(cm);
    if (ee == NULL || ee->ee_errno != EMSGSIZE) return -1;
    *local = ee->ee_origin == SO_EE_ORIGIN_LOCAL;
    if (r < 4 && !*local) return -1;
    *mtu = ee->ee_info;
    *spi = r < 4 ? 0 : ((uint32_t)data[0] << 24) | ((uint32_t)data[1] << 16)
                       | ((uint32_t)data[2] << 8) | data[3];
    memset(dst, 0, 16);
    if (family == 4) memcpy(dst, &sa.v4.sin_addr, 4);
    else memcpy(dst, &sa.v6.sin6_addr, 16);
    return 1;
}

/* Wait for any of n fds to be readable; sets bit i of *ready for fd i, and of *errs if its
   error queue holds something. */
int dp_wait(int *fds, int n, int timeout_ms, unsigned *ready, unsigned *errs) {
    struct pollfd p[8];
    int i, r;
    for (i = 0; i < n; i++) { p[i].fd = fds[i]; p[i].events = POLLIN; p[i].revents = 0; }
    r = poll(p, n, timeout_ms);
    *ready = 0;
    *errs = 0;
    for (i = 0; i < n && r > 0; i++) {
        if (p[i].revents & (POLLIN | POLLERR | POLLHUP)) *ready |= 1u << i;
        if (p[i].revents & POLLERR) *errs |= 1u << i;
    }
    return r;
}
