"""Deadline timers as NATS message schedules: durable, cluster-wide, and gone with the request.

A request's deadlines form a ladder: for each phase a reminder (at ``reminder_at`` of its time)
and a breach (at its deadline). The broker keeps ONE one-shot schedule per request, for the next
rung: the server stores it in the GC_DEADLINES stream and fires it at its time onto
``gc.deadline.fired.<request>.sla``, whichever broker replica is up, after any restart. Handling
a fired rung sets the next one. So a request costs one timer write at intake, and one fired
message that is ignored if its phases were all done by then. A hold's expiry is a second,
separate schedule; publishing on the same subject replaces the earlier schedule, which is how an
extension moves it. A fired timer carries what it was set for; the broker ignores it when the
phase is already done or the deadline has moved since.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2
from nats.js.client import JetStreamContext

from broker.protocol import deadline_fired_subject, deadline_subject

from ._errors import UnavailableError

__all__ = ["PHASE_NAMES", "DeadlineScheduler", "TimerKind", "TimerPayload"]

PHASE_NAMES: dict[common_pb2.Phase.ValueType, str] = {
    common_pb2.PHASE_DELIVER: "deliver",
    common_pb2.PHASE_ACKNOWLEDGE: "acknowledge",
    common_pb2.PHASE_EXECUTE: "execute",
}
_PHASES_BY_NAME = {name: phase for phase, name in PHASE_NAMES.items()}


class TimerKind:
    REMINDER = "reminder"
    BREACH = "breach"
    EXPIRY = "expiry"


@dataclass(frozen=True, kw_only=True)
class TimerPayload:
    """What a timer was set for; it travels in the schedule's body and comes back when it fires."""

    request_id: str
    kind: str
    phase: str
    """``deliver``, ``acknowledge``, ``execute`` or ``hold``."""
    due_at: datetime
    """The deadline the timer belongs to (for a reminder: the phase's deadline, not the reminder time)."""
    fire_at: datetime

    def encode(self) -> bytes:
        return json.dumps(
            {
                "request_id": self.request_id,
                "kind": self.kind,
                "phase": self.phase,
                "due_at": self.due_at.isoformat(),
                "fire_at": self.fire_at.isoformat(),
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> TimerPayload:
        raw = json.loads(data)
        return cls(
            request_id=str(raw["request_id"]),
            kind=str(raw["kind"]),
            phase=str(raw["phase"]),
            due_at=datetime.fromisoformat(raw["due_at"]),
            fire_at=datetime.fromisoformat(raw["fire_at"]),
        )

    @property
    def phase_enum(self) -> common_pb2.Phase.ValueType:
        return _PHASES_BY_NAME.get(self.phase, common_pb2.PHASE_UNSPECIFIED)


_KIND_RANK = {TimerKind.REMINDER: 0, TimerKind.BREACH: 1}


def _key(rung: TimerPayload) -> tuple[datetime, int, int]:
    return (rung.fire_at, int(rung.phase_enum), _KIND_RANK.get(rung.kind, 2))


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeadlineScheduler:
    """Sets the timers of a request."""

    def __init__(self, js: JetStreamContext, *, reminder_at: float = 0.5) -> None:
        if not 0 < reminder_at < 1:
            raise ValueError("reminder_at is a fraction of a phase's time, between 0 and 1")
        self._js = js
        self._reminder_at = reminder_at

    async def set(self, payload: TimerPayload, timer: str) -> None:
        """Set (or replace) the one-shot timer ``timer`` of the payload's request."""
        headers = {
            "Nats-Schedule": f"@at {_rfc3339(payload.fire_at)}",
            "Nats-Schedule-Target": deadline_fired_subject(payload.request_id, timer),
        }
        try:
            await self._js.publish(
                deadline_subject(payload.request_id, timer), payload.encode(), headers=headers
            )
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot set a deadline timer: {exc}") from exc

    def ladder(self, status: lifecycle_pb2.RequestStatus) -> list[TimerPayload]:
        """Every rung of the request's phases still open, in firing order."""
        start = status.submitted_at.ToDatetime(tzinfo=UTC)
        rungs: list[tuple[tuple[datetime, int, int], TimerPayload]] = []
        for deadline in status.deadlines.phases:
            name = PHASE_NAMES.get(deadline.phase)
            if name is None or not deadline.HasField("due_at") or deadline.HasField("done_at"):
                continue
            due = deadline.due_at.ToDatetime(tzinfo=UTC)
            reminder = start + (due - start) * self._reminder_at
            for rank, (kind, fire_at) in enumerate(((TimerKind.REMINDER, reminder), (TimerKind.BREACH, due))):
                payload = TimerPayload(
                    request_id=status.id, kind=kind, phase=name, due_at=due, fire_at=fire_at
                )
                rungs.append(((fire_at, int(deadline.phase), rank), payload))
        return [payload for _, payload in sorted(rungs, key=lambda rung: rung[0])]

    async def schedule_next(
        self, status: lifecycle_pb2.RequestStatus, *, after: TimerPayload | None = None
    ) -> TimerPayload | None:
        """Set the timer for the first open rung after ``after`` (the rung that just fired)."""
        rungs = self.ladder(status)
        if after is not None:
            key = _key(after)
            rungs = [rung for rung in rungs if _key(rung) > key]
        if not rungs:
            return None
        await self.set(rungs[0], "sla")
        return rungs[0]

    async def schedule_expiry(self, status: lifecycle_pb2.RequestStatus) -> None:
        """The hold's expiry; replaces any earlier expiry timer of the request."""
        deadlines: envelope_pb2.Deadlines = status.deadlines
        if not deadlines.HasField("hold_expires_at"):
            return
        due = deadlines.hold_expires_at.ToDatetime(tzinfo=UTC)
        payload = TimerPayload(
            request_id=status.id, kind=TimerKind.EXPIRY, phase="hold", due_at=due, fire_at=due
        )
        await self.set(payload, "hold-expiry")
