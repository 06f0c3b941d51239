"""Which network addresses fetching may connect to. Pure decisions, no I/O."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}
# NAT64 (RFC 6052), IPv4-translated (RFC 2765, SIIT) and the deprecated IPv4-compatible addresses
_EMBEDDING_IPV4 = tuple(map(ipaddress.ip_network, ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96")))


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address inside a mapped, 6to4, Teredo, NAT64, translated or compatible IPv6 address, else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        teredo_client = address.teredo and address.teredo[1]
        inner = address.ipv4_mapped or address.sixtofour or teredo_client or _embedded(address)
        if inner:
            return inner
    return address


def _embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address in the last 32 bits of an address from ``_EMBEDDING_IPV4`` (not ``::`` or ``::1``)."""
    if int(address) > 1 and any(address in network for network in _EMBEDDING_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: str, *, allow_private: bool) -> str | None:
    """Why connecting to ``address`` is refused, or None when it is allowed."""
    ip = unwrap(ipaddress.ip_address(address.split("%", 1)[0]))
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast or ip.is_unspecified:
        return "not a unicast address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_private or ip.is_reserved or not ip.is_global or getattr(ip, "is_site_local", False):
        return "a private address"
    return None
