"""The client against edge answers, mocked with pytest-httpx on httpx's own
transport: what goes on the wire, and how every odd answer is classified."""

import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from pytest_httpx import HTTPXMock

from app.tinker.client import DEFAULT_BASE_URL, TinkerClient
from app.tinker.errors import TinkerError
from app.tinker.types import Done, LoadResult, Pending

BASE = "https://tinker.test/services/tinker-prod"
API = f"{BASE}/api/v1"
KEY = "tml-edge-test-key-0123456789"
RUN = "5b0c3d7e-aaaa-bbbb-cccc-123456789abc:train:3"
CHECKPOINT = {
    "checkpoint_id": "weights/step-9",
    "checkpoint_type": "training",
    "time": "2025-03-01T12:00:00Z",
    "tinker_path": f"tinker://{RUN}/weights/step-9",
}
RUN_JSON = {
    "training_run_id": RUN,
    "base_model": "Qwen/Qwen3-8B",
    "model_owner": "someone",
    "is_lora": True,
    "corrupted": True,
    "lora_rank": 16,
    "last_request_time": "2025-03-01T12:30:00Z",
    "last_checkpoint": CHECKPOINT,
}


@pytest.fixture
async def client() -> AsyncIterator[TinkerClient]:
    tinker = TinkerClient(f"{BASE}/", KEY, use_aiohttp=False, timeout_s=2)
    async with tinker:
        yield tinker


async def failure(call: object) -> TinkerError:
    with pytest.raises(TinkerError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_reads_a_run_by_its_id_with_colons(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        method="GET", url=f"{API}/training_runs/{RUN}", json=RUN_JSON
    )

    run = await client.get_training_run(RUN)

    request = httpx_mock.get_request()
    assert request is not None
    assert (
        request.url.raw_path.decode()
        == f"/services/tinker-prod/api/v1/training_runs/{RUN}"
    )
    assert request.headers["X-API-Key"] == KEY
    assert request.headers["Accept"] == "application/json"
    assert "X-Idempotency-Key" not in request.headers
    assert run.corrupted is True
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.tinker_path == CHECKPOINT["tinker_path"]


async def test_lists_checkpoints(client: TinkerClient, httpx_mock: HTTPXMock) -> None:
    sampler = CHECKPOINT | {
        "checkpoint_id": "sampler_weights/s",
        "checkpoint_type": "sampler",
        "tinker_path": f"tinker://{RUN}/sampler_weights/s",
    }
    httpx_mock.add_response(
        url=f"{API}/training_runs/{RUN}/checkpoints",
        json={"checkpoints": [CHECKPOINT, sampler], "cursor": None},
    )

    checkpoints = await client.list_checkpoints(RUN)

    assert [c.checkpoint_type for c in checkpoints] == ["training", "sampler"]


async def test_creates_a_session_with_its_idempotency_key(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        method="POST", url=f"{API}/create_session", json={"session_id": "sess-1"}
    )

    session_id = await client.create_session(
        tags=["recovery"], user_metadata={"run": RUN}, idempotency_key="key-1"
    )

    request = httpx_mock.get_request()
    assert request is not None
    assert session_id == "sess-1"
    assert request.headers["X-Idempotency-Key"] == "key-1"
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.content)
    assert body["tags"] == ["recovery"]
    assert body["user_metadata"] == {"run": RUN}
    assert body["type"] == "create_session"
    assert body["sdk_version"]


async def test_sends_load_weights_as_the_protocol_says(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        url=f"{API}/load_weights", json={"request_id": "req-1", "model_id": "m"}
    )

    request_id = await client.load_weights(
        session_id="sess-1",
        model_seq_id=2,
        path=CHECKPOINT["tinker_path"],
        optimizer=False,
        idempotency_key="attempt-7",
    )

    request = httpx_mock.get_request()
    assert request is not None
    assert request_id == "req-1"
    assert request.headers["X-Idempotency-Key"] == "attempt-7"
    assert json.loads(request.content) == {
        "session_id": "sess-1",
        "model_seq_id": 2,
        "path": CHECKPOINT["tinker_path"],
        "optimizer": False,
        "type": "load_weights",
    }


async def test_no_idempotency_header_without_a_key(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=f"{API}/create_session", json={"session_id": "s"})

    await client.create_session(tags=[])

    request = httpx_mock.get_request()
    assert request is not None
    assert "X-Idempotency-Key" not in request.headers


async def test_heartbeat(client: TinkerClient, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{API}/session_heartbeat", json={"type": "x"})
    httpx_mock.add_response(
        url=f"{API}/session_heartbeat", status_code=410, json={"detail": "finished"}
    )

    assert await client.heartbeat("sess-1") is None
    gone = await failure(client.heartbeat("sess-1"))

    sent = httpx_mock.get_requests()[0]
    assert json.loads(sent.content) == {
        "session_id": "sess-1",
        "type": "session_heartbeat",
    }
    assert (gone.code, gone.retryable, gone.status) == ("session_gone", False, 410)
    assert "finished" in gone.message


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (
            {"type": "try_again", "request_id": "r", "queue_state": "paused_capacity"},
            Pending(queue_state="paused_capacity"),
        ),
        ({"type": "try_again", "request_id": "r"}, Pending(queue_state="unknown")),
        (
            {
                "type": "load_weights",
                "model_id": "s:train:0",
                "path": "tinker://a/weights/b",
            },
            Done(LoadResult(model_id="s:train:0", path="tinker://a/weights/b")),
        ),
        ({}, Done(LoadResult())),
    ],
)
async def test_retrieve_future_answers(
    client: TinkerClient,
    httpx_mock: HTTPXMock,
    answer: dict[str, str],
    outcome: object,
) -> None:
    httpx_mock.add_response(url=f"{API}/retrieve_future", json=answer)

    assert await client.retrieve_future("r") == outcome
    request = httpx_mock.get_request()
    assert request is not None
    assert json.loads(request.content)["request_id"] == "r"


@pytest.mark.parametrize(
    ("status", "headers"),
    [(408, {}), (500, {}), (502, {}), (503, {"retry-after": "1"})],
)
async def test_retrieve_future_takes_408_and_5xx_as_not_yet(
    client: TinkerClient, httpx_mock: HTTPXMock, status: int, headers: dict[str, str]
) -> None:
    httpx_mock.add_response(
        url=f"{API}/retrieve_future", status_code=status, headers=headers
    )

    assert await client.retrieve_future("r") == Pending(queue_state="unknown")


async def test_retrieve_future_obeys_a_server_that_says_do_not_retry(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        url=f"{API}/retrieve_future",
        status_code=500,
        headers={"x-should-retry": "false"},
        json={"detail": "request lost"},
    )

    error = await failure(client.retrieve_future("r"))

    assert (error.code, error.retryable) == ("server_error", False)


@pytest.mark.parametrize(
    ("status", "headers", "code", "retryable", "retry_after"),
    [
        (410, {}, "future_expired", True, None),
        (429, {"retry-after-ms": "50"}, "rate_limited", True, 0.05),
        (429, {"retry-after": "2"}, "rate_limited", True, 2.0),
        (404, {}, "not_found", False, None),
        (401, {}, "unauthorized", False, None),
    ],
)
async def test_retrieve_future_failures(
    client: TinkerClient,
    httpx_mock: HTTPXMock,
    status: int,
    headers: dict[str, str],
    code: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    httpx_mock.add_response(
        url=f"{API}/retrieve_future", status_code=status, headers=headers
    )

    error = await failure(client.retrieve_future("r"))

    assert (error.code, error.retryable, error.status) == (code, retryable, status)
    assert error.retry_after_s == retry_after


@pytest.mark.parametrize(("category", "retryable"), [("user", False), ("server", True)])
async def test_a_failed_future_raises_load_failed(
    client: TinkerClient, httpx_mock: HTTPXMock, category: str, retryable: bool
) -> None:
    httpx_mock.add_response(
        url=f"{API}/retrieve_future",
        json={"error": "checkpoint has expired", "category": category},
    )

    error = await failure(client.retrieve_future("r"))

    assert (error.code, error.retryable) == ("load_failed", retryable)
    assert "checkpoint has expired" in error.message


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b'{"training_run_id": "r", "base_mod',
        b'{"training_run_id": "r"}',
        b"[]",
        b"",
    ],
)
async def test_a_body_that_is_not_a_run_is_a_bad_response(
    client: TinkerClient, httpx_mock: HTTPXMock, body: bytes
) -> None:
    httpx_mock.add_response(url=f"{API}/training_runs/{RUN}", content=body)

    error = await failure(client.get_training_run(RUN))

    assert (error.code, error.retryable, error.status) == ("bad_response", True, 200)
    assert error.__cause__ is None


async def test_an_odd_future_answer_is_a_bad_response(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=f"{API}/retrieve_future", json=["done"])

    error = await failure(client.retrieve_future("r"))

    assert error.code == "bad_response"


async def test_server_errors_are_retryable_and_quote_tinker(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        url=f"{API}/training_runs/{RUN}",
        status_code=503,
        json={"detail": "backend overloaded"},
        headers={"retry-after": "4"},
    )

    error = await failure(client.get_training_run(RUN))

    assert (error.code, error.retryable, error.retry_after_s) == (
        "server_error",
        True,
        4.0,
    )
    assert error.message.endswith("backend overloaded")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (402, "billing"),
        (403, "forbidden"),
        (404, "not_found"),
        (409, "conflict"),
        (422, "invalid_request"),
    ],
)
async def test_permanent_failures_of_load_weights(
    client: TinkerClient, httpx_mock: HTTPXMock, status: int, code: str
) -> None:
    httpx_mock.add_response(
        url=f"{API}/load_weights", status_code=status, json={"detail": "no"}
    )

    error = await failure(
        client.load_weights(session_id="s", model_seq_id=0, path="p", optimizer=True)
    )

    assert (error.code, error.retryable, error.status) == (code, False, status)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (
            httpx.RemoteProtocolError("Server disconnected without a response"),
            "connection_error",
        ),
        (httpx.ConnectError("Connection refused"), "connection_error"),
        (httpx.ReadError("Connection reset by peer"), "connection_error"),
        (httpx.ReadTimeout("timed out"), "timeout"),
        (httpx.ConnectTimeout("timed out"), "timeout"),
    ],
)
async def test_transport_failures(
    client: TinkerClient, httpx_mock: HTTPXMock, exc: Exception, code: str
) -> None:
    httpx_mock.add_exception(exc, url=f"{API}/training_runs/{RUN}")

    error = await failure(client.get_training_run(RUN))

    assert (error.code, error.retryable, error.status) == (code, True, None)
    assert error.__cause__ is exc


async def test_the_key_is_redacted_from_what_tinker_echoes(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        url=f"{API}/training_runs/{RUN}",
        status_code=401,
        json={"detail": f"bad key {KEY} at {API}/training_runs/{RUN}?key={KEY}"},
    )

    error = await failure(client.get_training_run(RUN))

    assert error.code == "unauthorized"
    assert KEY not in error.message
    assert KEY not in str(error.to_dict())


async def test_wait_future_polls_through_pending_hiccups_and_rate_limits(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    url = f"{API}/retrieve_future"
    httpx_mock.add_response(url=url, json={"type": "try_again", "request_id": "r"})
    httpx_mock.add_response(url=url, status_code=503)
    httpx_mock.add_exception(httpx.RemoteProtocolError("dropped"), url=url)
    httpx_mock.add_response(url=url, status_code=429, headers={"retry-after-ms": "120"})
    httpx_mock.add_response(url=url, json={"model_id": "s:train:0"})

    started = time.monotonic()
    result = await client.wait_future("r", timeout_s=5, poll_interval_s=0.01)

    assert result == LoadResult(model_id="s:train:0")
    assert len(httpx_mock.get_requests()) == 5
    assert time.monotonic() - started >= 0.12


@pytest.mark.httpx_mock(can_send_already_matched_responses=True)
async def test_wait_future_gives_up_at_its_deadline(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        url=f"{API}/retrieve_future", json={"type": "try_again", "request_id": "r"}
    )

    started = time.monotonic()
    error = await failure(client.wait_future("r", timeout_s=0.3, poll_interval_s=0.02))

    elapsed = time.monotonic() - started
    assert (error.code, error.retryable) == ("timeout", True)
    assert "not done within 0.3 s" in error.message
    assert 0.3 <= elapsed < 1.0
    assert len(httpx_mock.get_requests()) > 3


async def test_wait_future_does_not_sleep_past_its_deadline_for_a_hint(
    client: TinkerClient, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        url=f"{API}/retrieve_future", status_code=429, headers={"retry-after": "30"}
    )

    started = time.monotonic()
    error = await failure(client.wait_future("r", timeout_s=2))

    assert (error.code, error.retry_after_s) == ("rate_limited", 30.0)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (200, {"error": "checkpoint not found", "category": "user"}, "load_failed"),
        (410, {"detail": "expired"}, "future_expired"),
        (404, {"detail": "unknown request"}, "not_found"),
    ],
)
async def test_wait_future_stops_on_what_polling_cannot_mend(
    client: TinkerClient,
    httpx_mock: HTTPXMock,
    status: int,
    body: dict[str, str],
    code: str,
) -> None:
    httpx_mock.add_response(url=f"{API}/retrieve_future", status_code=status, json=body)

    error = await failure(client.wait_future("r", timeout_s=2))

    assert error.code == code
    assert len(httpx_mock.get_requests()) == 1


async def test_from_env_reads_the_sdk_variables(httpx_mock: HTTPXMock) -> None:
    env = {"TINKER_BASE_URL": f"{BASE}/", "TINKER_API_KEY": KEY}
    httpx_mock.add_response(url=f"{API}/training_runs/{RUN}", json=RUN_JSON)

    async with TinkerClient.from_env(env, use_aiohttp=False) as client:
        await client.get_training_run(RUN)

    request = httpx_mock.get_request()
    assert request is not None
    assert client.base_url == BASE
    assert request.headers["X-API-Key"] == KEY


async def test_from_env_defaults_to_production_and_no_key(
    httpx_mock: HTTPXMock,
) -> None:
    url = f"{DEFAULT_BASE_URL}/api/v1/training_runs/{RUN}"
    httpx_mock.add_response(url=url, json=RUN_JSON)

    async with TinkerClient.from_env({}, use_aiohttp=False) as client:
        await client.get_training_run(RUN)

    request = httpx_mock.get_request()
    assert request is not None
    assert client.base_url == DEFAULT_BASE_URL
    assert "X-API-Key" not in request.headers


def test_new_run_id_prefers_what_tinker_said() -> None:
    said = LoadResult(model_id="sess:train:9")

    assert TinkerClient.new_run_id("sess", 2, said) == "sess:train:9"
    assert TinkerClient.new_run_id("sess", 2, LoadResult()) == "sess:train:2"
