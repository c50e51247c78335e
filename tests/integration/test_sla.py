"""Green-channel SLAs on the real stack: NATS message schedules, the broker's deadline watch, holds.

Deadlines are the shipped CN policy scaled down (or hold rules set short) so timers fire in
about a second. The tests wait for what must happen (events, notices, fired timers), never for
a fixed time, and never assert how late a timer was.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, requests_pb2, results_pb2
from nats.js.api import AckPolicy, ConsumerConfig

from agencies import DEFAULT_SLA_POLICY_PATH
from broker.client import error_details
from broker.hub import SlaPolicy, load_sla_policy
from broker.protocol import (
    BROKER_ID,
    DEADLINES_STREAM,
    NOTICES_STREAM,
    OpenedEnvelope,
    SystemClock,
    fetch_batch,
    notice_subject,
    verify_detached,
)
from tests._sla import DEFAULT_SLA_POLICY
from tests._wait import eventually
from tests.integration.broker_world import BANK, POLICE, World, broker_world, stop_payment

pytestmark = pytest.mark.integration

S = common_pb2
EXTENDED = S.REQUEST_STATE_EXTENDED
# 30 s to deliver becomes 0.6 s; the reminder comes at half of it.
FAST = DEFAULT_SLA_POLICY.scaled(0.02)


def with_holds(tmp_path: Path, *, validity: str, extension: str) -> SlaPolicy:
    """The shipped CN policy with a short stop-payment hold: same file format, other numbers."""
    text = DEFAULT_SLA_POLICY_PATH.read_text(encoding="utf-8")
    section = text.index("\n[hold.stop_payment]") + 1
    end = text.index("\n\n", section)
    short = (
        f'[hold.stop_payment]\nvalidity = "{validity}"\nextension = "{extension}"\n'
        "max_extensions = 2\nconvertible_to_freeze = true"
    )
    path = tmp_path / "short-holds.toml"
    path.write_text(text[:section] + short + text[end:], encoding="utf-8")
    return load_sla_policy(path)


def events_of(status: lifecycle_pb2.RequestStatus) -> list[lifecycle_pb2.LifecycleEvent]:
    return [lifecycle_pb2.LifecycleEvent.FromString(r.event.payload) for r in status.events]


async def follow_until(
    world: World, request_id: str, done: object, *, within: float = 60.0
) -> list[lifecycle_pb2.LifecycleEvent]:
    """Watch a request until ``done(events)`` holds; return its events so far."""
    seen: list[lifecycle_pb2.LifecycleEvent] = []
    async with world.client(world.brokers[-1]) as police:

        async def follow() -> None:
            async for update in police.watch(request_id=request_id):
                seen.append(lifecycle_pb2.LifecycleEvent.FromString(update.event.event.payload))
                if done(seen):  # type: ignore[operator]
                    return

        await asyncio.wait_for(follow(), within)
    return seen


def has(state: int, phase: int | None = None) -> object:
    return lambda events: any(e.state == state and (phase is None or e.phase == phase) for e in events)


async def execute_as_bank(world: World, request_id: str, *, hold_until: Timestamp | None = None) -> None:
    opened = next(o for o in await world.inbox(BANK) if o.header.id == request_id)
    await world.adapter_event(opened, S.REQUEST_STATE_DELIVERED)
    await world.adapter_event(opened, S.REQUEST_STATE_ACKNOWLEDGED)
    result = results_pb2.Result(
        outcome=S.REQUEST_STATE_EXECUTED, amount_held=common_pb2.Money(currency="CNY", minor_units=4_800_000)
    )
    if hold_until is not None:
        result.hold_until.CopyFrom(hold_until)
    await world.adapter_event(opened, S.REQUEST_STATE_EXECUTED, result=result)


async def test_reminder_at_half_then_breach_escalates_to_duty_desk_and_supervisor(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        await world.start_broker(sla=FAST)
        notices = await world.js.pull_subscribe(
            "gc.notice.>",
            durable=f"notices-{uuid.uuid4().hex[:6]}",
            stream=NOTICES_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE),
        )
        async with world.client(world.brokers[0]) as police:
            request_id = (await police.submit(stop_payment())).status.id
        events = await follow_until(world, request_id, has(S.REQUEST_STATE_ESCALATED, S.PHASE_DELIVER))
        kinds = [
            (e.state, e.phase)
            for e in events
            if e.state in (S.REQUEST_STATE_REMINDED, S.REQUEST_STATE_ESCALATED)
        ]
        assert kinds[:2] == [
            (S.REQUEST_STATE_REMINDED, S.PHASE_DELIVER),
            (S.REQUEST_STATE_ESCALATED, S.PHASE_DELIVER),
        ]
        breach = next(e for e in events if e.state == S.REQUEST_STATE_ESCALATED)
        assert breach.actor == BROKER_ID
        assert breach.reason == results_pb2.REASON_CODE_DEADLINE_BREACHED
        assert "duty desk" in breach.detail
        assert "regulator-pboc" in breach.detail
        async with world.client(world.brokers[0]) as police:
            status = await police.get(request_id)
        deliver = next(p for p in status.deadlines.phases if p.phase == S.PHASE_DELIVER)
        assert deliver.breached
        assert status.state == S.REQUEST_STATE_SUBMITTED  # escalation annotates, it does not move the state

        got: dict[str, list[int]] = {}

        async def breach_told_to_supervisor() -> bool:
            for msg in await fetch_batch(notices, 50, 0.25):
                signed = envelope_pb2.SignedMessage.FromString(msg.data)
                notice = lifecycle_pb2.EscalationNotice.FromString(signed.payload)
                verify_detached(
                    signed.signature,
                    signed.payload,
                    keys=world.registry,
                    audience=notice.addressee,
                    clock=SystemClock(),
                    expected_issuer=BROKER_ID,
                    max_ttl=None,  # notices stay verifiable for as long as the duty desk keeps them
                )
                assert msg.subject == notice_subject(notice.addressee)
                if notice.request_id == request_id and notice.phase == S.PHASE_DELIVER:
                    got.setdefault(notice.addressee, []).append(notice.kind)
            return lifecycle_pb2.NOTICE_KIND_BREACH in got.get("regulator-pboc", [])

        await eventually(breach_told_to_supervisor, every=0.0, what="the supervisor's breach notice")
        assert got[BANK][:2] == [lifecycle_pb2.NOTICE_KIND_REMINDER, lifecycle_pb2.NOTICE_KIND_BREACH]
        assert got["regulator-pboc"] == [lifecycle_pb2.NOTICE_KIND_BREACH]


async def test_a_timer_whose_phases_are_done_does_nothing(tmp_path: Path) -> None:
    # Long enough that the bank answers well before the first reminder (5 s), even on a loaded machine.
    policy = DEFAULT_SLA_POLICY.scaled(1 / 3)
    async with broker_world(tmp_path) as world:
        await world.start_broker(sla=policy)
        async with world.client(world.brokers[0]) as police:
            request_id = (await police.submit(stop_payment())).status.id
            await execute_as_bank(world, request_id)
            await police.wait_for(request_id, {S.REQUEST_STATE_EXECUTED})
        # Wait for the timer to fire and for the broker to have handled (acked) it.
        subject = f"gc.deadline.fired.{request_id}.sla"
        fired = await world.js.pull_subscribe(
            subject, durable=f"fired-{uuid.uuid4().hex[:6]}", stream=DEADLINES_STREAM
        )
        [msg] = await fetch_batch(fired, 1, 60.0)
        seq = msg.metadata.sequence.stream

        async def handled() -> bool:
            info = await world.js.consumer_info(DEADLINES_STREAM, "broker-deadlines")
            return bool(info.ack_floor.stream_seq >= seq)

        await eventually(handled, what="the broker handled the fired timer")
        async with world.client(world.brokers[0]) as police:
            status = await police.get(request_id)
        states = [e.state for e in events_of(status)]
        assert S.REQUEST_STATE_REMINDED not in states
        assert S.REQUEST_STATE_ESCALATED not in states
        assert not any(p.breached for p in status.deadlines.phases)


async def test_timers_set_before_a_broker_restart_fire_after_it(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker(sla=FAST)
        async with world.client(broker) as police:
            request_id = (await police.submit(stop_payment())).status.id
        await broker.aclose()
        world.brokers.clear()
        await asyncio.sleep(1.0)  # the deliver reminder (0.3 s) and breach (0.6 s) fire with no broker up
        await world.start_broker(sla=FAST)
        events = await follow_until(world, request_id, has(S.REQUEST_STATE_ESCALATED, S.PHASE_DELIVER))
        assert has(S.REQUEST_STATE_REMINDED, S.PHASE_DELIVER)(events)  # type: ignore[operator]


async def test_a_stop_payment_lapses_and_the_bank_is_told_to_lift_it(tmp_path: Path) -> None:
    policy = with_holds(tmp_path, validity="2s", extension="1s")
    async with broker_world(tmp_path) as world:
        await world.start_broker(sla=policy)
        async with world.client(world.brokers[0]) as police:
            request_id = (await police.submit(stop_payment())).status.id
            await execute_as_bank(world, request_id)
            events = await follow_until(world, request_id, has(S.REQUEST_STATE_EXPIRED))
            expired = next(e for e in events if e.state == S.REQUEST_STATE_EXPIRED)
            assert expired.actor == BROKER_ID
            assert expired.reason == results_pb2.REASON_CODE_EXPIRED
            # The bank gets a release signed by the broker, naming only the hold.
            found: list[OpenedEnvelope] = []

            async def released() -> bool:
                found[:] = [
                    o for o in await world.inbox(BANK, wait=0.25) if o.header.type == S.REQUEST_TYPE_RELEASE
                ]
                return bool(found)

            await eventually(released, every=0.0, what="a release in the bank's inbox")
            release = found[0]
            assert release.header.sender == BROKER_ID
            assert release.request.release.target_request_id == request_id
            assert not release.request.release.HasField("account")
            assert release.header.parent_id == request_id
            listed = await police.list(types=[S.REQUEST_TYPE_RELEASE])
        assert [s.id for s in listed.requests] == [release.header.id]  # the police see it too


async def test_an_extension_moves_the_expiry_and_the_third_is_refused(tmp_path: Path) -> None:
    # Long enough that each extension is asked and answered before the hold lapses, even on a
    # loaded machine; the test waits for the lapse at the end, so not longer than that.
    validity, extension = 6, 3
    policy = with_holds(tmp_path, validity=f"{validity}s", extension=f"{extension}s")
    async with broker_world(tmp_path) as world:
        await world.start_broker(sla=policy)
        async with world.client(world.brokers[0]) as police:
            status = (await police.submit(stop_payment())).status
            await execute_as_bank(world, status.id)
            await police.wait_for(status.id, {S.REQUEST_STATE_EXECUTED})
            first_end = status.deadlines.hold_expires_at.ToDatetime(tzinfo=UTC)
            for round_ in (1, 2):
                extend = requests_pb2.Request(
                    case_ref=status.case_ref,
                    priority=S.PRIORITY_GREEN,
                    extend=requests_pb2.Extend(
                        target_request_id=status.id,
                        account=common_pb2.BankAccountRef(
                            account_number="6222020200001234567", holder_name="李某"
                        ),
                    ),
                )
                accepted = await police.extend(extend)
                assert accepted.target_id == status.id
                await execute_as_bank(world, accepted.id, hold_until=accepted.deadlines.hold_expires_at)
                target = await police.wait_for(accepted.id, {S.REQUEST_STATE_EXECUTED})

                async def extended(round_: int = round_) -> bool:
                    events = events_of(await police.get(status.id))
                    return len([e for e in events if e.state == S.REQUEST_STATE_EXTENDED]) == round_

                await eventually(extended, what=f"extension {round_} on the hold")
                assert target.id == accepted.id
            held = await police.get(status.id)
            new_end = held.deadlines.hold_expires_at.ToDatetime(tzinfo=UTC)
            assert new_end == first_end + timedelta(seconds=2 * extension)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await police.extend(extend)
            details = error_details(caught.value)
            assert details.code == grpc.StatusCode.FAILED_PRECONDITION
            assert details.reason == "EXTENSION_LIMIT"
            # The first expiry timer was superseded: the hold lapses only at the new end.
            events = await follow_until(world, status.id, has(S.REQUEST_STATE_EXPIRED))
        order = [e.state for e in events if e.state in (S.REQUEST_STATE_EXTENDED, S.REQUEST_STATE_EXPIRED)]
        assert order == [S.REQUEST_STATE_EXTENDED, S.REQUEST_STATE_EXTENDED, S.REQUEST_STATE_EXPIRED]
        expired = next(e for e in events if e.state == S.REQUEST_STATE_EXPIRED)
        assert expired.at.ToDatetime(tzinfo=UTC) >= new_end.replace(microsecond=0)
        assert status.sender == POLICE
