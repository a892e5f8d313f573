"""Webhook targets: non-public addresses refused unless allowed."""

from __future__ import annotations

import ipaddress

import pytest

from app.webhooks import targets
from app.webhooks.targets import (
    IPAddress,
    WebhookRefused,
    check_url_literal,
    redact_url,
    resolve_and_check,
    url_secrets,
)

REFUSED = [
    "http://10.1.2.3/hook",
    "http://192.168.1.20:8080/hook",
    "http://172.16.0.1/",
    "http://127.0.0.1:9000/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0.0.0.0/",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/",
    "http://240.0.0.1/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[fe80::1]/",
    "http://[fd12:3456::1]/",
    "http://localhost/",
    "http://LOCALHOST.:8000/",
    "http://hooks.localhost/",
    "https://user:pw@10.0.0.1/x?token=t",
]
ALLOWED = [
    "https://example.com/hooks/recovery",
    "http://8.8.8.8/",
    "http://93.184.216.34:8080/x?y=1",
    "https://[2606:4700:4700::1111]/",
    "https://hooks.example.org./",
    "https://face.cafe/",
]
MALFORMED = ["not a url", "ftp://example.com/", "http:///path", "http://host:99999/"]


@pytest.mark.parametrize("url", REFUSED)
def test_literal_non_public_hosts_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="RECOVERY_WEBHOOK_ALLOW_PRIVATE"):
        check_url_literal(url, allow_private=False)


@pytest.mark.parametrize("url", REFUSED)
def test_allow_private_lets_them_through(url: str) -> None:
    check_url_literal(url, allow_private=True)


@pytest.mark.parametrize("url", ALLOWED)
def test_public_addresses_and_names_pass(url: str) -> None:
    check_url_literal(url, allow_private=False)


@pytest.mark.parametrize("url", MALFORMED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_malformed_urls_are_refused(url: str, allow_private: bool) -> None:
    with pytest.raises(ValueError):
        check_url_literal(url, allow_private=allow_private)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A resolver answering from a table; asked names are recorded under '?'."""
    table: dict[str, list[str]] = {"?": []}

    async def lookup(host: str) -> list[IPAddress]:
        table["?"].append(host)
        return [ipaddress.ip_address(a) for a in table[host]]

    monkeypatch.setattr(targets, "lookup", lookup)
    return table


async def test_a_name_resolving_to_a_private_address_is_refused(
    dns: dict[str, list[str]],
) -> None:
    dns["rebound.example.com"] = ["93.184.216.34", "10.0.0.7"]
    with pytest.raises(WebhookRefused, match=r"10\.0\.0\.7"):
        await resolve_and_check("https://rebound.example.com/h", allow_private=False)


async def test_a_name_resolving_to_public_addresses_passes(
    dns: dict[str, list[str]],
) -> None:
    dns["hooks.example.com"] = ["93.184.216.34", "2606:2800:220:1::1"]
    await resolve_and_check("https://hooks.example.com/h", allow_private=False)
    assert dns["?"] == ["hooks.example.com"]


async def test_literals_and_local_names_are_refused_without_a_lookup(
    dns: dict[str, list[str]],
) -> None:
    for url in ("http://127.0.0.1/", "http://localhost/", "http://[::1]/"):
        with pytest.raises(WebhookRefused):
            await resolve_and_check(url, allow_private=False)
    assert dns["?"] == []


async def test_allow_private_skips_the_lookup(dns: dict[str, list[str]]) -> None:
    await resolve_and_check("http://internal.example/", allow_private=True)
    assert dns["?"] == []


async def test_the_real_resolver_is_used_for_names() -> None:
    with pytest.raises(WebhookRefused):
        await resolve_and_check("http://localhost./", allow_private=False)
    addresses = await targets.lookup("localhost")
    assert addresses and all(a.is_loopback for a in addresses)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://user:pw@example.com/a/b?token=x#f", "https://example.com/a/b"),
        ("http://example.com:8080/h", "http://example.com:8080/h"),
        ("http://[::1]:9/h?q", "http://[::1]:9/h"),
    ],
)
def test_redact_url_drops_credentials_and_query(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_url_secrets_name_credentials_query_and_fragment() -> None:
    url = "https://bot:s3cret@example.com/a?token=x#frag"
    assert url_secrets(url) == ["bot:s3cret", "token=x", "frag"]
    assert url_secrets("https://example.com/hooks/abc") == []
