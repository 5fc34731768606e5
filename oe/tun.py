"""The TUN device trapped traffic is routed into: the only TUN code (docs/architecture.md
section 2).

The device is opened without packet information (IFF_NO_PI). With offload (the default) every
read and write starts with a 10-byte virtio_net_hdr (IFF_VNET_HDR) and TCP segmentation is
left to the datapath (TUNSETOFFLOAD: TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6): a read may be one TCP
superframe of up to 64 KiB, which saves the kernel and the loops most of their per-packet work;
the datapath must then be started with vnet_hdr=True. The descriptor is non-blocking: the
loops poll() it.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from pyroute2 import IPRoute

from oe.errors import OeError

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
IFNAMSIZ = 16


class TunError(OeError):
    """The TUN device could not be created or configured."""


def open_tun(name: str, offload: bool = True) -> int:
    """Create (or attach to) TUN device `name`; a non-blocking, close-on-exec descriptor."""
    if not name or len(name.encode()) >= IFNAMSIZ:
        raise TunError(f"TUN device name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"cannot open /dev/net/tun: {exc.strerror}") from None
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        if offload:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError as exc:
        os.close(fd)
        raise TunError(f"cannot create TUN device {name}: {exc.strerror}") from None
    return fd


def set_up(name: str, mtu: int, txqlen: int = 1000) -> None:
    """Give the device its MTU (the path MTU minus the ESP overhead) and bring it up.

    txqlen: packets the kernel queues for the datapath to read before it drops (default 500).
    """
    # No IPv6 link-local address on the TUN: without one the kernel sends no router
    # solicitations or MLD reports into it, chatter that would only be trapped and dropped.
    try:
        Path(f"/proc/sys/net/ipv6/conf/{name}/addr_gen_mode").write_text("1")
    except OSError:
        pass  # no IPv6 on this host
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)
        if not index:
            raise TunError(f"no such device: {name}")
        ipr.link("set", index=index[0], mtu=mtu, txqlen=txqlen, state="up")
