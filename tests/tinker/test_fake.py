"""The fake Tinker's own rules and its control endpoints."""

import inspect
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.tinker import fake as fake_app
from app.tinker.fake import create_fake_tinker_app
from app.tinker.fake_control import FakeTinkerControl
from app.tinker.fake_state import FakeSettings
from tests.support.servers import ThreadedServer, serve
from tests.tinker.conftest import KEY

RUN = "4a5b6c7d-0000-1111-2222-333344445555:train:1"


@pytest.fixture
def api(fake_server: ThreadedServer) -> Iterator[httpx.Client]:
    """A raw client of the fake's API, with a good key."""
    with httpx.Client(
        base_url=f"{fake_server.url}/api/v1", headers={"X-API-Key": KEY}
    ) as client:
        yield client


def test_seeding_twice_replaces_the_run(fake: FakeTinkerControl) -> None:
    fake.seed_run(RUN, checkpoints=["a", "b"], corrupted=True)
    run = fake.seed_run(RUN, checkpoints=["c"], base_model="other/model")

    assert run.base_model == "other/model"
    assert run.corrupted is False
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.checkpoint_id == "weights/c"


def test_a_seeded_run_without_id_gets_a_new_style_one(fake: FakeTinkerControl) -> None:
    run = fake.seed_run()

    assert run.training_run_id.endswith(":train:0")


def test_checkpoints_take_their_given_times_and_kinds(
    fake: FakeTinkerControl,
) -> None:
    early = datetime(2025, 1, 1, tzinfo=UTC)
    fake.seed_run(RUN)

    late = fake.add_checkpoint(RUN, "late", size_bytes=7)
    first = fake.add_checkpoint(RUN, "first", time=early)
    external = fake.add_checkpoint(RUN, "exported", kind="external")

    assert first.time == early
    assert late.size_bytes == 7
    assert external.tinker_path == f"tinker://{RUN}/external_weights/exported"
    assert external.checkpoint_type == "external"
    assert fake.run_state(RUN).run.last_checkpoint == late


def test_a_checkpoint_name_taken_is_a_409(fake: FakeTinkerControl) -> None:
    fake.seed_run(RUN, checkpoints=["a"])

    with pytest.raises(httpx.HTTPStatusError) as caught:
        fake.add_checkpoint(RUN, "a")
    sampler = fake.add_checkpoint(RUN, "a", kind="sampler")

    assert caught.value.response.status_code == 409
    assert sampler.checkpoint_id == "sampler_weights/a"


def test_control_of_an_unknown_run_is_a_404(fake: FakeTinkerControl) -> None:
    for action in (
        lambda: fake.corrupt("ghost"),
        lambda: fake.add_checkpoint("ghost", "a"),
        lambda: fake.run_state("ghost"),
        lambda: fake.expire_checkpoint("tinker://ghost/weights/a"),
    ):
        with pytest.raises(httpx.HTTPStatusError) as caught:
            action()
        assert caught.value.response.status_code == 404


def test_expiring_and_removing_checkpoints(
    fake: FakeTinkerControl, api: httpx.Client
) -> None:
    fake.seed_run(RUN, checkpoints=["a", "b", "c"])
    later = datetime.now(UTC) + timedelta(days=3)

    soon = fake.expire_checkpoint(f"tinker://{RUN}/weights/a", at=later)
    past = fake.expire_checkpoint(f"tinker://{RUN}/weights/b")
    fake.remove_checkpoint(f"tinker://{RUN}/weights/c")
    listed = api.get(f"/training_runs/{RUN}/checkpoints").json()["checkpoints"]

    assert soon.expires_at == later
    assert past.expires_at is not None
    assert past.is_expired(datetime.now(UTC))
    assert [c["checkpoint_id"] for c in listed] == ["weights/a", "weights/b"]


def test_settings_change_in_part_and_refuse_nonsense(fake: FakeTinkerControl) -> None:
    fake.configure(session_ttl_s=30)
    changed = fake.set_future_delay(0.5, pending_polls=2)

    assert changed == FakeSettings(
        future_delay_s=0.5, future_pending_polls=2, session_ttl_s=30
    )
    for nonsense in ({"future_delay_s": -1}, {"no_such_setting": 1}):
        with pytest.raises(httpx.HTTPStatusError) as caught:
            fake.configure(**nonsense)
        assert caught.value.response.status_code == 422
    assert fake.settings() == changed


def test_reset_forgets_everything(fake: FakeTinkerControl, api: httpx.Client) -> None:
    fake.seed_run(RUN, checkpoints=["a"])
    fake.configure(future_delay_s=2)
    fake.inject_fault("get_training_run", status=500, count=None)
    api.post("/telemetry", json={})

    fake.reset()

    assert api.get(f"/training_runs/{RUN}").status_code == 404
    assert fake.settings() == FakeSettings()
    assert fake.faults() == []
    assert [c.endpoint for c in fake.calls()] == ["get_training_run"]


def test_faults_are_used_up_unless_open_ended(
    fake: FakeTinkerControl, api: httpx.Client
) -> None:
    fake.seed_run(RUN)
    fake.inject_fault("get_training_run", status=500, count=2)
    fake.inject_fault("list_checkpoints", status=503, count=None)

    runs = [api.get(f"/training_runs/{RUN}").status_code for _ in range(3)]
    lists = [api.get(f"/training_runs/{RUN}/checkpoints").status_code for _ in range(3)]
    remaining = fake.faults()
    fake.clear_faults()

    assert runs == [500, 500, 200]
    assert lists == [503, 503, 503]
    assert [(f.endpoint, f.count) for f in remaining] == [("list_checkpoints", None)]
    assert api.get(f"/training_runs/{RUN}/checkpoints").status_code == 200


def test_a_fault_before_the_handler_leaves_no_trace(
    fake: FakeTinkerControl, api: httpx.Client
) -> None:
    fake.inject_fault("create_session", status=503)

    refused = api.post("/create_session", json={"tags": []})

    assert refused.status_code == 503
    assert refused.json() == {"detail": "injected fault"}
    assert api.post("/create_session", json={"tags": []}).status_code == 200
    assert len(fake.calls("create_session")) == 2


def test_the_call_log(fake: FakeTinkerControl, api: httpx.Client) -> None:
    fake.seed_run(RUN, checkpoints=["a"])
    api.get(f"/training_runs/{RUN}")
    api.post(
        "/weights_info",
        json={"tinker_path": f"tinker://{RUN}/weights/a"},
        headers={"X-Idempotency-Key": "k-1"},
    )
    api.get("/training_runs/ghost")

    calls = fake.calls()
    posts = fake.calls(method="post")

    assert [(c.method, c.endpoint, c.run_id, c.status) for c in calls] == [
        ("GET", "get_training_run", RUN, 200),
        ("POST", "weights_info", RUN, 200),
        ("GET", "get_training_run", "ghost", 404),
    ]
    assert calls[0].path == f"/api/v1/training_runs/{RUN}"
    assert posts == [calls[1]]
    assert posts[0].idempotency_key == "k-1"
    assert posts[0].body == {"tinker_path": f"tinker://{RUN}/weights/a"}
    assert all(not c.fault for c in calls)
    assert KEY not in str([c.model_dump() for c in calls])
    fake.clear_calls()
    assert fake.calls() == []


def test_startup_endpoints_the_sdk_calls(api: httpx.Client) -> None:
    config = api.post("/client/config", json={"sdk_version": "0.38.0"})
    dynamic = api.post("/client/dynamic_config", json={"sdk_version": "0.38.0"})
    telemetry = api.post("/telemetry", json={"events": []})

    assert config.json()["use_pyqwest_transport"] is False
    assert config.json()["pjwt_auth_enabled"] is False
    assert dynamic.status_code == 404
    assert telemetry.json() == {"status": "accepted"}
    assert api.get("/healthz").json() == {"status": "ok"}


def test_model_and_weights_info(fake: FakeTinkerControl, api: httpx.Client) -> None:
    fake.seed_run(RUN, checkpoints=["a"], lora_rank=4)

    info = api.post("/get_info", json={"model_id": RUN, "type": "get_info"})
    weights = api.post(
        "/weights_info", json={"tinker_path": f"tinker://{RUN}/weights/a"}
    )
    missing = api.post(
        "/weights_info", json={"tinker_path": f"tinker://{RUN}/weights/zz"}
    )
    malformed = api.post("/weights_info", json={"tinker_path": "tinker://x"})

    assert info.json()["model_id"] == RUN
    assert info.json()["model_data"]["model_name"] == "Qwen/Qwen3-8B"
    assert weights.json() == {
        "base_model": "Qwen/Qwen3-8B",
        "is_lora": True,
        "lora_rank": 4,
    }
    assert (missing.status_code, malformed.status_code) == (404, 400)
    assert api.post("/get_info", json={"model_id": "ghost"}).status_code == 404


def test_training_runs_come_in_pages(
    fake: FakeTinkerControl, api: httpx.Client
) -> None:
    ids = [f"run-{n}:train:0" for n in range(5)]
    for run_id in ids:
        fake.seed_run(run_id)

    page = api.get("/training_runs", params={"limit": 2, "offset": 1}).json()
    everything = api.get("/training_runs").json()

    assert [r["training_run_id"] for r in page["training_runs"]] == ids[1:3]
    assert page["cursor"] == {"offset": 1, "limit": 2, "total_count": 5}
    assert len(everything["training_runs"]) == 5


def test_malformed_requests_are_422s(api: httpx.Client) -> None:
    session = api.post("/create_session", json={"tags": []}).json()["session_id"]

    no_path = api.post(
        "/load_weights",
        json={"session_id": session, "model_seq_id": 0, "optimizer": True},
    )
    negative = api.post(
        "/load_weights",
        json={"session_id": session, "model_seq_id": -1, "path": "p", "optimizer": 1},
    )

    assert (no_path.status_code, negative.status_code) == (422, 422)


@pytest.mark.parametrize(
    "path",
    ["tinker://run/weights", "https://x/weights/a", "tinker://run/foo/a"],
)
def test_loading_a_malformed_path_is_a_400(api: httpx.Client, path: str) -> None:
    session = api.post("/create_session", json={"tags": []}).json()["session_id"]

    answer = api.post(
        "/load_weights",
        json={
            "session_id": session,
            "model_seq_id": 0,
            "path": path,
            "optimizer": True,
        },
    )

    assert answer.status_code == 400


def test_keys_by_default_any_tml_key(fake_server: ThreadedServer) -> None:
    url = f"{fake_server.url}/api/v1/healthz"

    statuses = [
        httpx.get(url, headers=headers).status_code
        for headers in ({"X-API-Key": "tml-anything"}, {"X-API-Key": "tml-"}, {})
    ]

    assert statuses == [200, 401, 401]
    assert httpx.get(f"{fake_server.url}/_fake/settings").status_code == 200


def test_keys_when_configured_only_that_one() -> None:
    with serve(create_fake_tinker_app(api_key="tml-the-one")) as server:
        url = f"{server.url}/api/v1/healthz"
        statuses = [
            httpx.get(url, headers={"X-API-Key": key}).status_code
            for key in ("tml-the-one", "tml-another")
        ]

    assert statuses == [200, 401]


def test_a_fault_plays_before_the_key_is_checked(
    fake: FakeTinkerControl, fake_server: ThreadedServer
) -> None:
    fake.inject_fault("healthz", status=503)
    url = f"{fake_server.url}/api/v1/healthz"

    statuses = [httpx.get(url).status_code for _ in range(2)]

    assert statuses == [503, 401]
    calls = fake.calls("healthz")
    assert [(c.status, c.fault) for c in calls] == [(503, True), (401, False)]


def test_every_handler_and_dependency_is_a_coroutine() -> None:
    # A plain `def` would run in the thread pool, on every call.
    def calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
        if dependant.call is not None:
            yield dependant.call
        for sub in dependant.dependencies:
            yield from calls(sub)

    routes = [
        route
        for route in [*fake_app.api_router.routes, *fake_app.control_router.routes]
        if isinstance(route, APIRoute)
    ]
    found = [call for route in routes for call in calls(route.dependant)]
    found.append(fake_app._api_checks)

    assert len(routes) == 29
    blocking = {c.__name__ for c in found if not inspect.iscoroutinefunction(c)}
    assert blocking == set()
