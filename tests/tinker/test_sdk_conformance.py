"""The official SDK (tinker 0.38) against the fake: the fake must speak the
real protocol, and the SDK and our client must see the same world.

The SDK is synchronous over a background event loop; every wait on it is
bounded, so a protocol mismatch fails fast instead of hanging on its retries.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
import tinker
from tinker import types as sdk_types

from app.tinker.client import TinkerClient
from app.tinker.errors import TinkerError
from app.tinker.fake import create_fake_tinker_app
from app.tinker.fake_control import FakeTinkerControl
from app.tinker.fake_state import SeedCheckpoint
from app.tinker.paths import parse_tinker_path
from tests.support.servers import ThreadedServer, serve

KEY = "tml-sdk-conformance-0000000000000"
RUN = "9e8d7c6b-5a49-3827-1605-f4e3d2c1b0a9:train:0"
WAIT_S = 10
T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    """A fake of its own: the SDK's background traffic stays out of other tests."""
    with serve(create_fake_tinker_app()) as server:
        yield server


@pytest.fixture
def fake(server: ThreadedServer) -> Iterator[FakeTinkerControl]:
    with FakeTinkerControl(server.url) as control:
        control.reset()
        control.seed_run(
            RUN,
            corrupted=True,
            user_metadata={"project": "conformance"},
            checkpoints=[
                SeedCheckpoint(name="step-100", user_metadata={"eval_loss": "1.2"}),
                SeedCheckpoint(
                    name="step-200",
                    user_metadata={"eval_loss": "0.8"},
                    expires_at=datetime.now(UTC) + timedelta(days=7),
                ),
                SeedCheckpoint(name="step-200", kind="sampler", public=True),
            ],
        )
        yield control


@pytest.fixture
def service(server: ThreadedServer) -> Iterator[tinker.ServiceClient]:
    client = tinker.ServiceClient(base_url=server.url, api_key=KEY)
    yield client
    client.close("success").result(timeout=WAIT_S)


def ours(server: ThreadedServer, work: Callable[[TinkerClient], Awaitable[T]]) -> T:
    """Run `work` with our client, in an event loop of its own."""

    async def main() -> T:
        async with TinkerClient(server.url, KEY, timeout_s=5) as client:
            return await asyncio.wait_for(work(client), WAIT_S)

    return asyncio.run(main())


def test_the_sdk_reads_what_our_client_reads(
    server: ThreadedServer, fake: FakeTinkerControl
) -> None:
    rest = tinker.RestClient(base_url=server.url, api_key=KEY)

    sdk_run = rest.get_training_run(RUN).result(timeout=WAIT_S)
    sdk_checkpoints = rest.list_checkpoints(RUN).result(timeout=WAIT_S).checkpoints
    our_run = ours(server, lambda c: c.get_training_run(RUN))
    our_checkpoints = ours(server, lambda c: c.list_checkpoints(RUN))

    assert sdk_run.corrupted is True
    assert sdk_run.model_dump(mode="json") == our_run.model_dump(mode="json")
    assert [c.model_dump(mode="json") for c in sdk_checkpoints] == [
        c.model_dump(mode="json") for c in our_checkpoints
    ]
    for checkpoint in sdk_checkpoints:
        sdk_path = sdk_types.ParsedCheckpointTinkerPath.from_tinker_path(
            checkpoint.tinker_path
        )
        our_path = parse_tinker_path(checkpoint.tinker_path)
        assert (sdk_path.training_run_id, sdk_path.checkpoint_id) == (
            our_path.run_id,
            our_path.checkpoint_id,
        )


def test_the_sdk_restarts_a_run_and_our_client_sees_it(
    server: ThreadedServer,
    fake: FakeTinkerControl,
    service: tinker.ServiceClient,
) -> None:
    path = f"tinker://{RUN}/weights/step-200"

    with_optimizer = service.create_training_client_from_state_with_optimizer(
        path
    ).result(timeout=WAIT_S)
    weights_only = service.create_training_client_from_state(path).result(
        timeout=WAIT_S
    )

    session_id = with_optimizer.model_id.removesuffix(":train:0")
    assert weights_only.model_id == f"{session_id}:train:1"
    for model_id, optimizer in [
        (with_optimizer.model_id, True),
        (weights_only.model_id, False),
    ]:
        run = ours(server, lambda c, m=model_id: c.get_training_run(m))
        assert run.base_model == "Qwen/Qwen3-8B"
        assert run.corrupted is False
        state = fake.run_state(model_id)
        assert (state.loaded_from, state.optimizer_restored) == (path, optimizer)
        assert state.session_id == session_id
    loads = fake.calls("load_weights")
    assert [c.body["optimizer"] for c in loads] == [True, False]
    assert all(c.idempotency_key for c in loads)


def test_our_restart_is_seen_by_the_sdk(
    server: ThreadedServer, fake: FakeTinkerControl
) -> None:
    async def restart(client: TinkerClient) -> str:
        session_id = await client.create_session(tags=["conformance"])
        request_id = await client.load_weights(
            session_id=session_id,
            model_seq_id=0,
            path=f"tinker://{RUN}/weights/step-100",
            optimizer=True,
            idempotency_key="conformance-1",
        )
        result = await client.wait_future(request_id, timeout_s=5)
        return client.new_run_id(session_id, 0, result)

    new_run_id = ours(server, restart)
    rest = tinker.RestClient(base_url=server.url, api_key=KEY)

    sdk_run = rest.get_training_run(new_run_id).result(timeout=WAIT_S)
    listed = rest.list_training_runs(limit=10).result(timeout=WAIT_S)
    our_run = ours(server, lambda c: c.get_training_run(new_run_id))

    assert sdk_run.model_dump(mode="json") == our_run.model_dump(mode="json")
    assert [r.training_run_id for r in listed.training_runs] == [RUN, new_run_id]
    assert listed.cursor.total_count == 2
    assert rest.list_checkpoints(new_run_id).result(timeout=WAIT_S).checkpoints == []


def test_a_sampler_checkpoint_fails_for_both_as_a_400(
    server: ThreadedServer,
    fake: FakeTinkerControl,
    service: tinker.ServiceClient,
) -> None:
    path = f"tinker://{RUN}/sampler_weights/step-200"

    with pytest.raises(tinker.BadRequestError):
        service.create_training_client_from_state(path).result(timeout=WAIT_S)

    async def load(client: TinkerClient) -> str:
        session_id = await client.create_session(tags=[])
        return await client.load_weights(
            session_id=session_id, model_seq_id=0, path=path, optimizer=False
        )

    with pytest.raises(TinkerError) as caught:
        ours(server, load)
    assert (caught.value.code, caught.value.retryable) == ("bad_request", False)


def test_an_expired_checkpoint_fails_for_both_as_the_users_fault(
    server: ThreadedServer,
    fake: FakeTinkerControl,
    service: tinker.ServiceClient,
) -> None:
    path = f"tinker://{RUN}/weights/step-100"
    fake.expire_checkpoint(path)

    with pytest.raises(tinker.RequestFailedError) as sdk_caught:
        service.create_training_client_from_state_with_optimizer(path).result(
            timeout=WAIT_S
        )

    async def load(client: TinkerClient) -> object:
        session_id = await client.create_session(tags=[])
        request_id = await client.load_weights(
            session_id=session_id, model_seq_id=0, path=path, optimizer=True
        )
        return await client.wait_future(request_id, timeout_s=5)

    with pytest.raises(TinkerError) as our_caught:
        ours(server, load)
    assert sdk_caught.value.category == sdk_types.RequestErrorCategory.User
    assert (our_caught.value.code, our_caught.value.retryable) == (
        "load_failed",
        False,
    )


def test_the_sdk_rides_out_faults_it_retries(
    server: ThreadedServer,
    fake: FakeTinkerControl,
    service: tinker.ServiceClient,
) -> None:
    # Hints keep the SDK's own backoff short; the key is reused on its retry.
    fake.inject_fault("load_weights", status=503, headers={"retry-after-ms": "10"})
    fake.inject_fault("retrieve_future", status=500)
    fake.set_future_delay(pending_polls=1)

    client = service.create_training_client_from_state_with_optimizer(
        f"tinker://{RUN}/weights/step-200"
    ).result(timeout=WAIT_S)

    loads = fake.calls("load_weights")
    assert [c.status for c in loads] == [503, 200]
    assert loads[0].idempotency_key == loads[1].idempotency_key
    polls = [c.status for c in fake.calls("retrieve_future")]
    assert polls[0] == 500
    assert polls[-1] == 200
    assert fake.run_state(client.model_id).optimizer_restored is True


def test_closing_the_sdk_finishes_its_session(
    server: ThreadedServer, fake: FakeTinkerControl
) -> None:
    service = tinker.ServiceClient(base_url=server.url, api_key=KEY)
    client = service.create_training_client_from_state(
        f"tinker://{RUN}/weights/step-200"
    ).result(timeout=WAIT_S)
    session_id = client.model_id.removesuffix(":train:0")

    service.close("success").result(timeout=WAIT_S)

    with pytest.raises(TinkerError) as caught:
        ours(server, lambda c: c.heartbeat(session_id))
    assert caught.value.code == "session_gone"
    assert [c.path for c in fake.calls("finish_session")] == [
        f"/api/v1/sessions/{session_id}/finish"
    ]
