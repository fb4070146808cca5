"""Address policy: literal addresses in every spelling, names, and resolution (tier 1)."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address

import pytest

from storage import StorageConfig, UrlNotAllowed, parse_media_url
from storage.addresses import address_problem, check_host, parse_ip_host, parse_ipv4

# url, refused by default (reason fragment or None), still refused with allow_private
CASES = [
    ("http://127.0.0.1/", "loopback", False),
    ("http://127.255.255.254:8080/x", "loopback", False),
    ("http://2130706433/", "loopback", False),  # decimal
    ("http://0x7f000001/", "loopback", False),  # hex
    ("http://0177.0.0.1/", "loopback", False),  # octal
    ("http://0x7f.1/", "loopback", False),  # mixed, shortened
    ("http://127.1/", "loopback", False),
    ("http://[::1]/", "loopback", False),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped loopback", False),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped loopback", False),
    ("http://[::ffff:10.0.0.1]/", "IPv4-mapped private", False),
    ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 cloud metadata", True),
    ("http://[2002:c0a8:0101::1]/", "6to4 private", False),
    ("http://10.1.2.3/", "private", False),
    ("http://172.16.0.1/", "private", False),
    ("http://192.168.1.1/", "private", False),
    ("http://100.64.0.1/", "carrier-grade NAT", False),
    ("http://100.127.255.254/", "carrier-grade NAT", False),
    ("http://169.254.1.1/", "link-local", False),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata", True),
    ("http://2852039166/", "cloud metadata", True),  # 169.254.169.254 in decimal
    ("http://[::ffff:169.254.169.254]/", "IPv4-mapped cloud metadata", True),
    ("http://[fd00:ec2::254]/", "cloud metadata", True),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata", True),
    ("http://METADATA.google.internal./", "cloud metadata", True),
    ("http://0.0.0.0/", "unspecified", True),
    ("http://0/", "unspecified", True),
    ("http://[::]/", "unspecified", True),
    ("http://224.0.0.1/", "multicast", True),
    ("http://[ff02::1]/", "multicast", True),
    ("http://[fe80::1]/", "link-local", False),
    ("http://[fc00::1]/", "private", False),
    ("http://[fd12:3456::1]/", "private", False),
    ("http://240.0.0.1/", "reserved", False),
    ("http://255.255.255.255/", "reserved", False),
    ("http://198.18.0.1/", "private", False),  # benchmarking range
    ("http://localhost/", "loopback", False),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "loopback", False),  # fullwidth digits
    ("http://127\u30020\u30020\u30021/", "loopback", False),  # ideographic full stops
    ("http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3/", "loopback", False),  # circled
    ("http://api.localhost:9000/", "loopback", False),
    ("http://8.8.8.8/", None, False),
    ("https://1.1.1.1:8443/x", None, False),
    ("http://134744072/", None, False),  # 8.8.8.8 in decimal
    ("http://[2606:4700:4700::1111]/", None, False),
    ("http://[::ffff:8.8.8.8]/", None, False),
    ("https://example.com/a.jpg", None, False),
]


@pytest.mark.parametrize(("url", "reason", "always"), CASES)
def test_address_policy(url: str, reason: str | None, always: bool) -> None:
    default, private_ok = StorageConfig(), StorageConfig(allow_private_urls=True)
    if reason is None:
        parse_media_url(url, default)
        return
    with pytest.raises(UrlNotAllowed) as e:
        parse_media_url(url, default)
    assert e.value.code == "url_not_allowed"
    assert f"({reason}" in e.value.message
    if always:
        with pytest.raises(UrlNotAllowed):
            parse_media_url(url, private_ok)
    else:
        parse_media_url(url, private_ok)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("0x", "0.0.0.0"),
        ("1.2.3.4.", "1.2.3.4"),
        ("4294967295", "255.255.255.255"),
    ],
)
def test_inet_aton_spellings(host: str, expected: str) -> None:
    assert parse_ipv4(host) == IPv4Address(expected)


@pytest.mark.parametrize("host", ["4294967296", "256.0.0.1", "1.2.3.4.5", "08.0.0.1", "1..2.3", "0xg.1"])
def test_numeric_looking_but_invalid(host: str) -> None:
    # The last label is numeric, so these are addresses or nothing: never a "name" that slips by.
    with pytest.raises(ValueError):
        parse_ipv4(host)


@pytest.mark.parametrize("host", ["example.com", "1.2.3.example", "0x7f.example", "ab12"])
def test_names_are_not_addresses(host: str) -> None:
    assert parse_ip_host(host) is None


def test_zone_ids_refused() -> None:
    with pytest.raises(ValueError, match="zone"):
        parse_ip_host("[fe80::1%eth0]")


def test_mixed_public_and_private_resolution_is_refused() -> None:
    """A name with one private address among public ones is a rebinding tool: refuse it."""
    answers = [ip_address("93.184.216.34"), ip_address("10.0.0.5")]
    with pytest.raises(UrlNotAllowed, match=r"resolves to 10\.0\.0\.5"):
        check_host("media.example.test", 443, allow_private=False, resolver=lambda h, p: answers)
    assert check_host("media.example.test", 443, allow_private=True, resolver=lambda h, p: answers) == answers


def test_door_check_can_resolve() -> None:
    cfg = StorageConfig()
    # Without resolve, a name is judged by name only; with it, by its addresses too.
    parsed = parse_media_url("https://cdn.example.test/a.png", cfg)
    assert parsed.url == "https://cdn.example.test/a.png"
    with pytest.raises(UrlNotAllowed, match=r"169\.254\.169\.254"):
        parse_media_url(
            "https://cdn.example.test/a.png",
            cfg,
            resolve=True,
            resolver=lambda h, p: [ip_address("169.254.169.254")],
        )


def test_real_dns_for_localhost_is_checked() -> None:
    with pytest.raises(UrlNotAllowed):
        check_host("localhost", 80, allow_private=False)
    addrs = check_host("localhost", 80, allow_private=True)
    assert all(a.is_loopback for a in addrs)


def test_address_problem_direct() -> None:
    assert address_problem(ip_address("8.8.4.4"), allow_private=False) is None
    assert address_problem(ip_address("10.0.0.1"), allow_private=True) is None
    assert address_problem(ip_address("169.254.169.254"), allow_private=True) == "cloud metadata"
