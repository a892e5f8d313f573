"""A small async client for the part of Tinker's API the service needs.

One `httpx.AsyncClient` and one connection pool serve every call. By default
the pool is aiohttp's, through the `httpx-aiohttp` transport: httpx's own
async pool collapses under the concurrency of the monitor (measured in
PERFORMANCE.md), while the aiohttp transport keeps the same httpx API.
`use_aiohttp=False`, or an explicit `transport`, gives httpx's own transport,
which is what pytest-httpx mocks.

Every method raises `TinkerError` and nothing else; see `errors.classify`.
The client never retries on its own: retrying is the caller's decision, made
from `TinkerError.retryable`, with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self, TypeVar
from urllib.parse import quote

import aiohttp
import httpx
import pydantic
from httpx_aiohttp import AiohttpTransport

from app.tinker.errors import FailedFuture, TinkerError, classify
from app.tinker.types import (
    Checkpoint,
    Done,
    FutureResult,
    LoadResult,
    Pending,
    TinkerModel,
    TrainingRun,
)

DEFAULT_BASE_URL: Final = "https://tinker.thinkingmachines.dev/services/tinker-prod"
API_PREFIX: Final = "/api/v1"
# The SDK release whose wire protocol this client speaks; Tinker resolves
# per-client behaviour from the version a session reports.
PROTOCOL_VERSION: Final = "0.38.0"

_TRANSPORT_ERRORS: Final = (httpx.HTTPError, aiohttp.ClientError, OSError)

# Failures of one poll that say nothing about the future itself.
_TRANSIENT_POLL_FAILURES: Final = frozenset(
    {"connection_error", "timeout", "rate_limited", "server_error", "bad_response"}
)

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


class _CheckpointList(TinkerModel):
    checkpoints: list[Checkpoint]


class _SessionCreated(TinkerModel):
    session_id: str


class _FutureHandle(TinkerModel):
    request_id: str


class _FutureAnswer(TinkerModel):
    # retrieve_future answers one of three shapes; this reads all of them.
    type: str | None = None
    queue_state: str | None = None
    error: str | None = None
    category: str | None = None
    model_id: str | None = None
    path: str | None = None


class TinkerClient:
    """Async client for Tinker's training runs, sessions and weight loading."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        max_connections: int = 256,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        use_aiohttp: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_url = self.base_url + API_PREFIX
        self._api_key = api_key
        headers = {"Accept": "application/json"}
        if api_key:
            headers["X-API-Key"] = api_key
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport or _make_transport(max_connections, use_aiohttp),
        )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        max_connections: int = 256,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        use_aiohttp: bool = True,
    ) -> TinkerClient:
        """Build a client from `TINKER_BASE_URL` and `TINKER_API_KEY`, as the SDK."""
        env = os.environ if environ is None else environ
        return cls(
            env.get("TINKER_BASE_URL") or DEFAULT_BASE_URL,
            env.get("TINKER_API_KEY") or None,
            max_connections=max_connections,
            timeout_s=timeout_s,
            transport=transport,
            use_aiohttp=use_aiohttp,
        )

    async def get_training_run(self, run_id: str) -> TrainingRun:
        """Read a training run, corruption flag and last checkpoints included."""
        return await self._get(_run_path(run_id), "get_training_run", TrainingRun)

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        """List every checkpoint of a run, training and sampler alike."""
        path = f"{_run_path(run_id)}/checkpoints"
        listed = await self._get(path, "list_checkpoints", _CheckpointList)
        return listed.checkpoints

    async def create_session(
        self,
        *,
        tags: list[str],
        user_metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Open a session to create training runs in; return its id."""
        body = {
            "tags": tags,
            "user_metadata": user_metadata,
            "sdk_version": PROTOCOL_VERSION,
            "type": "create_session",
        }
        created = await self._post(
            "create_session", body, _SessionCreated, idempotency_key
        )
        return created.session_id

    async def heartbeat(self, session_id: str) -> None:
        """Keep a session alive; a session that is gone raises `session_gone`."""
        body = {"session_id": session_id, "type": "session_heartbeat"}
        await self._send("POST", "/session_heartbeat", "session_heartbeat", body)

    async def load_weights(
        self,
        *,
        session_id: str,
        model_seq_id: int,
        path: str,
        optimizer: bool,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a new run from checkpoint `path`; return the load's future id."""
        body = {
            "session_id": session_id,
            "model_seq_id": model_seq_id,
            "path": path,
            "optimizer": optimizer,
            "type": "load_weights",
        }
        handle = await self._post("load_weights", body, _FutureHandle, idempotency_key)
        return handle.request_id

    async def retrieve_future(self, request_id: str) -> FutureResult:
        """Ask once for the outcome of a future: pending, done, or raise."""
        # A load's result is tiny, so ask for it whole rather than metadata first.
        body = {"request_id": request_id, "allow_metadata_only": False}
        try:
            answer = await self._post("retrieve_future", body, _FutureAnswer)
        except TinkerError as error:
            if _future_still_running(error):
                return Pending(queue_state="unknown")
            raise

        if answer.type == "try_again":
            return Pending(queue_state=answer.queue_state or "unknown")
        if answer.error is not None:
            failure = FailedFuture(answer.error, answer.category or "unknown")
            raise self._classify(failure, "retrieve_future")
        return Done(LoadResult(model_id=answer.model_id, path=answer.path))

    async def wait_future(
        self, request_id: str, *, timeout_s: float, poll_interval_s: float = 0.2
    ) -> LoadResult:
        """Poll a future until it is done; past `timeout_s`, raise `timeout`."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    outcome = await self.retrieve_future(request_id)
            except TimeoutError:
                break
            except TinkerError as error:
                pause = _pause_after(error, poll_interval_s, remaining)
            else:
                if isinstance(outcome, Done):
                    return outcome.result
                pause = poll_interval_s
            await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))

        late = TimeoutError(f"future {request_id} not done within {timeout_s:g} s")
        raise self._classify(late, "wait_future")

    @staticmethod
    def new_run_id(session_id: str, model_seq_id: int, result: LoadResult) -> str:
        """The id of the run a load created: Tinker's word, else its naming rule."""
        return result.model_id or f"{session_id}:train:{model_seq_id}"

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _get(self, path: str, endpoint: str, model: type[ModelT]) -> ModelT:
        response = await self._send("GET", path, endpoint)
        return self._decode(model, response, endpoint)

    async def _post(
        self,
        endpoint: str,
        body: dict[str, Any],
        model: type[ModelT],
        idempotency_key: str | None = None,
    ) -> ModelT:
        # Tinker's POST endpoints are named by their paths.
        path = f"/{endpoint}"
        response = await self._send("POST", path, endpoint, body, idempotency_key)
        return self._decode(model, response, endpoint)

    async def _send(
        self,
        method: str,
        path: str,
        endpoint: str,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers = {"X-Idempotency-Key": idempotency_key} if idempotency_key else None
        # An absolute URL is parsed once; a relative one is parsed, then merged
        # with the base URL and parsed again, a cost paid on every poll.
        url = self._api_url + path
        try:
            response = await self._http.request(method, url, json=body, headers=headers)
        except _TRANSPORT_ERRORS as exc:
            raise self._classify(exc, endpoint) from exc
        if not response.is_success:
            raise self._classify(response, endpoint)
        return response

    def _decode(
        self, model: type[ModelT], response: httpx.Response, endpoint: str
    ) -> ModelT:
        try:
            return model.model_validate_json(response.content)
        except pydantic.ValidationError as exc:
            # Not chained: the pydantic error quotes the body it refused.
            raise self._classify(exc, endpoint, response) from None

    def _classify(
        self,
        failure: httpx.Response | BaseException | FailedFuture,
        endpoint: str,
        response: httpx.Response | None = None,
    ) -> TinkerError:
        return classify(
            failure, endpoint=endpoint, response=response, secrets=[self._api_key]
        )


def _make_transport(
    max_connections: int, use_aiohttp: bool
) -> httpx.AsyncBaseTransport:
    if not use_aiohttp:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        return httpx.AsyncHTTPTransport(limits=limits)

    def session() -> aiohttp.ClientSession:
        # Made lazily, on the first request, inside the running event loop.
        connector = aiohttp.TCPConnector(limit=max_connections)
        return aiohttp.ClientSession(connector=connector)

    transport: httpx.AsyncBaseTransport = AiohttpTransport(client=session)
    return transport


def _run_path(run_id: str) -> str:
    # Run ids carry colons (`<session>:train:0`); they go on the wire as they are.
    return f"/training_runs/{quote(run_id, safe=':')}"


def _future_still_running(error: TinkerError) -> bool:
    # 408 means Tinker held the poll as long as it would, 5xx a hiccup of the
    # poll itself: either way the future is intact and the answer is "later".
    if error.status is None or not error.retryable:
        return False
    return error.status == 408 or error.status >= 500


def _pause_after(error: TinkerError, poll_interval_s: float, remaining: float) -> float:
    if error.code not in _TRANSIENT_POLL_FAILURES:
        raise error
    pause = max(poll_interval_s, error.retry_after_s or 0.0)
    if pause >= remaining:
        # Waiting out the hint would only end in a timeout that hides the cause.
        raise error
    return pause
