"""How long the adapter waits for the agency system before it publishes ACKNOWLEDGED."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2

from adapters._acknowledge import DeferredAcknowledge, acknowledge_delay
from broker.protocol import NatsError
from tests._wait import eventually

NOW = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)


def header(**due_in: float) -> envelope_pb2.EnvelopeHeader:
    """A notarized header with phase deadlines ``deliver``/``acknowledge``/``execute`` seconds from NOW."""
    phases = []
    for name, seconds in due_in.items():
        due = Timestamp()
        due.FromDatetime(NOW + timedelta(seconds=seconds))
        phases.append(
            envelope_pb2.PhaseDeadline(phase=common_pb2.Phase.Value(f"PHASE_{name.upper()}"), due_at=due)
        )
    return envelope_pb2.EnvelopeHeader(deadlines=envelope_pb2.Deadlines(phases=phases))


@pytest.mark.parametrize(
    ("due_in", "grace", "expected"),
    [
        ({}, 0.25, 0.25),  # no deadline to mind: the grace
        ({"deliver": 30, "acknowledge": 120, "execute": 600}, 0.25, 0.25),  # the green SLA: far off
        ({"acknowledge": 0.4}, 0.25, 0.1),  # a quarter of the time left when that is shorter
        ({"deliver": 0.6, "acknowledge": 120}, 0.25, 0.15),  # the first open one of the two counts
        ({"execute": 0.1}, 0.25, 0.25),  # the execute deadline is met by the outcome itself
        ({"acknowledge": -5}, 0.25, 0.0),  # already late: at once
        ({"acknowledge": 120}, 0.0, 0.0),  # no grace: at once
    ],
)
def test_the_grace_never_reaches_past_a_deliver_or_acknowledge_deadline(
    due_in: dict[str, float], grace: float, expected: float
) -> None:
    assert acknowledge_delay(header(**due_in), now=NOW, grace=grace) == pytest.approx(expected)


# -- the deferred ACKNOWLEDGED ----------------------------------------------------------------------


class Sender:
    """Stands in for the publish of ACKNOWLEDGED: counts calls, finishes when told to, fails the
    first ``failures`` attempts as a NATS timeout would."""

    def __init__(self, failures: int = 0) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.finished = False
        self.failures = failures

    async def __call__(self) -> None:
        self.calls += 1
        await self.release.wait()
        if self.calls <= self.failures:
            raise NatsError("publish to gc.events...: timed out")
        self.finished = True


async def test_an_answer_within_the_grace_publishes_nothing() -> None:
    send = Sender()
    acknowledge = DeferredAcknowledge(send, 3600.0, retry=0.0)
    assert await acknowledge.settle() is False
    assert send.calls == 0


async def test_after_the_grace_the_outcome_waits_for_the_acknowledgeds_puback() -> None:
    send = Sender()
    acknowledge = DeferredAcknowledge(send, 0.0, retry=0.0)
    await eventually(lambda: send.calls == 1, what="the grace is over and ACKNOWLEDGED is publishing")
    settling = asyncio.ensure_future(acknowledge.settle())
    await asyncio.sleep(0)
    assert not settling.done()  # the PubAck is not back: the outcome must not go out yet
    send.release.set()
    assert await settling is True
    assert send.finished


async def test_a_failed_publish_is_tried_again_while_the_call_goes_on() -> None:
    send = Sender(failures=2)
    send.release.set()
    acknowledge = DeferredAcknowledge(send, 0.0, retry=0.0)
    await eventually(lambda: send.finished, what="ACKNOWLEDGED published at the third attempt")
    assert await acknowledge.settle() is True
    assert send.calls == 3


async def test_an_acknowledged_that_cannot_be_published_does_not_hold_the_outcome_back() -> None:
    send = Sender(failures=1)
    send.release.set()
    acknowledge = DeferredAcknowledge(send, 0.0, retry=3600.0)
    await eventually(lambda: send.calls == 1, what="ACKNOWLEDGED was attempted")
    assert await acknowledge.settle() is False  # not an hour later: no further attempt
    assert send.calls == 1


async def test_a_request_given_up_publishes_nothing_more() -> None:
    send = Sender()
    acknowledge = DeferredAcknowledge(send, 0.0, retry=0.0)
    await eventually(lambda: send.calls == 1, what="ACKNOWLEDGED is publishing")
    acknowledge.abandon()
    later = DeferredAcknowledge(send, 3600.0, retry=0.0)
    later.abandon()
    await asyncio.sleep(0)
    assert send.calls == 1
    assert not send.finished
