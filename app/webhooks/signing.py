"""Signing webhook bodies so receivers can tell they came from this service."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Recovery-Signature"
SCHEME = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The `X-Recovery-Signature` value for `body`: `sha256=<hex HMAC>`."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return SCHEME + digest


def verify(body: bytes, secret: str, header: str | None) -> bool:
    """Whether `header` is the signature of `body` under `secret`."""
    if not header:
        return False
    # Compared in constant time so the response time leaks nothing about
    # how much of a forged signature was right.
    return hmac.compare_digest(
        sign(body, secret).encode("ascii"), header.strip().encode("utf-8")
    )
