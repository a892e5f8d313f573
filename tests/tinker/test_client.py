"""Our client against the fake Tinker over real HTTP, on both transports."""

import asyncio
import time
from collections.abc import Awaitable

import httpx
import pytest

from app.tinker.client import TinkerClient
from app.tinker.errors import TinkerError
from app.tinker.fake_control import FakeTinkerControl
from app.tinker.fake_state import SeedCheckpoint
from app.tinker.types import Done, LoadResult, Pending
from tests.support.servers import ThreadedServer
from tests.tinker.conftest import KEY

RUN = "7d1e9a20-4c3b-4f5e-8a9b-0c1d2e3f4a5b:train:0"
STEP_2 = f"tinker://{RUN}/weights/step-200"


def seed(fake: FakeTinkerControl, **fields: object) -> None:
    fake.seed_run(
        RUN,
        checkpoints=[
            SeedCheckpoint(name="step-100", user_metadata={"eval_loss": "0.9"}),
            SeedCheckpoint(name="step-200", user_metadata={"eval_loss": "0.7"}),
            SeedCheckpoint(name="step-200", kind="sampler"),
        ],
        **fields,
    )


async def failure(call: Awaitable[object]) -> TinkerError:
    with pytest.raises(TinkerError) as caught:
        await call
    return caught.value


async def start_load(
    tinker: TinkerClient, path: str = STEP_2, *, optimizer: bool = True
) -> tuple[str, str]:
    """Open a session and load `path` as its first model: (session, request)."""
    session_id = await tinker.create_session(tags=["test"])
    request_id = await tinker.load_weights(
        session_id=session_id, model_seq_id=0, path=path, optimizer=optimizer
    )
    return session_id, request_id


async def restart(
    tinker: TinkerClient, path: str = STEP_2, *, optimizer: bool = True
) -> tuple[str, LoadResult]:
    """Load `path` into a new run and wait for it: (new run id, result)."""
    session_id, request_id = await start_load(tinker, path, optimizer=optimizer)
    result = await tinker.wait_future(request_id, timeout_s=5, poll_interval_s=0.01)
    return tinker.new_run_id(session_id, 0, result), result


async def test_reads_a_run_its_last_checkpoints_and_its_list(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake, user_metadata={"team": "a"})

    run = await tinker.get_training_run(RUN)
    checkpoints = await tinker.list_checkpoints(RUN)

    assert run.training_run_id == RUN
    assert run.corrupted is False
    assert run.user_metadata == {"team": "a"}
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.tinker_path == STEP_2
    assert run.last_sampler_checkpoint is not None
    assert run.last_sampler_checkpoint.checkpoint_id == "sampler_weights/step-200"
    assert [c.checkpoint_id for c in checkpoints] == [
        "weights/step-100",
        "weights/step-200",
        "sampler_weights/step-200",
    ]
    assert checkpoints[0].user_metadata == {"eval_loss": "0.9"}
    assert checkpoints[0].time < checkpoints[1].time < checkpoints[2].time


async def test_sees_corruption_come_and_go(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)

    fake.corrupt(RUN)
    corrupted = await tinker.get_training_run(RUN)
    fake.heal(RUN)
    healed = await tinker.get_training_run(RUN)

    assert (corrupted.corrupted, healed.corrupted) == (True, False)


async def test_a_run_corrupted_before_any_checkpoint(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    fake.seed_run(RUN, corrupted=True)

    run = await tinker.get_training_run(RUN)

    assert run.corrupted is True
    assert run.last_checkpoint is None
    assert await tinker.list_checkpoints(RUN) == []


async def test_an_unknown_run_is_not_found(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    error = await failure(tinker.get_training_run("nope:train:0"))
    listing = await failure(tinker.list_checkpoints("nope:train:0"))

    assert (error.code, error.retryable, error.status) == ("not_found", False, 404)
    assert "nope:train:0 not found" in error.message
    assert listing.code == "not_found"


@pytest.mark.parametrize("optimizer", [True, False])
async def test_restarts_a_run_from_a_checkpoint(
    fake: FakeTinkerControl, tinker: TinkerClient, optimizer: bool
) -> None:
    seed(fake, base_model="meta-llama/Llama-3.1-8B", lora_rank=8)

    new_run_id, result = await restart(tinker, optimizer=optimizer)
    new_run = await tinker.get_training_run(new_run_id)

    assert new_run_id.endswith(":train:0")
    assert result == LoadResult(model_id=new_run_id, path=STEP_2)
    assert new_run.base_model == "meta-llama/Llama-3.1-8B"
    assert new_run.lora_rank == 8
    assert new_run.corrupted is False
    assert new_run.last_checkpoint is None
    assert await tinker.list_checkpoints(new_run_id) == []
    state = fake.run_state(new_run_id)
    assert (state.loaded_from, state.optimizer_restored) == (STEP_2, optimizer)


async def test_the_new_run_can_be_corrupted_and_restarted_in_turn(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    first, _ = await restart(tinker)
    fake.add_checkpoint(first, "step-300")
    fake.corrupt(first)

    second, _ = await restart(tinker, f"tinker://{first}/weights/step-300")

    assert (await tinker.get_training_run(first)).corrupted is True
    assert fake.run_state(second).loaded_from == f"tinker://{first}/weights/step-300"


async def test_a_session_numbers_its_models(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    session_id = await tinker.create_session(tags=[])
    await tinker.heartbeat(session_id)

    ids = []
    for seq in (0, 1):
        request_id = await tinker.load_weights(
            session_id=session_id, model_seq_id=seq, path=STEP_2, optimizer=True
        )
        result = await tinker.wait_future(request_id, timeout_s=5)
        ids.append(tinker.new_run_id(session_id, seq, result))
    again = await failure(
        tinker.load_weights(
            session_id=session_id, model_seq_id=1, path=STEP_2, optimizer=True
        )
    )

    assert ids == [f"{session_id}:train:0", f"{session_id}:train:1"]
    assert (again.code, again.retryable, again.status) == ("conflict", False, 409)


async def test_futures_can_take_polls_and_time(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    fake.set_future_delay(pending_polls=2)
    _, request_id = await start_load(tinker)

    outcomes = [await tinker.retrieve_future(request_id) for _ in range(4)]

    assert outcomes[:2] == [Pending("active"), Pending("active")]
    assert isinstance(outcomes[2], Done)
    assert outcomes[3] == outcomes[2]

    fake.set_future_delay(0.3)
    started = time.monotonic()
    await restart(tinker)
    assert time.monotonic() - started >= 0.3


async def test_loading_a_sampler_checkpoint_as_training_state_is_a_400(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    session_id = await tinker.create_session(tags=[])

    error = await failure(
        tinker.load_weights(
            session_id=session_id,
            model_seq_id=0,
            path=f"tinker://{RUN}/sampler_weights/step-200",
            optimizer=False,
        )
    )

    assert (error.code, error.retryable, error.status) == ("bad_request", False, 400)
    assert "not a training checkpoint" in error.message


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (f"tinker://{RUN}/weights/step-999", "not found"),
        ("tinker://ghost:train:0/weights/step-1", "not found"),
    ],
)
async def test_a_missing_checkpoint_fails_the_load_as_the_users_fault(
    fake: FakeTinkerControl, tinker: TinkerClient, path: str, why: str
) -> None:
    seed(fake)

    error = await failure(restart(tinker, path))

    assert (error.code, error.retryable) == ("load_failed", False)
    assert why in error.message


async def test_an_expired_checkpoint_fails_to_load_and_makes_no_run(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    expired = fake.expire_checkpoint(STEP_2)

    session_id, request_id = await start_load(tinker)
    error = await failure(tinker.wait_future(request_id, timeout_s=5))
    listed = {c.checkpoint_id: c for c in await tinker.list_checkpoints(RUN)}

    assert (error.code, error.retryable) == ("load_failed", False)
    assert "expired" in error.message
    assert listed["weights/step-200"].expires_at == expired.expires_at
    missing = await failure(tinker.get_training_run(f"{session_id}:train:0"))
    assert missing.code == "not_found"


async def test_the_same_idempotency_key_creates_once(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    session_ids = {
        await tinker.create_session(tags=["x"], idempotency_key="session-key")
        for _ in range(2)
    }
    (session_id,) = session_ids

    request_ids = {
        await tinker.load_weights(
            session_id=session_id,
            model_seq_id=0,
            path=STEP_2,
            optimizer=True,
            idempotency_key="load-key",
        )
        for _ in range(3)
    }
    other_request = await failure(
        tinker.load_weights(
            session_id=session_id,
            model_seq_id=0,
            path=f"tinker://{RUN}/weights/step-100",
            optimizer=True,
            idempotency_key="load-key",
        )
    )

    assert len(request_ids) == 1
    assert other_request.code == "conflict"
    calls = fake.calls("load_weights")
    assert [c.idempotency_key for c in calls] == ["load-key"] * 4
    assert [c.status for c in calls] == [200, 200, 200, 409]
    assert len(fake.calls("create_session")) == 2


async def test_a_lost_answer_is_recovered_with_the_same_key(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    session_id = await tinker.create_session(tags=[])
    fake.inject_fault("load_weights", drop_connection=True, after=True)

    def load() -> Awaitable[str]:
        return tinker.load_weights(
            session_id=session_id,
            model_seq_id=0,
            path=STEP_2,
            optimizer=True,
            idempotency_key="attempt-1",
        )

    lost = await failure(load())
    request_id = await load()
    result = await tinker.wait_future(request_id, timeout_s=5)

    assert (lost.code, lost.retryable) == ("connection_error", True)
    assert result.model_id == f"{session_id}:train:0"
    calls = fake.calls("load_weights")
    assert [(c.fault, c.status) for c in calls] == [(True, None), (False, 200)]


async def test_a_wrong_key_is_unauthorized(
    fake: FakeTinkerControl, fake_server: ThreadedServer
) -> None:
    seed(fake)

    for key in ("not-a-tinker-key", None):
        async with TinkerClient(fake_server.url, key) as client:
            error = await failure(client.get_training_run(RUN))
        assert (error.code, error.retryable, error.status) == (
            "unauthorized",
            False,
            401,
        )


async def test_a_session_that_is_gone_refuses_heartbeats_and_loads(
    fake: FakeTinkerControl, fake_server: ThreadedServer, tinker: TinkerClient
) -> None:
    seed(fake)
    finished = await tinker.create_session(tags=[])
    async with httpx.AsyncClient(base_url=fake_server.url) as raw:
        answer = await raw.post(
            f"/api/v1/sessions/{finished}/finish",
            headers={"X-API-Key": KEY},
            json={"reason": {"type": "success"}},
        )
    answer.raise_for_status()

    gone = await failure(tinker.heartbeat(finished))
    load = await failure(
        tinker.load_weights(
            session_id=finished, model_seq_id=0, path=STEP_2, optimizer=True
        )
    )
    unknown = await failure(tinker.heartbeat("no-such-session"))

    assert (gone.code, gone.retryable, gone.status) == ("session_gone", False, 410)
    assert (load.code, load.status) == ("gone", 410)
    assert unknown.code == "not_found"


async def test_sessions_lapse_without_heartbeats_only_when_configured(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    session_id = await tinker.create_session(tags=[])
    await asyncio.sleep(0.2)
    await tinker.heartbeat(session_id)

    fake.configure(session_ttl_s=0.1)
    await tinker.heartbeat(session_id)
    await asyncio.sleep(0.2)
    error = await failure(tinker.heartbeat(session_id))

    assert error.code == "session_gone"


@pytest.mark.parametrize(
    ("fault", "code", "retryable"),
    [
        ({"status": 503, "headers": {"retry-after": "3"}}, "server_error", True),
        (
            {"status": 500, "headers": {"x-should-retry": "false"}},
            "server_error",
            False,
        ),
        ({"status": 429, "headers": {"retry-after-ms": "250"}}, "rate_limited", True),
        ({"status": 402, "detail": "add a card"}, "billing", False),
        ({"malformed_body": True}, "bad_response", True),
        ({"drop_connection": True}, "connection_error", True),
    ],
)
async def test_injected_faults_are_classified(
    fake: FakeTinkerControl,
    tinker: TinkerClient,
    fault: dict[str, object],
    code: str,
    retryable: bool,
) -> None:
    seed(fake)
    fake.inject_fault("get_training_run", **fault)

    error = await failure(tinker.get_training_run(RUN))
    afterwards = await tinker.get_training_run(RUN)

    assert (error.code, error.retryable) == (code, retryable)
    assert afterwards.training_run_id == RUN
    assert fake.faults() == []


async def test_fault_hints_and_details_reach_the_error(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    fake.inject_fault(
        "list_checkpoints",
        status=429,
        headers={"retry-after-ms": "250"},
        detail="too many requests for this org",
    )

    error = await failure(tinker.list_checkpoints(RUN))

    assert error.retry_after_s == 0.25
    assert error.message.endswith("too many requests for this org")


async def test_a_slow_answer_times_out(
    fake: FakeTinkerControl, fake_server: ThreadedServer
) -> None:
    seed(fake)
    fake.inject_fault("get_training_run", delay_s=1.0)

    async with TinkerClient(fake_server.url, KEY, timeout_s=0.2) as client:
        error = await failure(client.get_training_run(RUN))

    assert (error.code, error.retryable) == ("timeout", True)


async def test_a_delay_alone_lets_the_call_through(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    fake.inject_fault("get_training_run", delay_s=0.2)

    started = time.monotonic()
    run = await tinker.get_training_run(RUN)

    assert run.training_run_id == RUN
    assert time.monotonic() - started >= 0.2


async def test_faults_on_retrieve_future(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    _, request_id = await start_load(tinker)
    fake.inject_fault("retrieve_future", status=408)
    fake.inject_fault("retrieve_future", status=410, count=1)

    held = await tinker.retrieve_future(request_id)
    expired = await failure(tinker.retrieve_future(request_id))
    done = await tinker.retrieve_future(request_id)

    assert held == Pending("unknown")
    assert (expired.code, expired.retryable) == ("future_expired", True)
    assert isinstance(done, Done)


async def test_wait_future_rides_out_faults(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    fake.set_future_delay(pending_polls=1)
    session_id, request_id = await start_load(tinker)
    fake.inject_fault("retrieve_future", status=503, count=2)
    fake.inject_fault("retrieve_future", drop_connection=True)
    fake.inject_fault("retrieve_future", status=429, headers={"retry-after-ms": "50"})

    result = await tinker.wait_future(request_id, timeout_s=5, poll_interval_s=0.01)

    assert result.model_id == f"{session_id}:train:0"
    statuses = [c.status for c in fake.calls("retrieve_future")]
    assert statuses == [503, 503, None, 429, 200, 200]


async def test_path_patterns_and_methods_select_calls(
    fake: FakeTinkerControl, tinker: TinkerClient
) -> None:
    seed(fake)
    fake.inject_fault("/api/v1/training_runs/*", method="GET", status=502, count=2)

    first = await failure(tinker.list_checkpoints(RUN))
    second = await failure(tinker.get_training_run(RUN))
    session_id = await tinker.create_session(tags=[])

    assert (first.code, second.code) == ("server_error", "server_error")
    assert session_id


async def test_many_concurrent_calls_share_one_bounded_pool(
    fake: FakeTinkerControl, fake_server: ThreadedServer
) -> None:
    seed(fake)

    for use_aiohttp in (True, False):
        async with TinkerClient(
            fake_server.url, KEY, max_connections=8, use_aiohttp=use_aiohttp
        ) as client:
            runs = await asyncio.gather(
                *(client.get_training_run(RUN) for _ in range(200))
            )
        assert {run.training_run_id for run in runs} == {RUN}
