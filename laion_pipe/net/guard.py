"""Which addresses the downloader may connect to, and whether a response opts out of AI use.

Why a guard: the URLs come from arbitrary web pages, so any of them can point at the machine
running the crawl (127.0.0.1), its private network, or a cloud metadata endpoint
(169.254.169.254). A check on the URL's host name is not enough: DNS can answer a public
address when checked and a private one when connected (rebinding), and redirects move the
request elsewhere. So the check is applied to the socket address that is actually connected
to, at every connection (`AddressGuard.check_sockaddr`, used by the HTTP client as its socket
factory), which covers every redirect hop and every DNS answer.

Opt-outs: `X-Robots-Tag` headers are read before the body (`opted_out`), with the same
user-agent scoping rules robots meta tags use (`X-Robots-Tag: otherbot: noai` only concerns
"otherbot").
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 prefixes that carry an IPv4 address in their last 32 bits and reach it through a
# translator: a public-looking IPv6 address here can still reach 127.0.0.1 behind a NAT64.
_NAT64_PREFIXES: tuple[ipaddress.IPv6Network, ...] = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # RFC 6052 well-known prefix
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # RFC 8215 local-use prefix
)


class BlockedAddress(OSError):
    """Raised instead of connecting to an address the guard refuses.

    An OSError so that HTTP clients treat it like any failed connection attempt (and try the
    next address of a host, if it has one)."""

    def __init__(self, address: str, why: str):
        super().__init__(f"refusing to connect to {address}: {why}")
        self.address = address
        self.why = why


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, 6to4, NAT64, IPv4-compatible)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    for net in _NAT64_PREFIXES:
        if ip in net:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    # Deprecated IPv4-compatible form ::a.b.c.d (not :: and not ::1).
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def non_public_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address, or None when it is.

    `is_global` alone is not enough: Python counts multicast (224.0.0.0/4, ff00::/8) and the
    NAT64 prefix as global."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            why = non_public_reason(inner)
            return f"embeds {inner} ({why})" if why else None
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    )
    for name, hit in checks:
        if hit:
            return name
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if not ip.is_global:
        return "not globally routable"
    return None


def _normalise(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (::ffff:a.b.c.d) is the IPv4 address for allow-list purposes."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class AddressGuard:
    """Refuses non-public addresses unless they fall in an explicit allow-list of CIDRs.

    `allow_cidrs` is the only way to reach loopback/private networks (the tests and the demo
    allow 127.0.0.1/32 and nothing else); `allow_all` turns the guard off entirely."""

    allow_cidrs: tuple[str, ...] = ()
    allow_all: bool = False
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nets = tuple(ipaddress.ip_network(c, strict=False) for c in self.allow_cidrs)
        object.__setattr__(self, "_networks", nets)

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str], allow_all: bool = False) -> AddressGuard:
        return cls(tuple(cidrs), allow_all)

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why connecting to `address` is refused, or None when it is allowed."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
        except ValueError:
            return "not an IP address"
        if self.allow_all:
            return None
        ip = _normalise(ip)
        if any(ip.version == net.version and ip in net for net in self._networks):
            return None
        return non_public_reason(ip)

    def allowed(self, address: str | IPAddress) -> bool:
        return self.refusal(address) is None

    def check(self, address: str | IPAddress) -> None:
        why = self.refusal(address)
        if why is not None:
            raise BlockedAddress(str(address), why)

    def check_sockaddr(self, sockaddr: tuple) -> None:
        """Check a socket address tuple ((host, port) or (host, port, flow, scope))."""
        self.check(sockaddr[0])


# --- X-Robots-Tag opt-outs ---------------------------------------------------------------

# Directives that take a value after a colon; "unavailable_after: 1 Jan 2030" names no agent.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def parse_robots_tag(value: str) -> tuple[str | None, list[str]]:
    """Split one X-Robots-Tag header value into (user agent or None, lower-cased directives).

    `"noai, noimageai"` -> (None, ["noai", "noimageai"]);
    `"googlebot: noindex"` -> ("googlebot", ["noindex"])."""
    agent: str | None = None
    rest = value
    head, sep, tail = value.partition(":")
    if sep:
        candidate = head.strip().lower()
        if candidate and "," not in candidate and " " not in candidate and candidate not in _VALUED_DIRECTIVES:
            agent, rest = candidate, tail
    directives = [d.strip().lower() for d in rest.split(",")]
    return agent, [d for d in directives if d]


def opted_out(header_values: Iterable[str], user_agent_token: str | None, tokens: Iterable[str]) -> str | None:
    """The opt-out directive that applies to us among X-Robots-Tag values, or None.

    A directive applies when its header names no user agent, or names ours (case-insensitive).
    Unparseable values are ignored rather than fatal: a broken header is not an opt-out."""
    wanted = {t.strip().lower() for t in tokens if t.strip()}
    if not wanted:
        return None
    me = user_agent_token.strip().lower() if user_agent_token else None
    for value in header_values:
        agent, directives = parse_robots_tag(value)
        if agent is not None and agent != me:
            continue
        for d in directives:
            if d in wanted:
                return d
    return None


def user_agent_token(user_agent: str) -> str:
    """The product token of a User-Agent string ("laion-pipe/0.1 (+url)" -> "laion-pipe"),
    which is the name sites use to address us in X-Robots-Tag."""
    first = user_agent.strip().split(" ", 1)[0] if user_agent.strip() else ""
    return first.split("/", 1)[0].lower()
