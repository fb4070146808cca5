"""Address policy: which hosts and IP addresses media and webhook URLs may reach.

Pure functions plus one DNS lookup (:func:`resolve`). The connection side, which makes sure we
connect to exactly the address that was checked, lives in :mod:`storage.netguard`.

Policy (``allow_private=False``, the default): refuse loopback, private (RFC 1918, ULA fc00::/7),
link-local, CGNAT 100.64.0.0/10, reserved and otherwise non-global ranges, plus IPv6 forms that
embed such an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 64:ff9b::/96, 6to4 2002::/16).
Some are refused even with ``allow_private=True`` because nothing legitimate needs them and they
are classic SSRF targets: cloud metadata endpoints (by address and by name), the unspecified
address (0.0.0.0 / :: reach the local host on Linux) and multicast.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from storage.errors import MediaNotFound, TransientError, UrlNotAllowed

IPAddress = IPv4Address | IPv6Address
Resolver = Callable[[str, int], list[IPAddress]]

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",
        "100.100.100.200",  # Alibaba Cloud
    )
)
METADATA_NAMES = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)
_CGNAT = IPv4Network("100.64.0.0/10")
_NAT64 = IPv6Network("64:ff9b::/96")
_IPV4_COMPAT = IPv6Network("::/96")


def _embedded_v4(ip: IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for, when it is one of the embedding forms."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "NAT64", IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip in _IPV4_COMPAT and int(ip) > 1:  # ::a.b.c.d (deprecated), not :: or ::1
        return "IPv4-compatible", IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify(ip: IPAddress) -> tuple[str, bool] | None:
    """Why an address is refused: ``(reason, always)``, or None for a public address.

    ``always`` means refused even when private addresses are allowed.
    """
    if isinstance(ip, IPv6Address):
        if ip.scope_id:
            return "scoped IPv6", True
        embedded = _embedded_v4(ip)
        if embedded is not None:
            form, v4 = embedded
            inner = classify(v4)
            if inner is not None:
                return f"{form} {inner[0]}", inner[1]
            if form in ("IPv4-mapped", "IPv4-compatible"):
                return None  # a plain public IPv4 address in IPv6 clothing
    if ip in METADATA_ADDRESSES:
        return "cloud metadata", True
    if ip.is_unspecified:
        return "unspecified", True
    if ip.is_multicast:
        return "multicast", True
    if ip.is_loopback:
        return "loopback", False
    if ip.is_link_local:
        return "link-local", False
    if isinstance(ip, IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT (100.64.0.0/10)", False
    if ip.is_reserved:
        return "reserved", False
    if ip.is_private or (isinstance(ip, IPv6Address) and ip.is_site_local):
        return "private", False
    if not ip.is_global:
        return "non-global", False
    return None


def address_problem(ip: IPAddress, *, allow_private: bool) -> str | None:
    """The reason ``ip`` may not be reached under this policy, or None when it may."""
    found = classify(ip)
    if found is None:
        return None
    reason, always = found
    return reason if (always or not allow_private) else None


def name_problem(host: str, *, allow_private: bool) -> str | None:
    """Refusals by name alone, before any DNS: metadata names always, localhost unless private
    addresses are allowed (RFC 6761 reserves ``localhost`` and ``*.localhost`` for loopback)."""
    h = host.lower().rstrip(".")
    if h in METADATA_NAMES:
        return "cloud metadata"
    if not allow_private and (h == "localhost" or h.endswith(".localhost")):
        return "loopback"
    return None


def parse_ipv4(host: str) -> IPv4Address | None:
    """An IPv4 address in any form the WHATWG URL parser (and C ``inet_aton``) accepts: dotted
    decimal, but also ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``.

    Returns None when ``host`` is a name (its last label is not numeric); raises ValueError when it
    looks numeric but is not a valid address (so it can't slip through as a "name").
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last = parts[-1].lower()
    if not (last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:]))):
        return None
    if not last.isascii():
        return None
    if len(parts) > 4:
        raise ValueError(f"{host!r} has too many parts for an IPv4 address")
    numbers: list[int] = []
    for part in parts:
        p = part.lower()
        if p == "":
            raise ValueError(f"{host!r} has an empty part")
        try:
            if p.startswith("0x"):
                n = int(p[2:] or "0", 16)
            elif len(p) > 1 and p.startswith("0"):
                n = int(p[1:], 8)
            else:
                n = int(p, 10) if p.isascii() and p.isdigit() else -1
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv4 address") from None
        if n < 0:
            raise ValueError(f"{host!r} is not a valid IPv4 address")
        numbers.append(n)
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host!r} is out of range for an IPv4 address")
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n << (8 * (3 - i))
    return IPv4Address(value)


def parse_ip_host(host: str) -> IPAddress | None:
    """The IP address a URL host denotes (``[::1]``, ``::1``, any IPv4 form), or None for a name.

    Raises ValueError for malformed literals (including IPv6 zone ids, which we never accept).
    """
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in h:
        if "%" in h:
            raise ValueError(f"IPv6 zone identifiers are not allowed ({host!r})")
        try:
            return IPv6Address(h)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    return parse_ipv4(h)


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """All addresses of ``host`` (A and AAAA, system order, no duplicates)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        if e.errno in (socket.EAI_AGAIN,):
            raise TransientError(f"DNS lookup of {host} failed temporarily: {e.strerror}") from e
        raise MediaNotFound(f"host {host} does not resolve: {e.strerror}") from e
    out: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in out:
            out.append(ip)
    if not out:
        raise MediaNotFound(f"host {host} has no addresses")
    return out


_HINT = "media and webhook URLs must reach public addresses (CAPTIONQ_ALLOW_PRIVATE_URLS allows private ones)"


def check_host(
    host: str, port: int, *, allow_private: bool, resolve: bool = True, resolver: Resolver | None = None
) -> list[IPAddress]:
    """Check ``host`` (a name or an IP literal) and return the addresses that may be used.

    A name is resolved once (when ``resolve``); if ANY of its addresses is refused the whole name
    is refused, since a name that mixes public and private addresses is a rebinding tool. Returns
    ``[]`` for an unresolved name (``resolve=False``). Raises :class:`UrlNotAllowed`.
    """
    try:
        ip = parse_ip_host(host)
    except ValueError as e:
        raise UrlNotAllowed(str(e)) from None
    if ip is not None:
        why = address_problem(ip, allow_private=allow_private)
        if why:
            raise UrlNotAllowed(f"{host} is not allowed ({why} address); {_HINT}")
        return [ip]
    why = name_problem(host, allow_private=allow_private)
    if why:
        raise UrlNotAllowed(f"host {host} is not allowed ({why} name); {_HINT}")
    if not resolve:
        return []
    addrs = (resolver or system_resolver)(host, port)
    for a in addrs:
        why = address_problem(a, allow_private=allow_private)
        if why:
            raise UrlNotAllowed(f"host {host} resolves to {a}, which is not allowed ({why} address); {_HINT}")
    return addrs
