"""Classification of every way a call to Tinker can fail."""

import json
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import httpx
import pytest
from pydantic import ValidationError

from app.tinker.errors import FailedFuture, TinkerError, classify, retry_after_s
from app.tinker.types import TrainingRun

KEY = "tml-s3cr3tKey_0123456789"


def answer(
    status: int,
    body: object = None,
    headers: dict[str, str] | None = None,
    text: str | None = None,
) -> httpx.Response:
    request = httpx.Request("GET", "https://tinker.test/api/v1/training_runs/r")
    if text is not None:
        return httpx.Response(status, text=text, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, "bad_request", False),
        (401, "unauthorized", False),
        (402, "billing", False),
        (403, "forbidden", False),
        (404, "not_found", False),
        (408, "timeout", True),
        (409, "conflict", False),
        (410, "gone", False),
        (418, "client_error", False),
        (422, "invalid_request", False),
        (429, "rate_limited", True),
        (500, "server_error", True),
        (502, "server_error", True),
        (503, "server_error", True),
        (504, "server_error", True),
        (200, "bad_response", True),
        (302, "bad_response", True),
    ],
)
def test_statuses(status: int, code: str, retryable: bool) -> None:
    error = classify(answer(status), endpoint="get_training_run")

    assert (error.code, error.retryable, error.status) == (code, retryable, status)
    assert error.message.startswith(f"get_training_run: HTTP {status}")


@pytest.mark.parametrize(
    ("endpoint", "code", "retryable"),
    [
        ("retrieve_future", "future_expired", True),
        ("session_heartbeat", "session_gone", False),
        ("load_weights", "gone", False),
    ],
)
def test_a_410_means_what_the_endpoint_makes_it(
    endpoint: str, code: str, retryable: bool
) -> None:
    error = classify(answer(410), endpoint=endpoint)

    assert (error.code, error.retryable) == (code, retryable)


@pytest.mark.parametrize(
    ("status", "header", "retryable"),
    [
        (500, "false", False),
        (503, "FALSE", False),
        (400, "true", True),
        (409, "true", True),
        (429, "false", False),
        (500, "maybe", True),
        (400, "", False),
    ],
)
def test_x_should_retry_overrides_the_verdict_but_not_the_code(
    status: int, header: str, retryable: bool
) -> None:
    plain = classify(answer(status), endpoint="load_weights")
    error = classify(
        answer(status, headers={"x-should-retry": header}), endpoint="load_weights"
    )

    assert error.retryable is retryable
    assert error.code == plain.code


def test_a_rate_limit_carries_the_servers_hint() -> None:
    error = classify(
        answer(429, {"detail": "slow down"}, {"retry-after": "7"}),
        endpoint="load_weights",
    )

    assert error.code == "rate_limited"
    assert error.retry_after_s == 7.0
    assert "slow down" in error.message


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "Tue, 04 Mar 2025 12:00:10 GMT"}, 10.0),
        ({"retry-after": "Tue, 04 Mar 2025 11:59:00 GMT"}, 0.0),
        ({"retry-after": "whenever"}, None),
        ({"retry-after-ms": "nan", "retry-after": "inf"}, None),
        ({}, None),
    ],
)
def test_retry_after_hints(headers: dict[str, str], seconds: float | None) -> None:
    now = datetime(2025, 3, 4, 12, tzinfo=UTC).timestamp()

    assert retry_after_s(httpx.Headers(headers), now=now) == seconds


def test_an_http_date_hint_counts_from_now() -> None:
    later = datetime.now(UTC).timestamp() + 30
    header = format_datetime(datetime.fromtimestamp(later, UTC), usegmt=True)

    error = classify(answer(503, headers={"retry-after": header}), endpoint="x")

    assert error.retry_after_s is not None
    assert 25 < error.retry_after_s <= 30


def test_the_detail_of_fastapi_errors_is_in_the_message() -> None:
    text = classify(answer(404, {"detail": "run r not found"}), endpoint="e").message
    listed = classify(
        answer(422, {"detail": [{"loc": ["body", "path"], "msg": "missing"}]}),
        endpoint="e",
    ).message

    assert text.endswith(": run r not found")
    assert '"msg": "missing"' in listed


def test_a_non_json_error_body_is_quoted_shortly() -> None:
    error = classify(answer(502, text="<html>bad gateway</html>" * 100), endpoint="e")

    assert "<html>bad gateway</html>" in error.message
    assert len(error.message) < 600


def test_the_api_key_never_reaches_a_message() -> None:
    echoed = answer(
        401,
        {"detail": f"key {KEY} refused for https://tinker.test/x?key={KEY}"},
    )
    in_text = answer(500, text=f"upstream said {KEY}")
    in_exception = httpx.ConnectError(f"cannot reach https://tinker.test/?k={KEY}")
    in_future = FailedFuture(error=f"denied for {KEY}", category="user")

    for failure in (echoed, in_text, in_exception, in_future):
        error = classify(failure, endpoint="e", secrets=[KEY])
        assert KEY not in error.message
        assert KEY not in str(error)
        assert KEY not in json.dumps(error.to_dict())
        assert "[redacted]" in error.message


def test_keys_are_hidden_even_when_not_named() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    error = classify(
        answer(403, {"detail": f"no access for tml-otherKey99 or {jwt}"}),
        endpoint="e",
        secrets=[None, jwt],
    )

    assert "tml-otherKey99" not in error.message
    assert jwt not in error.message


def test_to_dict_gives_code_message_and_verdict() -> None:
    error = classify(answer(404, {"detail": "gone fishing"}), endpoint="e")

    assert error.to_dict() == {
        "code": "not_found",
        "message": "e: HTTP 404 Not Found: gone fishing",
        "retryable": False,
    }


def caused(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectError("refused"), "connection_error"),
        (httpx.RemoteProtocolError("peer closed"), "connection_error"),
        (httpx.ReadError("reset"), "connection_error"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.PoolTimeout("busy"), "timeout"),
        (TimeoutError(), "timeout"),
        (ConnectionResetError(), "connection_error"),
        (aiohttp.ServerDisconnectedError(), "connection_error"),
        (
            caused(httpx.ConnectTimeout("x"), aiohttp.ServerDisconnectedError()),
            "connection_error",
        ),
        (
            caused(httpx.ConnectTimeout("x"), aiohttp.ConnectionTimeoutError()),
            "timeout",
        ),
        (json.JSONDecodeError("Expecting value", "<html>", 0), "bad_response"),
    ],
)
def test_transport_failures_are_retryable(exc: Exception, code: str) -> None:
    error = classify(exc, endpoint="get_training_run")

    assert (error.code, error.retryable, error.status) == (code, True, None)
    assert error.message.startswith("get_training_run: ")


def test_a_body_that_does_not_validate_is_a_bad_response() -> None:
    response = answer(200, {"training_run_id": "r"})
    with pytest.raises(ValidationError) as caught:
        TrainingRun.model_validate_json(response.content)

    error = classify(caught.value, endpoint="get_training_run", response=response)

    assert (error.code, error.retryable, error.status) == ("bad_response", True, 200)
    assert "unexpected response body" in error.message
    assert "base_model" in error.message


@pytest.mark.parametrize(
    ("category", "retryable"), [("user", False), ("server", True), ("unknown", True)]
)
def test_a_failed_load_is_retryable_unless_the_users_fault(
    category: str, retryable: bool
) -> None:
    error = classify(
        FailedFuture(error="checkpoint expired", category=category),
        endpoint="retrieve_future",
    )

    assert (error.code, error.retryable) == ("load_failed", retryable)
    assert "checkpoint expired" in error.message


def test_a_classified_error_stays_as_it_is() -> None:
    original = TinkerError("timeout", "late", retryable=True)

    assert classify(original, endpoint="other") is original


def test_something_unforeseen_is_not_retried() -> None:
    error = classify(KeyError("surprise"), endpoint="e")

    assert (error.code, error.retryable) == ("unexpected", False)
