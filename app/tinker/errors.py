"""One error type for everything that goes wrong talking to Tinker, and the
one function that decides what each failure means.

Every failure gets a stable `code` and a `retryable` verdict.

Retryable:
    connection_error    the connection failed or dropped
    timeout             no answer in time, or HTTP 408
    rate_limited        HTTP 429; `retry_after_s` carries the server's hint
    server_error        HTTP 5xx
    bad_response        a body that is not the JSON expected, or an odd status
    future_expired      HTTP 410 from retrieve_future: send the request again
    load_failed         a future that failed through no fault of the caller
Permanent:
    bad_request, unauthorized, billing, forbidden, not_found, conflict,
    invalid_request     HTTP 400, 401, 402, 403, 404, 409, 422
    load_failed         a future that failed with category `user`
    session_gone        HTTP 410 from session_heartbeat
    gone, client_error  any other 410 or 4xx

A response header `x-should-retry: true|false` overrides the verdict, as it
does for the official SDK. Messages carry Tinker's `detail` text, never a key.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Final

import aiohttp
import httpx
import pydantic

_BY_STATUS: Final = {
    400: ("bad_request", False),
    401: ("unauthorized", False),
    402: ("billing", False),
    403: ("forbidden", False),
    404: ("not_found", False),
    408: ("timeout", True),
    409: ("conflict", False),
    410: ("gone", False),
    422: ("invalid_request", False),
    429: ("rate_limited", True),
}

# A 410 means different things depending on what was asked.
_GONE_BY_ENDPOINT: Final = {
    "retrieve_future": ("future_expired", True),
    "session_heartbeat": ("session_gone", False),
}

# Tinker API keys; also hidden when the caller did not name the key.
_KEY_PATTERN: Final = re.compile(r"tml-[A-Za-z0-9_\-]+")
_REDACTED: Final = "[redacted]"
_DETAIL_LIMIT: Final = 500


class TinkerError(Exception):
    """A classified failure of a call to Tinker."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict[str, str | bool]:
        """Return the error as stored and shown: code, message, retryable."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


@dataclass(frozen=True)
class FailedFuture:
    """A future that Tinker reports as failed: `{"error": ..., "category": ...}`."""

    error: str
    category: str


Failure = httpx.Response | BaseException | FailedFuture


def classify(
    failure: Failure,
    *,
    endpoint: str,
    response: httpx.Response | None = None,
    secrets: Iterable[str | None] = (),
) -> TinkerError:
    """Turn any failure of a call to `endpoint` into a classified TinkerError.

    `response` is the response an exception came from, when there was one.
    Every text in `secrets` is removed from the message.
    """
    if isinstance(failure, TinkerError):
        return failure
    if isinstance(failure, httpx.Response):
        error = _from_response(failure, endpoint)
    elif isinstance(failure, FailedFuture):
        error = _from_failed_future(failure, endpoint)
    else:
        error = _from_exception(failure, endpoint, response)
    error.message = redact(error.message, secrets)
    error.args = (error.message,)
    return error


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return `text` without any of `secrets` nor anything shaped like a key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return _KEY_PATTERN.sub(_REDACTED, text)


def retry_after_s(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Read the server's wait hint in seconds (retry-after-ms, or retry-after)."""
    millis = _as_float(headers.get("retry-after-ms"))
    if millis is not None:
        return max(millis / 1000, 0.0)

    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _as_float(value)
    if seconds is None:
        seconds = _seconds_until(value, time.time() if now is None else now)
    return None if seconds is None else max(seconds, 0.0)


def _from_response(response: httpx.Response, endpoint: str) -> TinkerError:
    status = response.status_code
    code, retryable = _meaning_of_status(status, endpoint)
    override = response.headers.get("x-should-retry", "").lower()
    if override in ("true", "false"):
        retryable = override == "true"

    message = f"{endpoint}: HTTP {status} {response.reason_phrase}".rstrip()
    detail = _detail(response)
    if detail:
        message = f"{message}: {detail}"
    return TinkerError(
        code,
        message,
        retryable=retryable,
        status=status,
        retry_after_s=retry_after_s(response.headers),
    )


def _meaning_of_status(status: int, endpoint: str) -> tuple[str, bool]:
    if status == 410 and endpoint in _GONE_BY_ENDPOINT:
        return _GONE_BY_ENDPOINT[endpoint]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return "server_error", True
    if status >= 400:
        return "client_error", False
    # A success or redirect handed here is one the caller could not use.
    return "bad_response", True


def _from_failed_future(failure: FailedFuture, endpoint: str) -> TinkerError:
    message = f"{endpoint}: failed ({failure.category}): {failure.error}"
    return TinkerError("load_failed", message, retryable=failure.category != "user")


def _from_exception(
    exc: BaseException, endpoint: str, response: httpx.Response | None
) -> TinkerError:
    status = response.status_code if response is not None else None
    code, retryable = _meaning_of_exception(exc)
    message = f"{endpoint}: {_describe(exc)}"
    return TinkerError(code, message, retryable=retryable, status=status)


def _meaning_of_exception(exc: BaseException) -> tuple[str, bool]:
    if isinstance(exc, httpx.TimeoutException) and _aiohttp_disconnect(exc):
        return "connection_error", True
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout", True
    if isinstance(exc, httpx.TransportError | aiohttp.ClientError | OSError):
        return "connection_error", True
    if isinstance(exc, pydantic.ValidationError | ValueError | httpx.DecodingError):
        return "bad_response", True
    return "unexpected", False


def _aiohttp_disconnect(exc: BaseException) -> bool:
    # httpx-aiohttp maps every aiohttp connection error, a dropped connection
    # included, to httpx.ConnectTimeout; the aiohttp cause tells them apart.
    cause = exc.__cause__
    return isinstance(cause, aiohttp.ClientError) and not isinstance(
        cause, TimeoutError
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        count = exc.error_count()
        return f"unexpected response body ({count} errors): {where}: {first['msg']}"
    if isinstance(exc, json.JSONDecodeError):
        return f"response body is not JSON: {exc.msg}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:_DETAIL_LIMIT]
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        text = detail if isinstance(detail, str) else json.dumps(detail)
        return text[:_DETAIL_LIMIT]
    return ""


def _as_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _seconds_until(http_date: str, now: float) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp() - now
