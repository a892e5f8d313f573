"""Render every error as `{"error": code, "detail": ...}`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from app.errors import ServiceError, Unavailable

logger = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(
    status: int, code: str, detail: Any, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": code, "detail": jsonable_encoder(detail)}
    return JSONResponse(body, status_code=status, headers=headers)


def field_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    """The field errors, without echoing the rejected input back."""
    return [
        {"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]}
        for item in error.errors()
    ]


async def on_service_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else None
    return error_response(error.status_code, error.code, error.detail, headers)


async def on_validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return error_response(422, "validation_error", field_errors(error))


async def on_http_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    if error.status_code == 400:
        # A body the framework could not even parse (not JSON, not UTF-8) is
        # bad input like any other, and answered the same way.
        invalid = [{"loc": ["body"], "msg": str(error.detail), "type": "body_invalid"}]
        return error_response(422, "validation_error", invalid)
    code = HTTP_CODES.get(error.status_code, "http_error")
    return error_response(error.status_code, code, error.detail, error.headers)


async def on_database_busy(_request: Request, error: Exception) -> JSONResponse:
    # A lock wait that timed out, or a database that went away: nothing was
    # written, and the same request may simply be sent again.
    logger.warning(
        "request.database_unavailable", extra={"error": type(error).__name__}
    )
    busy = Unavailable("the database is busy or unreachable; try again")
    headers = {"Retry-After": "1"}
    return error_response(busy.status_code, busy.code, busy.detail, headers)


async def on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception(
        "request.failed", extra={"path": request.url.path, "method": request.method}
    )
    return error_response(500, "internal_error", "the service failed to answer")


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(OperationalError, on_database_busy)
    app.add_exception_handler(Exception, on_unexpected_error)
