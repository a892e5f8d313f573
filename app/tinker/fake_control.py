"""A typed helper that drives a running fake Tinker through `/_fake/`.

    fake = FakeTinkerControl(server_url)
    run = fake.seed_run("run-1:train:0", checkpoints=["step-100", "step-200"])
    fake.corrupt(run.training_run_id)
    fake.inject_fault("load_weights", status=503, headers={"retry-after": "1"})
    ...
    assert fake.calls("load_weights")[0].idempotency_key is not None

Calls block, briefly; they suit async tests too while the fake runs in a
thread or process of its own (`tests.support.servers.serve`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx

from app.tinker.fake_faults import FakeCall, FaultSpec
from app.tinker.fake_state import FakeSettings, RunState, SeedCheckpoint, SeedRun
from app.tinker.types import Checkpoint, TrainingRun


class FakeTinkerControl:
    """Seeds, corrupts and breaks a fake Tinker server, and reads its call log."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        self._http = httpx.Client(
            base_url=f"{base_url.rstrip('/')}/_fake", timeout=timeout_s
        )

    def close(self) -> None:
        """Close the connection to the fake."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def reset(self) -> None:
        """Forget every run, session, future, fault, call and setting."""
        self._send("POST", "/reset")

    def settings(self) -> FakeSettings:
        """Read how the fake behaves."""
        return FakeSettings.model_validate(self._send("GET", "/settings"))

    def configure(self, **changes: Any) -> FakeSettings:
        """Change some settings (`future_delay_s`, `session_ttl_s`, ...)."""
        return FakeSettings.model_validate(self._send("PATCH", "/settings", changes))

    def set_future_delay(
        self, seconds: float = 0.0, *, pending_polls: int = 0
    ) -> FakeSettings:
        """Make futures answer try_again for `seconds` and `pending_polls` polls."""
        return self.configure(
            future_delay_s=seconds, future_pending_polls=pending_polls
        )

    def seed_run(
        self,
        run_id: str | None = None,
        *,
        checkpoints: Iterable[SeedCheckpoint | str] = (),
        **fields: Any,
    ) -> TrainingRun:
        """Create a run; a checkpoint given by name is a training one.

        `fields` are the other fields of `SeedRun`: base_model, corrupted, ...
        """
        seeds = [_checkpoint_seed(c) for c in checkpoints]
        seed = SeedRun(run_id=run_id, checkpoints=seeds, **fields)
        return TrainingRun.model_validate(self._send("POST", "/runs", _json(seed)))

    def add_checkpoint(self, run_id: str, name: str, **fields: Any) -> Checkpoint:
        """Save a checkpoint on a run; `fields` as in `SeedCheckpoint` (kind, ...)."""
        seed = SeedCheckpoint(name=name, **fields)
        answer = self._send("POST", f"/runs/{run_id}/checkpoints", _json(seed))
        return Checkpoint.model_validate(answer)

    def run_state(self, run_id: str) -> RunState:
        """Read a run with what the fake recorded about how it was made."""
        return RunState.model_validate(self._send("GET", f"/runs/{run_id}"))

    def corrupt(self, run_id: str) -> TrainingRun:
        """Mark a run corrupted."""
        return TrainingRun.model_validate(self._send("POST", f"/runs/{run_id}/corrupt"))

    def heal(self, run_id: str) -> TrainingRun:
        """Mark a run healthy."""
        return TrainingRun.model_validate(self._send("POST", f"/runs/{run_id}/heal"))

    def expire_checkpoint(
        self, tinker_path: str, at: datetime | None = None
    ) -> Checkpoint:
        """Make a checkpoint expire, a second ago unless `at` says when."""
        body = {"tinker_path": tinker_path, "expires_at": at and at.isoformat()}
        return Checkpoint.model_validate(
            self._send("POST", "/checkpoints/expire", body)
        )

    def remove_checkpoint(self, tinker_path: str) -> None:
        """Delete a checkpoint."""
        self._send("POST", "/checkpoints/remove", {"tinker_path": tinker_path})

    def inject_fault(self, endpoint: str, **fields: Any) -> FaultSpec:
        """Break the next matching calls; `fields` as in `FaultSpec`."""
        fault = FaultSpec(endpoint=endpoint, **fields)
        return FaultSpec.model_validate(self._send("POST", "/faults", _json(fault)))

    def faults(self) -> list[FaultSpec]:
        """The faults not used up yet."""
        return [FaultSpec.model_validate(f) for f in self._send("GET", "/faults")]

    def clear_faults(self) -> None:
        """Drop every fault."""
        self._send("DELETE", "/faults")

    def calls(
        self, endpoint: str | None = None, *, method: str | None = None
    ) -> list[FakeCall]:
        """The API calls received, oldest first, of one endpoint if named."""
        params = {"endpoint": endpoint, "method": method}
        found = self._send("GET", "/calls", params=params)
        return [FakeCall.model_validate(call) for call in found]

    def clear_calls(self) -> None:
        """Forget the calls received."""
        self._send("DELETE", "/calls")

    def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str | None] | None = None,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        response = self._http.request(method, path, json=body, params=query)
        response.raise_for_status()
        return response.json() if response.content else None


def _checkpoint_seed(checkpoint: SeedCheckpoint | str) -> SeedCheckpoint:
    if isinstance(checkpoint, str):
        return SeedCheckpoint(name=checkpoint)
    return checkpoint


def _json(model: SeedRun | SeedCheckpoint | FaultSpec) -> Any:
    return model.model_dump(mode="json", exclude_unset=True)
