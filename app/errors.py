"""Domain errors: each carries its HTTP status and a stable code."""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """An error the API reports as `{"error": code, "detail": ...}`."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: Any) -> None:
        super().__init__(detail if isinstance(detail, str) else self.code)
        self.detail = detail


class ValidationFailed(ServiceError):
    status_code = 422
    code = "validation_error"

    def __init__(self, field: str, message: str, location: str = "body") -> None:
        super().__init__([{"loc": [location, field], "msg": message, "type": "value"}])


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class PolicyNotFound(ServiceError):
    status_code = 404
    code = "policy_not_found"


class RunNotFound(ServiceError):
    status_code = 404
    code = "run_not_found"


class RecoveryNotFound(ServiceError):
    status_code = 404
    code = "recovery_not_found"


class RecoveryDisabled(ServiceError):
    status_code = 409
    code = "recovery_disabled"


class AlreadyPending(ServiceError):
    status_code = 409
    code = "already_pending"


class PolicyInUse(ServiceError):
    status_code = 409
    code = "policy_in_use"


class PolicyExists(ServiceError):
    status_code = 409
    code = "policy_exists"


class Unavailable(ServiceError):
    status_code = 503
    code = "unavailable"


class StaleAttempt(ServiceError):
    status_code = 409
    code = "stale_attempt"
