"""The address guard and X-Robots-Tag opt-out parsing (no network)."""
from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from laion_pipe.net.fetch import guarded_socket_factory
from laion_pipe.net.guard import AddressGuard, BlockedAddress, non_public_reason, opted_out, parse_robots_tag, user_agent_token

NON_PUBLIC = [
    "127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254",  # cloud metadata (link-local)
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0", "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1", "192.0.2.10", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 to loopback / metadata
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "::127.0.0.1",  # deprecated IPv4-compatible
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:81c::200e", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_addresses_are_refused(address):
    guard = AddressGuard()
    assert guard.refusal(address) is not None
    with pytest.raises(BlockedAddress) as e:
        guard.check(address)
    assert isinstance(e.value, OSError), "clients must see a refused address as a failed connection"


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address):
    assert AddressGuard().allowed(address)


def test_allow_list_opens_exactly_its_networks():
    guard = AddressGuard.from_cidrs(["127.0.0.1/32", "10.9.0.0/16"])
    assert guard.allowed("127.0.0.1")
    assert guard.allowed("::ffff:127.0.0.1"), "the mapped form of an allowed address is the same address"
    assert guard.allowed("10.9.200.1")
    for refused in ("127.0.0.2", "10.8.0.1", "169.254.169.254", "::1", "192.168.0.1"):
        assert not guard.allowed(refused), refused
    assert guard.allowed("8.8.8.8"), "the allow-list adds to the public internet, it does not replace it"


def test_allow_all_and_garbage():
    assert AddressGuard(allow_all=True).allowed("127.0.0.1")
    assert AddressGuard().refusal("not-an-ip") == "not an IP address"
    assert AddressGuard().allowed("fe80::1%eth0") is False


def test_socket_factory_refuses_before_connecting():
    factory = guarded_socket_factory(AddressGuard.from_cidrs(["127.0.0.1/32"]))
    with pytest.raises(BlockedAddress):
        factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", 80)))
    with pytest.raises(BlockedAddress):
        factory((socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 80, 0, 0)))
    sock = factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)))
    assert isinstance(sock, socket.socket)
    sock.close()


ipv4s = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)


@given(ipv4s)
def test_ipv6_wrappings_of_an_ipv4_address_get_its_verdict(ip):
    """IPv4-mapped and NAT64 forms reach the same IPv4 host, so they must get the same answer."""
    guard = AddressGuard()
    verdict = guard.allowed(str(ip))
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(ip))
    assert guard.allowed(str(mapped)) == verdict
    assert guard.allowed(str(nat64)) == verdict


@given(ipv4s)
def test_public_ipv4_means_globally_routable_unicast(ip):
    reason = non_public_reason(ip)
    if reason is None:
        assert ip.is_global and not ip.is_multicast and not ip.is_reserved


# --- X-Robots-Tag


@pytest.mark.parametrize(
    "value, agent, directives",
    [
        ("noai", None, ["noai"]),
        ("noindex, NoImageAI", None, ["noindex", "noimageai"]),
        ("googlebot: noindex", "googlebot", ["noindex"]),
        ("LAION-Pipe: noai, nofollow", "laion-pipe", ["noai", "nofollow"]),
        ("unavailable_after: 25 Jun 2030 15:00:00 PST", None, ["unavailable_after: 25 jun 2030 15:00:00 pst"]),
        ("max-image-preview: large", None, ["max-image-preview: large"]),
        ("", None, []),
    ],
)
def test_parse_robots_tag(value, agent, directives):
    assert parse_robots_tag(value) == (agent, directives)


def test_opt_out_scoping():
    tokens = ["noai", "noimageai"]
    assert opted_out(["noai"], "laion-pipe", tokens) == "noai"
    assert opted_out(["noindex", "noimageai"], "laion-pipe", tokens) == "noimageai", "any of several headers"
    assert opted_out(["otherbot: noai"], "laion-pipe", tokens) is None, "addressed to another agent"
    assert opted_out(["LAION-PIPE: NOAI"], "laion-pipe", tokens) == "noai", "addressed to us, any case"
    assert opted_out(["noindex, nofollow"], "laion-pipe", tokens) is None
    assert opted_out(["noai"], "laion-pipe", []) is None, "no tokens configured: nothing opts out"
    assert opted_out(["noindex"], "laion-pipe", ["NoIndex"]) == "noindex", "configurable list, case-insensitive"
    assert opted_out([], "laion-pipe", tokens) is None


def test_user_agent_token():
    assert user_agent_token("laion-pipe/0.1 (+https://github.com/laion-pipe)") == "laion-pipe"
    assert user_agent_token("MyCrawler") == "mycrawler"
    assert user_agent_token("") == ""
