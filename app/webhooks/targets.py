"""Where webhooks may go: public addresses only, unless private ones are allowed.

A policy's URL is checked twice. When the policy is written, only what the URL
spells is judged (`check_url_literal`, no DNS), so a typo or a plain
`http://10.0.0.5/` is refused at once. At every delivery the host is resolved
and each address is judged again (`resolve_and_check`), because a name that
was public when the policy was written can later point inside the network.
The delivery then connects to an address that passed, not to a fresh lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("http", "https")
LOCAL_NAMES = frozenset(
    {"localhost", "ip6-localhost", "ip6-loopback", "localhost.localdomain"}
)
ALLOW_HINT = "set RECOVERY_WEBHOOK_ALLOW_PRIVATE=true to allow it"
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Resolvers also read IPv4 addresses spelled in decimal, octal, hex or with
# fewer dots (http://2130706433/ is 127.0.0.1); such hosts are judged as IPs.
NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")


class WebhookRefused(ValueError):
    """A webhook target that is, or resolves to, an address it may not reach."""


def url_host(url: str) -> str:
    """The host of an absolute http(s) URL, lowercased; ValueError otherwise."""
    parts = urlsplit(url)
    try:
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"malformed webhook URL: {exc}") from None
    if parts.scheme not in SCHEMES or not host:
        raise ValueError("webhook URLs must be absolute http:// or https:// URLs")
    return host.rstrip(".")


def parse_address(host: str) -> IPAddress | None:
    """The IP address `host` spells, in any form a resolver accepts, or None."""
    literal = host.split("%", 1)[0]
    try:
        return ipaddress.ip_address(literal)
    except ValueError:
        pass
    if not NUMERIC_HOST.fullmatch(literal):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(literal))
    except OSError:
        return None


def is_public(address: IPAddress) -> bool:
    """Whether `address` is a public unicast address of the internet."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address in NAT64:
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def check_url_literal(url: str, allow_private: bool) -> None:
    """Refuse a URL whose host is spelled as a local name or a non-public IP."""
    host = url_host(url)
    if allow_private:
        return
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        raise WebhookRefused(f"webhook target {host!r} is this machine; {ALLOW_HINT}")
    address = parse_address(host)
    if address is not None and not is_public(address):
        raise WebhookRefused(
            f"webhook target {host!r} is a loopback, private, link-local or "
            f"reserved address; {ALLOW_HINT}"
        )


async def resolve_and_check(url: str, allow_private: bool) -> None:
    """Refuse a URL whose host resolves to any address that is not public."""
    if allow_private:
        url_host(url)
        return
    await public_addresses(url)


async def public_addresses(url: str) -> list[IPAddress]:
    """The addresses `url`'s host resolves to, refused unless every one is public."""
    check_url_literal(url, allow_private=False)
    host = url_host(url)
    literal = parse_address(host)
    if literal is not None:
        return [literal]

    addresses = await lookup(host)
    if not addresses:
        raise OSError(f"{host!r} resolved to no address")
    for address in addresses:
        if not is_public(address):
            raise WebhookRefused(
                f"webhook target {host!r} resolves to the non-public address "
                f"{address}; {ALLOW_HINT}"
            )
    return addresses


async def lookup(host: str) -> list[IPAddress]:
    """Resolve `host` to its TCP addresses, in the resolver's order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host, None, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
    )
    addresses: list[IPAddress] = []
    for info in infos:
        address = parse_address(str(info[4][0]))
        if address is not None and address not in addresses:
            addresses.append(address)
    return addresses


def redact_url(url: str) -> str:
    """`url` without credentials, query or fragment, fit for events and logs."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def url_secrets(url: str) -> list[str]:
    """The parts of `url` that may be secret: credentials, query and fragment."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return [part for part in (userinfo, parts.query, parts.fragment) if part]
