"""The terminal answer to a request: the agency's result checked, sealed and redacted, or a failure.

Only the adapter seals: a data answer is sealed to the requester; onward transfers are redacted,
their full copy sealed to the requester and to the broker (which chases the money); the payouts of
a return of funds are redacted (no victim's account), their full copy sealed to the requester.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from greenchannel.v1 import common_pb2, results_pb2

from broker.protocol import (
    BROKER_ID,
    DATA_ANSWER_CONTENT_TYPE,
    Clock,
    InvalidMessageError,
    OpenedEnvelope,
    PublicKey,
    Registry,
    RegistryError,
    SealingError,
    current_broker_encryption_key,
    current_encryption_key,
    reason_name,
    seal,
    seal_result_details,
    validate_message,
)

from ._backends import BackendOutcome

__all__ = ["Answer", "AnswerBuilder", "failure"]

_log = structlog.get_logger(__name__)

_FAILED = common_pb2.REQUEST_STATE_FAILED


@dataclass(frozen=True, kw_only=True)
class Answer:
    """The terminal answer to one request, and whether an operator should look at it."""

    result: results_pb2.Result
    deadletter: str | None = None
    """Reason name to dead-letter the request under, when the adapter (not the agency) failed it."""
    error: str = ""
    """Name of the error behind an adapter-made failure, for the dead letter."""
    filed: bool = False
    """The agency filed the request for a later decision (an appeal): recorded as ACKNOWLEDGED."""


def failure(
    reason: results_pb2.ReasonCode.ValueType,
    detail: str,
    *,
    error: str,
    outcome: common_pb2.RequestState.ValueType = _FAILED,
) -> Answer:
    """An answer the adapter makes itself (FAILED is dead-lettered, REJECTED is not)."""
    return Answer(
        result=results_pb2.Result(outcome=outcome, reason=reason, detail=detail),
        deadletter=reason_name(reason) if outcome == _FAILED else None,
        error=error,
    )


def _missing_required(result: results_pb2.Result, field: str | None) -> str | None:
    """The required field an EXECUTED result leaves unset (a warning without its outcome), or None."""
    if field is None or result.outcome != common_pb2.REQUEST_STATE_EXECUTED:
        return None
    value = getattr(result, field)
    return None if value else field


class AnswerBuilder:
    """Turns what the agency system answered into the result the adapter signs."""

    def __init__(self, *, agency_id: str, registry: Registry, clock: Clock) -> None:
        self._agency_id = agency_id
        self._registry = registry
        self._clock = clock

    def answer_from(self, opened: OpenedEnvelope, outcome: BackendOutcome) -> Answer:
        """The agency's result, checked against the contract, with any data answer sealed and the
        onward transfers redacted (their full copy sealed to the requester and the broker)."""
        result = results_pb2.Result()
        result.CopyFrom(outcome.result)
        # Only the adapter seals; whatever the agency system put here is not ours to forward.
        for sealed_field in ("encrypted_payload", "sealed_details", "broker_details"):
            result.ClearField(sealed_field)
        try:
            validate_message(result, prefix="result.")
        except InvalidMessageError as exc:
            _log.warning("adapter.agency_result_invalid", fields=[v.field for v in exc.violations])
            return failure(
                results_pb2.REASON_CODE_INTERNAL,
                "agency system answered with a result that breaks the contract",
                error=type(exc).__name__,
            )
        missing = _missing_required(result, outcome.requires)
        if missing is not None:
            _log.warning("adapter.agency_result_incomplete", field=missing)
            return failure(
                results_pb2.REASON_CODE_INTERNAL,
                f"agency system answered EXECUTED without result.{missing}, which the contract requires",
                error="MissingResultFieldError",
            )
        if outcome.answer is not None:
            try:
                result.encrypted_payload.CopyFrom(self._seal_answer(opened, outcome.answer))
            except SealingError as exc:
                _log.warning("adapter.answer_not_sealed", error=str(exc))
                return failure(
                    results_pb2.REASON_CODE_INTERNAL,
                    "the answer could not be sealed to the requester",
                    error=type(exc).__name__,
                )
        if result.onward_transfers or result.returns:
            result = self._seal_details(opened, result)
        return Answer(result=result, filed=outcome.filed)

    def _seal_details(self, opened: OpenedEnvelope, result: results_pb2.Result) -> results_pb2.Result:
        """Redact the onward transfers and payouts; seal their full copy to the requester (and the
        transfers to the broker).

        The agency has already acted (a hold is in place), so a copy that cannot be sealed is left
        out and logged rather than turning the answer into a failure; the transfers are redacted
        whatever happens.
        """
        now = self._clock.now()
        requester = opened.header.sender
        requester_key: PublicKey | None = None
        broker_key: PublicKey | None = None
        try:
            broker_key = current_broker_encryption_key(self._registry, at=now)
        except SealingError as exc:
            _log.warning("adapter.details_not_sealed_to_broker", error=str(exc))
        if requester == BROKER_ID:
            # The broker asked itself (a chase, the release of a lapsed hold): both copies are its own.
            requester_key = broker_key
        else:
            try:
                requester_key = current_encryption_key(self._registry.get(requester), at=now)
            except (RegistryError, SealingError) as exc:
                _log.warning("adapter.details_not_sealed_to_requester", error=str(exc))

        def sealed(to_requester: PublicKey | None, to_broker: PublicKey | None) -> results_pb2.Result:
            return seal_result_details(
                result,
                request_id=opened.header.id,
                sender=self._agency_id,
                recipient=requester,
                requester_key=to_requester,
                broker_key=to_broker,
            )

        try:
            return sealed(requester_key, broker_key)
        except SealingError as exc:
            _log.warning("adapter.details_not_sealed", error=str(exc))
            return sealed(None, None)

    def _seal_answer(
        self, opened: OpenedEnvelope, answer: results_pb2.DataAnswer
    ) -> results_pb2.EncryptedPayload:
        requester = opened.header.sender
        try:
            agency = self._registry.get(requester)
        except RegistryError as exc:
            raise SealingError(f"requester {requester!r} is not in the registry") from exc
        return seal(
            answer.SerializeToString(),
            current_encryption_key(agency, at=self._clock.now()),
            request_id=opened.header.id,
            sender=self._agency_id,
            recipient=requester,
            content_type=DATA_ANSWER_CONTENT_TYPE,
        )
