"""Hub errors -> rich gRPC statuses -> ErrorDetails, without a server (guards: tests/integration)."""

from __future__ import annotations

import re
from datetime import timedelta

import grpc
import grpc.aio
import nats.errors
import nats.js.errors
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from structlog.testing import capture_logs

from broker.client import ErrorDetails, error_details
from broker.hub import _errors
from broker.hub._errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConflictError,
    HubError,
    IllegalTransitionError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    PolicyError,
    UnavailableError,
    UnroutableError,
)
from broker.hub._grpc_status import CODES, ERROR_DOMAIN, rpc_status, status_code, to_hub_error
from broker.protocol import (
    DigestMismatchError,
    FieldViolation,
    InvalidMessageError,
    NatsError,
    NatsServerError,
    RegistryError,
)

DETAILS_KEY = "grpc-status-details-bin"


def _as_call_error(status: grpc.Status) -> grpc.aio.AioRpcError:
    """What a client receives for ``status``: a real AioRpcError with the status' trailers."""
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )


def _round_trip(error: HubError) -> ErrorDetails:
    return error_details(_as_call_error(rpc_status(error)))


def _status_proto(error: HubError) -> status_pb2.Status:
    (key, value), *_ = rpc_status(error).trailing_metadata
    assert key == DETAILS_KEY
    return status_pb2.Status.FromString(value)


# -- codes --------------------------------------------------------------------------------------


def test_every_hub_error_class_has_the_code_of_the_tree_docstring() -> None:
    assert dict(CODES) == {
        HubError: grpc.StatusCode.INTERNAL,
        AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
        PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
        InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
        UnroutableError: grpc.StatusCode.FAILED_PRECONDITION,
        IllegalTransitionError: grpc.StatusCode.FAILED_PRECONDITION,
        NotFoundError: grpc.StatusCode.NOT_FOUND,
        AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
        ConflictError: grpc.StatusCode.ABORTED,
        UnavailableError: grpc.StatusCode.UNAVAILABLE,
        OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
        PolicyError: grpc.StatusCode.INTERNAL,
    }
    exported = {getattr(_errors, name) for name in _errors.__all__}
    assert exported == set(CODES)
    # The tree docstring lists "├── ClassName  CODE  why" for every subclass.
    tree = {match[1]: match[2] for match in re.finditer(r"── (\w+)\s+([A-Z_]+)\s", _errors.__doc__ or "")}
    assert tree == {cls.__name__: code.name for cls, code in CODES.items() if cls is not HubError}


def test_a_subclass_takes_the_code_of_its_nearest_base() -> None:
    class ExpiredHoldError(IllegalTransitionError):
        pass

    assert status_code(ExpiredHoldError("x")) is grpc.StatusCode.FAILED_PRECONDITION
    assert status_code(HubError("x")) is grpc.StatusCode.INTERNAL


# -- to_hub_error ---------------------------------------------------------------------------------


def test_hub_errors_pass_through_unchanged() -> None:
    error = NotFoundError("no request 0190", reason="NO_SUCH_REQUEST")
    assert to_hub_error(error) is error


def test_field_rule_violations_become_invalid_request_with_every_violation() -> None:
    violations = (
        FieldViolation(field="stop_payment.amount", rule="int64.gt", description="must be > 0"),
        FieldViolation(field="case.case_number", rule="string.min_len", description="required"),
    )
    error = to_hub_error(InvalidMessageError("request breaks the contract", violations))
    assert isinstance(error, InvalidRequestError)
    assert error.reason == "INVALID_REQUEST"
    assert error.violations == violations
    assert "stop_payment.amount" in str(error)


def test_a_body_signature_failure_names_the_signature_field_and_keeps_the_reason() -> None:
    exc = DigestMismatchError("body does not match the digest signed in 'r1'")
    error = to_hub_error(exc, signature_field="cancellation.signature")
    assert isinstance(error, InvalidRequestError)
    assert error.reason == "DIGEST_MISMATCH"
    assert error.violations == (
        FieldViolation(field="cancellation.signature", rule="DIGEST_MISMATCH", description=str(exc)),
    )
    assert to_hub_error(exc).violations[0].field == "request.signature"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "exc",
    [
        NatsError("publish: timed out", code=503),
        NatsServerError("nats-server did not start"),
        nats.errors.ConnectionClosedError(),
        nats.errors.NoRespondersError(),
        nats.js.errors.ServiceUnavailableError(),
        TimeoutError(),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_nats_failures_and_timeouts_become_unavailable(exc: BaseException) -> None:
    error = to_hub_error(exc)
    assert type(error) is UnavailableError
    assert error.reason == "UNAVAILABLE"
    # Internals (stream names, server codes) are for the operator's log, not the caller.
    assert "503" not in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("db password=hunter2"),
        KeyError("secret"),
        RegistryError("directory.toml broken"),
        PolicyError("unknown kind 'bnak'", file="/etc/greenchannel/policy.toml", field="rule[3].to"),
        HubError("a raw HubError is a server fault"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_anything_else_is_a_bare_internal_error_logged_with_its_traceback(exc: BaseException) -> None:
    try:
        raise exc
    except Exception as raised:
        with capture_logs() as logs:
            error = to_hub_error(raised)
    assert isinstance(error, HubError)
    assert status_code(error) is grpc.StatusCode.INTERNAL
    assert error.reason == "INTERNAL"
    assert str(error) == "internal error"
    (event,) = logs
    assert event["log_level"] == "error"
    assert event["exc_info"] is exc
    assert event["error_type"] == type(exc).__name__
    # A servicer may translate first (`raise to_hub_error(exc) from exc`); the guard then
    # translates again, which must neither change the error nor log it twice.
    with capture_logs() as again:
        assert to_hub_error(error) is error
    assert again == []


# -- rpc_status / error_details round trip ------------------------------------------------------


def test_every_status_carries_error_info_with_reason_and_domain() -> None:
    status = _status_proto(AuthenticationError("token expired", reason="EXPIRED_TOKEN"))
    assert status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert status.message == "token expired"
    (packed,) = status.details
    info = error_details_pb2.ErrorInfo()
    assert packed.Unpack(info)
    assert info.reason == "EXPIRED_TOKEN"
    assert info.domain == ERROR_DOMAIN == "greenchannel.io"
    assert dict(info.metadata) == {"retryable": "false"}

    details = _round_trip(AuthenticationError("token expired", reason="EXPIRED_TOKEN"))
    assert details == ErrorDetails(
        code=grpc.StatusCode.UNAUTHENTICATED,
        message="token expired",
        reason="EXPIRED_TOKEN",
        field_violations=(),
        precondition_subjects=(),
        retry_delay=None,
    )


def test_invalid_request_carries_bad_request_field_violations() -> None:
    error = InvalidRequestError(
        "bad request",
        (
            FieldViolation(field="stop_payment.amount", rule="int64.gt", description="must be > 0"),
            FieldViolation(field="case.case_number", rule="required", description="missing"),
        ),
    )
    details = _round_trip(error)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_REQUEST"
    assert details.field_violations == (
        ("stop_payment.amount", "must be > 0"),
        ("case.case_number", "missing"),
    )
    bad = error_details_pb2.BadRequest()
    assert any(packed.Unpack(bad) for packed in _status_proto(error).details)
    assert [v.reason for v in bad.field_violations] == ["int64.gt", "required"]


def test_a_flood_of_violations_is_capped_to_fit_one_trailer() -> None:
    many = tuple(
        FieldViolation(field=f"transfers[{i}].amount", rule="int64.gt", description="x" * 2000)
        for i in range(500)
    )
    status = rpc_status(InvalidRequestError("y" * 5000, many))
    assert sum(len(value) for _, value in status.trailing_metadata) < 8 * 1024 * 4
    details = error_details(_as_call_error(status))
    assert 0 < len(details.field_violations) < len(many)
    assert all(len(description) <= 512 for _, description in details.field_violations)
    assert len(details.message) <= 1024


def test_unroutable_carries_a_routing_precondition_failure() -> None:
    error = UnroutableError("no bank keeps account prefix 999", subject="stop_payment.account")
    details = _round_trip(error)
    assert details.code is grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "UNROUTABLE"
    assert details.precondition_subjects == ("stop_payment.account",)
    failure = error_details_pb2.PreconditionFailure()
    assert any(packed.Unpack(failure) for packed in _status_proto(error).details)
    (violation,) = failure.violations
    assert violation.type == "ROUTING"
    assert violation.description == "no bank keeps account prefix 999"


@pytest.mark.parametrize(
    ("error", "code", "delay"),
    [
        (UnavailableError("bus down"), grpc.StatusCode.UNAVAILABLE, timedelta(seconds=1)),
        (ConflictError("lost the race"), grpc.StatusCode.ABORTED, timedelta(milliseconds=200)),
    ],
)
def test_retryable_errors_carry_retry_info(error: HubError, code: grpc.StatusCode, delay: timedelta) -> None:
    details = _round_trip(error)
    assert details.code is code
    assert details.retry_delay == delay
    info = error_details_pb2.ErrorInfo()
    assert any(packed.Unpack(info) for packed in _status_proto(error).details)
    assert info.metadata["retryable"] == "true"


def test_a_status_without_details_parses_to_code_and_message_only() -> None:
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Deadline Exceeded",
    )
    assert error_details(bare) == ErrorDetails(
        code=grpc.StatusCode.DEADLINE_EXCEEDED,
        message="Deadline Exceeded",
        reason=None,
        field_violations=(),
        precondition_subjects=(),
    )


def test_garbage_details_are_ignored_rather_than_raised() -> None:
    broken = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((DETAILS_KEY, b"\xff\xff not a status")),
        details="boom",
    )
    details = error_details(broken)
    assert details.reason is None
    assert details.code is grpc.StatusCode.INTERNAL
