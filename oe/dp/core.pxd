# cython: language_level=3
# The state the loop threads and the Python API share (docs/architecture.md, section 4): the
# SAs, the holds, the event queue, the sockets and the global counters. Each part has its own
# lock; per packet the pipelines take them for as short as they can (pipeline.pxd).

from libc.stdint cimport uint32_t, uint64_t

from oe.dp.events cimport EventQueue
from oe.dp.holds cimport HoldTable
from oe.dp.sa cimport SaDb


cdef struct DpCore:
    EventQueue events
    SaDb sas
    HoldTable holds
    # configuration and loops
    uint64_t replay_window
    uint32_t tun_mtu
    int running
    int wake_fds[2]             # one eventfd per loop thread: stop, hold recheck
    int tun_fd
    int vnet                    # the TUN carries a virtio_net_hdr (offloads on)
    int udp_gso                 # send runs of ESP-in-UDP with UDP_SEGMENT
    int fds[6]                  # udp4, udp6, esp4, esp6, pass4, pass6 (-1: absent)
    double last_sweep
    uint64_t counters[64]
