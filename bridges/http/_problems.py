"""Typed errors as HTTP answers: RFC 9457 problem details with the error's code."""

from __future__ import annotations

import asyncio
import logging
import math
from http import HTTPStatus
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec

from messages import AgentError, ErrorCode, PayloadTooLarge

logger: Final = logging.getLogger("actorfleet.http")

PROBLEM_JSON: Final = "application/problem+json"
CLIENT_CLOSED: Final = 499  # nginx's "client closed request": recorded, never sent

STATUS_OF: Final = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
_CODE_OF_STATUS: Final = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.FORBIDDEN,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.BAD_REQUEST,
    413: ErrorCode.BAD_REQUEST,
    415: ErrorCode.BAD_REQUEST,
    422: ErrorCode.BAD_REQUEST,
    429: ErrorCode.OVERLOADED,
    503: ErrorCode.UNAVAILABLE,
    504: ErrorCode.TIMEOUT,
}


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An error answer (RFC 9457 problem details), with the typed error's code.

    Attributes:
        title: The HTTP status phrase.
        status: The HTTP status.
        code: `bad_request`, `forbidden`, `not_found`, `overloaded`,
            `timeout`, `unavailable` or `internal`.
        detail: What went wrong, for a person.
        retry_after: Seconds after which a retry may succeed.
    """

    title: str
    status: int
    code: str
    detail: str = ""
    type: str = "about:blank"
    retry_after: float | None = None


PROBLEMS: Final = {
    status: ResponseSpec(data_container=Problem, media_type=PROBLEM_JSON, description=text)
    for status, text in (
        (400, "Malformed request or bad header"),
        (401, "API key missing"),
        (403, "API key refused"),
        (404, "No such agent type"),
        (413, "Body over http.max_body"),
        (422, "Body does not match the request type"),
        (429, "Overloaded; retry after Retry-After seconds"),
        (500, "The agent failed"),
        (503, "No agent of the type is available"),
        (504, "The deadline passed"),
    )
}


class ClientGone(Exception):
    """Raised when the HTTP client disconnects before its answer is ready."""


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    """A problem+json response (with `Retry-After` when a retry time is known)."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = retry_after_header(retry_after)
    body = problem_body(status, code, detail, retry_after=retry_after)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_body(
    status: int, code: str, detail: str, *, retry_after: float | None = None
) -> Problem:
    """The problem details of an answer with `status`."""
    return Problem(
        title=_phrase(status), status=status, code=code, detail=detail, retry_after=retry_after
    )


def retry_after_header(seconds: float) -> str:
    """`Retry-After` for `seconds`: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Closed Request" if status == CLIENT_CLOSED else "Error"


def status_of(error: BaseException) -> int:
    """The HTTP status a failure is answered with."""
    if isinstance(error, PayloadTooLarge):
        return 413
    if isinstance(error, ClientGone):
        return CLIENT_CLOSED
    if isinstance(error, AgentError):
        return STATUS_OF[error.code]
    if isinstance(error, HTTPException):
        return error.status_code
    return 500


def error_response(error: BaseException) -> Response[Problem]:
    """The problem+json answer to `error`; internal details stay in the log."""
    status = status_of(error)
    if isinstance(error, AgentError):
        return problem(status, error.code, error.message, retry_after=error.retry_after)
    if isinstance(error, ValidationException):
        detail = _validation_detail(error)
        # A body that is not JSON at all is malformed (400); JSON of the wrong shape, 422.
        status = 400 if "malformed" in detail else 422
        return problem(status, ErrorCode.BAD_REQUEST, detail)
    if isinstance(error, HTTPException):
        code = _CODE_OF_STATUS.get(error.status_code, ErrorCode.INTERNAL)
        # Keep the exception's own headers (Allow on a 405, WWW-Authenticate, ...).
        return problem(error.status_code, code, str(error.detail), headers=error.headers)
    logger.error("unexpected failure answering an HTTP request", exc_info=error)
    return problem(500, ErrorCode.INTERNAL, "internal error")


def _validation_detail(error: ValidationException) -> str:
    extra = error.extra
    if isinstance(extra, list) and extra:
        parts = [
            f"{item.get('key', '')}: {item.get('message', '')}".strip(": ")
            for item in extra
            if isinstance(item, dict)
        ]
        return "; ".join(p for p in parts if p) or str(error.detail)
    return str(error.detail)


def on_error(_request: Request[Any, Any, Any], error: Exception) -> Response[Problem]:
    return error_response(error)


async def unless_gone(
    request: Request[Any, Any, Any], answer: asyncio.Future[Any], *, budget: float | None = None
) -> Any:
    """`answer`'s result, unless the client disconnects or `budget` seconds pass first.

    Either way `answer` is cancelled.

    Raises:
        ClientGone: The client disconnected first.
        TimeoutError: `budget` passed first.
    """
    gone = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait(
            {answer, gone}, timeout=budget, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        gone.cancel()
    if answer in done:
        return answer.result()
    answer.cancel()
    if gone in done:
        msg = "the client disconnected"
        raise ClientGone(msg)
    raise TimeoutError


async def disconnected(request: Request[Any, Any, Any]) -> None:
    """Return when the client has gone away (the body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
