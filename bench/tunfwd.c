/* The floor for bench/rtt_floor.py: a TUN <-> UDP forwarder with no crypto, no batching and
   no lookups, the same wake-ups as oe's datapath (poll, then read; one thread per direction,
   or one for both).  Usage: tunfwd TUN LOCAL PEER 1|2  (IPv4, UDP port 4600). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int tun, udp;
static int inbound = 1;      /* one_way()'s argument: non-NULL reads the socket */

static void forward(int from, int to) {
    static __thread char buf[65536];
    ssize_t n = read(from, buf, sizeof buf);
    if (n > 0 && write(to, buf, (size_t)n) < 0)
        perror("write");
}

static void *one_way(void *arg) {
    int from = arg ? udp : tun, to = arg ? tun : udp;
    for (;;) {
        struct pollfd p = { from, POLLIN, 0 };
        if (poll(&p, 1, 500) > 0)
            forward(from, to);
    }
    return NULL;
}

static void both_ways(void) {
    for (;;) {
        struct pollfd p[2] = { { tun, POLLIN, 0 }, { udp, POLLIN, 0 } };
        poll(p, 2, 500);
        if (p[0].revents) forward(tun, udp);
        if (p[1].revents) forward(udp, tun);
    }
}

int main(int argc, char **argv) {
    struct ifreq ifr;
    struct sockaddr_in local = { AF_INET, htons(4600) }, peer = { AF_INET, htons(4600) };
    pthread_t out, in;
    if (argc != 5) { fprintf(stderr, "usage: tunfwd TUN LOCAL PEER 1|2\n"); return 2; }
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    tun = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (tun < 0 || ioctl(tun, TUNSETIFF, &ifr) < 0) { perror("tun"); return 1; }
    udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    inet_pton(AF_INET, argv[2], &local.sin_addr);
    inet_pton(AF_INET, argv[3], &peer.sin_addr);
    if (bind(udp, (void *)&local, sizeof local) || connect(udp, (void *)&peer, sizeof peer)) {
        perror("udp");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    if (argv[4][0] == '1')
        both_ways();
    pthread_create(&out, NULL, one_way, NULL);
    pthread_create(&in, NULL, one_way, &inbound);
    pthread_join(out, NULL);
    return 0;
}
