"""Sockets and netlink: the only network I/O outside the datapath's loops."""

from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute

# Documentation addresses (RFC 5737, RFC 3849): connecting a UDP socket to one sends nothing,
# it only makes the kernel pick the source address it would use on the default route.
_PROBE = {4: ("203.0.113.1", socket.AF_INET), 6: ("2001:db8::1", socket.AF_INET6)}


def default_source(version: int) -> str | None:
    """The address this host would send from on its default route, or None if it has none."""
    address, family = _PROBE[version]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((address, 9))
        except OSError:
            return None
        return sock.getsockname()[0]


def udp_socket(family: int, address: str, port: int, mark: int) -> socket.socket:
    """A non-blocking UDP socket bound to address:port whose packets carry the bypass mark."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.bind((address, port))
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


def interface_names(exclude: str = "") -> list[str]:
    """Names of the host's interfaces, loopback and `exclude` left out."""
    return [name for _, name in socket.if_nameindex() if name not in ("lo", exclude)]


def host_addresses(configured: tuple[str, ...], exclude: str = "") -> dict[int, str]:
    """This host's address per family (4, 6): as configured, else the default route's source,
    else the first global-scope address on an interface other than `exclude`."""
    found: dict[int, str] = {}
    for text in configured:
        found.setdefault(ipaddress.ip_address(text).version, text)
    for version in (4, 6):
        if version not in found and (source := default_source(version)) is not None:
            found[version] = source
    if len(found) < 2:
        with IPRoute() as ipr:
            skip = set(ipr.link_lookup(ifname=exclude)) if exclude else set()
            for message in ipr.get_addr():
                address = message.get_attr("IFA_ADDRESS")
                if message["scope"] != 0 or message["index"] in skip or address is None:
                    continue
                found.setdefault(ipaddress.ip_address(address).version, address)
    return found


def address_mtu(address: str, default: int = 1500) -> int:
    """The MTU of the interface that holds `address` (the path MTU we can know of)."""
    with IPRoute() as ipr:
        for message in ipr.get_addr(address=address):
            for link in ipr.get_links(message["index"]):
                return link.get_attr("IFLA_MTU") or default
    return default


# issue 17: the start of an SA's path MTU
IP_MTU, IPV6_MTU = 14, 24       # linux/in.h, linux/in6.h: the connected route's path MTU
MAX_MTU = 65535


def route_mtu(peer: str, mark: int, default: int = 1500) -> int:
    """The path MTU the kernel has for the route our ESP to `peer` takes (the bypass `mark`
    skips oe's own table): the interface's MTU, or less if the kernel learned it. No packet is
    sent (a connected UDP socket only looks the route up); `default` if there is no route."""
    address = ipaddress.ip_address(peer)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
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
