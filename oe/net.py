"""Sockets and netlink: the only network I/O outside the datapath's loops."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from typing import Iterable

from pyroute2 import IPRoute

# Documentation addresses (RFC 5737, RFC 3849): connecting a UDP socket to one sends nothing,
# it only makes the kernel pick the source address it would use on the default route.
_PROBE = {4: ("203.0.113.1", socket.AF_INET), 6: ("2001:db8::1", socket.AF_INET6)}


def default_source(version: int) -> str | None:
    """The address this host would send from on its default route, or None if it has none."""
    return route_source(_PROBE[version][0])


def route_source(dst: str, mark: int | None = None) -> str | None:
    """The source address the kernel picks for a packet to `dst` (`ip route get`), routed as
    oe's own packets are when `mark` is the bypass mark; None without a route."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            if mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            sock.connect((dst, 9))
        except OSError:
            return None
        return sock.getsockname()[0]


# RFC 3542 6.1 and Linux's IP_PKTINFO (linux/in.h): the destination of each datagram received
# on a wildcard socket, and the source address of each one sent
IP_PKTINFO = 8
WILDCARD = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


def udp_socket(family: int, address: str | None, port: int, mark: int | None) -> socket.socket:
    """A non-blocking UDP socket bound to address:port whose packets carry the bypass mark.
    `address` None binds every address of the family (IPv6 only, for IPv6) and asks for
    packet info: recvmsg() names each datagram's destination (`pktinfo_address`), sendmsg()
    takes our source (`pktinfo`)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if address is None and family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        elif address is None:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((WILDCARD[family] if address is None else address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def raw_socket(family: int, proto: int, mark: int) -> socket.socket:
    """A non-blocking raw socket (ESP: protocol 50; clear: IPPROTO_RAW) with the bypass mark."""
    sock = socket.socket(family, socket.SOCK_RAW, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


PKTINFO_SPACE = socket.CMSG_SPACE(20)  # struct in6_pktinfo, the larger of the two


def pktinfo(source: str) -> list[tuple[int, int, bytes]]:
    """sendmsg()'s ancillary data sending from our address `source` (in_pktinfo.ipi_spec_dst,
    in6_pktinfo.ipi6_addr)."""
    packed = ipaddress.ip_address(source).packed
    if len(packed) == 4:
        return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, packed, bytes(4)))]
    return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("=16sI", packed, 0))]


def pktinfo_address(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """The destination address recvmsg()'s packet info names (the IP header's), or None."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return str(ipaddress.IPv4Address(data[8:12]))
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            return str(ipaddress.IPv6Address(data[:16]))
    return None


def interface_names(exclude: str = "") -> list[str]:
    """Names of the host's interfaces, loopback and `exclude` left out."""
    return [name for _, name in socket.if_nameindex() if name not in ("lo", exclude)]


# linux/if_addr.h: addresses oe does not answer on. Temporary ones (RFC 8981) have no reverse
# record; deprecated, tentative and failed ones must not be a new exchange's source.
IFA_F_TEMPORARY, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE = 0x01, 0x08, 0x20, 0x40
_UNUSABLE = IFA_F_TEMPORARY | IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE


def host_addresses(configured: tuple[str, ...], exclude: str = "") -> dict[int, tuple[str, ...]]:
    """This host's addresses per family (4, 6): as configured, else every global-scope
    address on an interface other than `exclude` but the unusable ones, in one netlink dump."""
    if configured:
        texts = [str(ipaddress.ip_address(t)) for t in configured]
    else:
        with IPRoute() as ipr:
            skip = set(ipr.link_lookup(ifname=exclude)) if exclude else set()
            texts = []
            for message in ipr.get_addr():
                address = message.get_attr("IFA_ADDRESS")
                flags = message.get_attr("IFA_FLAGS") or message["flags"]
                if message["scope"] == 0 and message["index"] not in skip and \
                        address is not None and not flags & _UNUSABLE:
                    texts.append(address)
    found: dict[int, tuple[str, ...]] = {}
    for text in dict.fromkeys(texts):
        version = ipaddress.ip_address(text).version
        found[version] = found.get(version, ()) + (text,)
    return found


def address_mtus(addresses: Iterable[str], default: int = 1500) -> dict[str, int]:
    """The MTU of the interface that holds each of `addresses` (the path MTU we can know of),
    from one dump of addresses and one of links."""
    wanted = {str(ipaddress.ip_address(a)) for a in addresses}
    with IPRoute() as ipr:
        mtus = {link["index"]: link.get_attr("IFLA_MTU") for link in ipr.get_links()}
        found = {}
        for message in ipr.get_addr():
            address = message.get_attr("IFA_ADDRESS")
            if address in wanted:
                found[address] = mtus.get(message["index"]) or default
    return {a: found.get(a, default) for a in wanted}


# issue 17: the start of an SA's path MTU
IP_MTU, IPV6_MTU = 14, 24       # linux/in.h, linux/in6.h: the connected route's path MTU
MAX_MTU = 65535


def route_mtu(peer: str, mark: int, default: int = 1500, local: str | None = None) -> int:
    """The path MTU the kernel has for the route our ESP to `peer` takes (the bypass `mark`
    skips oe's own table): the interface's MTU, or less if the kernel learned it. No packet is
    sent (a connected UDP socket only looks the route up); `default` if there is no route.
    `local`: our address the ESP leaves from, bound first, so the kernel does not choose a
    source (RFC 6724 selection walks every address of the host: issue 14's farm has 10,000)."""
    address = ipaddress.ip_address(peer)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            if local is not None:
                with contextlib.suppress(OSError):  # not ours (any more): the kernel chooses
                    sock.bind((str(local), 0))
            sock.connect((str(address), 9))
            if address.version == 4:
                mtu = sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
            else:
                mtu = sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
        except OSError:
            return default
    return min(mtu, MAX_MTU)        # loopback's 65536 is no IP packet size


# issue 13: the interfaces our clients are on (docs/gateway.md 2)
RT_TABLE_MAIN = 254  # linux/rtnetlink.h


def interfaces_for(subnets: tuple[str, ...], exclude: str = "") -> tuple[str, ...]:
    """The interfaces whose routes in the main table lead into `subnets` (connected, or via a
    router on the LAN), default routes and `exclude` (the TUN) left out; sorted by name."""
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        routes = [(f"{route.get_attr('RTA_DST')}/{route['dst_len']}", names.get(oif, ""))
                  for family in (socket.AF_INET, socket.AF_INET6)
                  for route in ipr.get_routes(family=family, table=RT_TABLE_MAIN)
                  if route["dst_len"] and (oif := route.get_attr("RTA_OIF")) is not None]
    return leading_into(routes, subnets, exclude)


def gateway_interfaces(subnets: tuple[str, ...], tun: str) -> tuple[tuple[str, ...], list[str]]:
    """(LAN, WAN) of a gateway: the interfaces leading into `subnets`, and all others but
    loopback and the TUN (docs/gateway.md 2.1: replies to the clients arrive there)."""
    lan = interfaces_for(subnets, tun)
    return lan, [name for name in interface_names(exclude=tun) if name not in lan]


def leading_into(routes, subnets: tuple[str, ...], exclude: str = "") -> tuple[str, ...]:
    """The interfaces of `routes` ((prefix, interface) pairs) whose prefix overlaps a subnet:
    a /64 link inside a /48 subnet counts, and so does a /16 route holding a /24 one."""
    networks = [ipaddress.ip_network(s) for s in subnets]
    found = set()
    for prefix, name in routes:
        route = ipaddress.ip_network(prefix, strict=False)
        if name and name != exclude and any(n.version == route.version and n.overlaps(route)
                                            for n in networks):
            found.add(name)
    return tuple(sorted(found))
