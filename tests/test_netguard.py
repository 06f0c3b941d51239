"""The private-address guard, proved: the pure rule over every kind of address, the resolver over real
local names, and the real fetcher refusing redirects into private and metadata addresses before any
connection is made.

Only the fixture server on 127.0.0.1 is ever contacted. Every connection attempt of the process is
recorded through the interpreter's audit hook (``socket.connect``), so "nothing was sent there" is an
observation, not an inference from timing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from server import FixtureServer

from aggregator.exceptions import FetchError, RefusedAddressError
from aggregator.fetch import (
    AddressRefused,
    Fetcher,
    FetchSettings,
    GuardedResolver,
    guarded_socket_factory,
)
from aggregator.netguard import refusal, unwrap

GLOBAL = "203.0.114.7"  # a global unicast address, only ever given to the pure functions
GLOBAL_NAT64 = "64:ff9b::cb00:7207"  # the same address through the NAT64 well-known prefix

# --- recording every connection attempt -----------------------------------------------------------

_connects: list[Any] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _connects is not None:
        _connects.append(args[1])


sys.addaudithook(_audit)


@pytest.fixture
def connects() -> Iterator[list[Any]]:
    """The addresses this test's sockets connect to, in order."""
    global _connects
    _connects = []
    try:
        yield _connects
    finally:
        _connects = None


def fetch(url: str, *, allow_private: bool, timeout: float = 3.0) -> Any:
    async def go() -> Any:
        async with Fetcher(FetchSettings(timeout=timeout, allow_private=allow_private)) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(go())


def refused(url: str, *, allow_private: bool) -> RefusedAddressError:
    with pytest.raises(RefusedAddressError) as info:
        fetch(url, allow_private=allow_private)
    return info.value


# --- the rule: private ranges are refused unless allowed ------------------------------------------

PRIVATE = {
    # IPv4: RFC 1918 edges, loopback, this-network, shared (CGN), benchmarking, reserved, broadcast
    "10.0.0.0": "private", "10.255.255.255": "private", "172.16.0.0": "private", "172.31.255.255": "private",
    "192.168.0.0": "private", "192.168.255.255": "private", "127.0.0.0": "loopback", "127.255.255.254": "loopback",
    "0.1.2.3": "private", "100.64.0.0": "private", "100.127.255.255": "private", "198.18.0.1": "private",
    "192.0.0.1": "private", "192.0.2.1": "private", "240.0.0.1": "private", "255.255.255.255": "private",
    # IPv6: loopback, unique local (fc00::/7), deprecated site-local, documentation
    "::1": "loopback", "fc00::": "private", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff": "private",
    "fec0::1": "private", "2001:db8::1": "private",
    # IPv4 inside IPv6: mapped, translated (SIIT), compatible, 6to4, NAT64, Teredo
    "::ffff:10.0.0.1": "private", "::ffff:7f00:1": "loopback", "::ffff:0:a00:1": "private",
    "::127.0.0.1": "loopback", "::10.0.0.1": "private", "2002:7f00:1::": "loopback", "2002:c0a8:101::": "private",
    "64:ff9b::7f00:1": "loopback", "64:ff9b::a00:1": "private", "64:ff9b::c0a8:101": "private",
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "loopback",  # Teredo, client 127.0.0.1
}
ALWAYS = {
    # metadata services (AWS, ECS, Alibaba, AWS over IPv6), however they are spelt
    "169.254.169.254": "metadata", "169.254.170.2": "metadata", "100.100.100.200": "metadata",
    "fd00:ec2::254": "metadata", "::ffff:169.254.169.254": "metadata", "::ffff:a9fe:a9fe": "metadata",
    "::ffff:0:a9fe:a9fe": "metadata", "::169.254.169.254": "metadata", "64:ff9b::a9fe:a9fe": "metadata",
    "2002:a9fe:a9fe::": "metadata", "2001:0:4136:e378:8000:63bf:5601:5601": "metadata",
    # link-local, in both families and wrapped
    "169.254.0.1": "link-local", "169.254.255.254": "link-local", "fe80::": "link-local",
    "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff": "link-local", "fe80::1%eth0": "link-local",
    "::ffff:169.254.1.1": "link-local", "64:ff9b::a9fe:101": "link-local", "2002:a9fe:101::": "link-local",
    # not unicast
    "0.0.0.0": "unicast", "::": "unicast", "224.0.0.1": "unicast", "239.255.255.250": "unicast",
    "ff02::1": "unicast", "ff05::1:3": "unicast", "::ffff:0.0.0.0": "unicast", "64:ff9b::e000:1": "unicast",
}
ALLOWED = [GLOBAL, "2a00:1:2::3", "172.15.255.255", "172.32.0.0", "100.63.255.255", "100.128.0.0",
           f"::ffff:{GLOBAL}", GLOBAL_NAT64, "2002:cb00:7207::"]


@pytest.mark.parametrize(("address", "reason"), PRIVATE.items())
def test_private_addresses_refused_unless_allowed(address: str, reason: str) -> None:
    why = refusal(address, allow_private=False)
    assert why is not None and reason in why, why
    assert refusal(address, allow_private=True) is None


@pytest.mark.parametrize(("address", "reason"), ALWAYS.items())
@pytest.mark.parametrize("allow_private", [False, True])
def test_metadata_link_local_and_non_unicast_always_refused(address: str, reason: str, allow_private: bool) -> None:
    why = refusal(address, allow_private=allow_private)
    assert why is not None and reason in why, why


@pytest.mark.parametrize("address", ALLOWED)
def test_global_unicast_allowed_in_any_spelling(address: str) -> None:
    assert refusal(address, allow_private=False) is None


def test_unwrap_finds_the_ipv4_address_in_each_embedding() -> None:
    inner = {"::ffff:10.1.2.3", "::ffff:0:a01:203", "::10.1.2.3", "64:ff9b::a01:203", "2002:a01:203::"}
    assert {str(unwrap(ipaddress.ip_address(a))) for a in inner} == {"10.1.2.3"}
    # the IPv6 loopback and unspecified addresses are not IPv4 0.0.0.1 and 0.0.0.0
    assert str(unwrap(ipaddress.ip_address("::1"))) == "::1"
    assert str(unwrap(ipaddress.ip_address("::"))) == "::"


# --- names: the resolver keeps only allowed addresses ---------------------------------------------


def resolve(host: str, *, allow_private: bool, family: socket.AddressFamily = socket.AF_INET) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        resolver = GuardedResolver(allow_private=allow_private)
        try:
            return await resolver.resolve(host, 80, family)
        finally:
            await resolver.close()

    return asyncio.run(go())


@pytest.mark.parametrize("host", ["localhost", "LocalHost", "127.1", "2130706433", "0x7f000001"])
def test_names_resolving_to_loopback_are_refused(host: str) -> None:
    with pytest.raises(AddressRefused) as info:
        resolve(host, allow_private=False)
    assert info.value.reason == "a loopback address"
    assert [entry["host"] for entry in resolve(host, allow_private=True)] == ["127.0.0.1"]


def test_resolver_refuses_every_family_of_localhost() -> None:
    with pytest.raises(AddressRefused):
        resolve("localhost", allow_private=False, family=socket.AF_UNSPEC)


class _Answers:
    """A name server answer for a name that cannot exist offline: one public and two private addresses."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        addresses = ("10.0.0.7", GLOBAL, "169.254.169.254")
        return [{"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0} for a in addresses]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(("allow_private", "kept"), [(False, [GLOBAL]), (True, ["10.0.0.7", GLOBAL])])
def test_a_name_with_mixed_answers_keeps_only_allowed_addresses(allow_private: bool, kept: list[str]) -> None:
    async def go() -> list[dict[str, Any]]:
        resolver = GuardedResolver(allow_private=allow_private)
        await resolver.close()
        resolver._inner = _Answers()
        return await resolver.resolve("mixed.test", 80)

    assert [entry["host"] for entry in asyncio.run(go())] == kept


@pytest.mark.parametrize("address", ["169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "0.0.0.0"])
def test_socket_factory_refuses_before_a_socket_exists(address: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    create = guarded_socket_factory(allow_private=True)
    with pytest.raises(AddressRefused):
        create((family, socket.SOCK_STREAM, 6, "", (address, 80)))


# --- the real fetcher: names and spellings of 127.0.0.1 -------------------------------------------


@pytest.mark.parametrize(
    "host", ["localhost", "LocalHost", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]"]
)
def test_fetching_loopback_by_any_name_is_refused_and_sends_nothing(http: FixtureServer, connects, host: str) -> None:
    http.route("/feed", body=b"<rss/>")
    error = refused(f"http://{host}:{http.port}/feed", allow_private=False)
    assert "loopback" in str(error)
    assert connects == [] and http.requests == []


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "0177.0.0.1"])
def test_legacy_spellings_of_loopback_fail_and_send_nothing(http: FixtureServer, connects, host: str) -> None:
    """Forms inet_aton accepts are no way around the guard: refused by it, or rejected as no valid address."""
    http.route("/feed", body=b"<rss/>")
    with pytest.raises(FetchError) as info:
        fetch(f"http://{host}:{http.port}/feed", allow_private=False)
    assert isinstance(info.value, RefusedAddressError) or "address" in str(info.value), str(info.value)
    assert connects == [] and http.requests == []


def test_the_same_fetch_with_private_allowed_connects(http: FixtureServer, connects) -> None:
    """The recording works: an allowed fetch shows up as a connection and a request."""
    http.route("/feed", body=b"<rss/>")
    assert fetch(f"http://localhost:{http.port}/feed", allow_private=True).body == b"<rss/>"
    assert connects == [("127.0.0.1", http.port)] and http.hits("/feed") == 1


# --- redirects out of 127.0.0.1 into places that are always refused --------------------------------

REDIRECT_TARGETS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://100.100.100.200/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "http://[::ffff:0:a9fe:a9fe]/latest/meta-data/",
    "http://[2002:a9fe:a9fe::]/latest/meta-data/",
    "http://169.254.1.1/",
    "http://[fe80::1%25lo]/",
    "http://224.0.0.1/",
]


@pytest.mark.parametrize("target", REDIRECT_TARGETS)
def test_redirect_into_metadata_or_link_local_is_refused_before_connecting(
    http: FixtureServer, connects, target: str
) -> None:
    http.route("/start", redirect="/hop", status=302)
    http.route("/hop", redirect=target, status=307)
    error = refused(http.url("/start"), allow_private=True)
    assert any(word in str(error) for word in ("metadata", "link-local", "unicast")), str(error)
    assert http.hits("/start") == 1 and http.hits("/hop") == 1
    assert {address[0] for address in connects} == {"127.0.0.1"}, connects


@pytest.mark.parametrize("host", ["0.0.0.0", "[::ffff:0.0.0.0]"])
def test_redirect_to_the_unspecified_address_never_reaches_the_local_server(
    http: FixtureServer, connects, host: str
) -> None:
    """On Linux, connecting to 0.0.0.0 reaches 127.0.0.1: here a guard failure would be a request to /secret."""
    http.route("/start", redirect=f"http://{host}:{http.port}/secret", status=302)
    http.route("/secret", body=b"internal")
    error = refused(http.url("/start"), allow_private=True)
    assert "unicast" in str(error)
    assert http.hits("/secret") == 0
    assert connects == [("127.0.0.1", http.port)]

