"""Signatures: HMAC-SHA256 of the raw body, checked in constant time."""

from __future__ import annotations

import pytest

from app.webhooks.signing import sign, verify

BODY = b"The quick brown fox jumps over the lazy dog"
# The HMAC-SHA256 example that is published for this key and message.
KNOWN = "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


def test_sign_matches_the_published_example() -> None:
    assert sign(BODY, "key") == KNOWN


def test_verify_accepts_the_signature_of_the_same_body() -> None:
    assert verify(BODY, "key", KNOWN)
    assert verify(b'{"a":1}', "s3cret", sign(b'{"a":1}', "s3cret"))


@pytest.mark.parametrize(
    ("body", "secret", "header"),
    [
        (BODY + b" ", "key", KNOWN),
        (BODY, "other", KNOWN),
        (BODY, "key", None),
        (BODY, "key", ""),
        (BODY, "key", KNOWN.removeprefix("sha256=")),
        (BODY, "key", "sha1=" + KNOWN.removeprefix("sha256=")),
        (BODY, "key", KNOWN[:-1] + "0"),
        (BODY, "key", "sha256=é"),
    ],
)
def test_verify_rejects_anything_else(
    body: bytes, secret: str, header: str | None
) -> None:
    assert not verify(body, secret, header)
