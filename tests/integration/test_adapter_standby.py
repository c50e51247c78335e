"""Two ``greenchannel adapter`` instances of one bank: a standby finishes what a killed one held.

Both pull from the bank's durable inbox consumers, each with a journal of its own. The first
instance is SIGKILLed after the bank executed its order but before the answer reached it: nothing
was acknowledged, so JetStream hands the message to the standby after the ack wait. The standby's
journal knows nothing of the request; the bank's idempotency by request id is what makes the
second call return the first execution instead of executing again.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from greenchannel.v1 import bank_pb2, common_pb2, lifecycle_pb2

from adapters import ExecutionState, IdempotencyStore
from agencies import build_reference_agency
from agencies.bank import BankCore, BankServicer
from broker.client import BusClient
from broker.protocol import SystemClock, key_overlay_path, load_agency_signing_key, load_directory

from .adapter_process import DIRECTORY, adapter_process, adapter_toml, broker_process
from .broker_world import BANK, POLICE, stop_payment

pytestmark = pytest.mark.integration

_BOUND = 60.0  # bounds a condition that never comes; not a timing assertion
_WITHIN = timedelta(seconds=_BOUND)
_OUTCOMES = frozenset(
    {
        common_pb2.REQUEST_STATE_EXECUTED,
        common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
        common_pb2.REQUEST_STATE_REJECTED,
        common_pb2.REQUEST_STATE_FAILED,
    }
)


class _AnswerLost(BankServicer):
    """The reference bank, except that the first stop-payment's answer never leaves: the order is
    executed and journalled, then the call hangs (the adapter dies before it hears back)."""

    def __init__(self, core: BankCore) -> None:
        super().__init__(core)
        self.calls: list[str] = []
        self.executed_first = asyncio.Event()
        self.release = asyncio.Event()

    async def StopPayment(
        self, request: bank_pb2.StopPaymentRequest, context: Any
    ) -> bank_pb2.StopPaymentResponse:
        self.calls.append(request.context.request_id)
        response = await super().StopPayment(request, context)
        if len(self.calls) == 1:
            self.executed_first.set()
            await self.release.wait()
        return response


def _journal(state_dir: Path, request_id: str) -> ExecutionState | None:
    with IdempotencyStore.in_state_dir(state_dir, clock=SystemClock()) as store:
        record = store.get(request_id)
    return None if record is None else record.state


async def test_a_standby_adapter_finishes_what_a_killed_instance_held_and_the_bank_executes_once(
    tmp_path: Path,
) -> None:
    async with broker_process(tmp_path / "operator") as broker:
        registry = load_directory(DIRECTORY, key_overlays=[key_overlay_path(broker.state_dir)])
        with build_reference_agency(registry.get(BANK), data_dir=tmp_path, clock=SystemClock()) as bank:
            assert isinstance(bank.core, BankCore)
            servicer = _AnswerLost(bank.core)
            async with replace(bank, servicer=servicer).server() as server:
                configs, journals = [], []
                for name in ("first", "standby"):
                    journals.append(tmp_path / name / "journal")
                    configs.append(tmp_path / name / "adapter.toml")
                    configs[-1].parent.mkdir()
                    configs[-1].write_text(
                        adapter_toml(broker, BANK, target=server.address, journal=journals[-1], health=False)
                    )
                police_key = load_agency_signing_key(broker.state_dir, POLICE)
                async with (
                    BusClient(broker.address, agency_id=POLICE, signing_key=police_key) as police,
                    adapter_process(configs[0]) as first,
                ):
                    submitted = await police.submit(stop_payment(minor_units=1_000_000))
                    request_id = submitted.status.id
                    await asyncio.wait_for(servicer.executed_first.wait(), _BOUND)
                    async with adapter_process(configs[1]) as standby:
                        first.process.kill()
                        await first.process.wait()
                        status = await police.wait_for(
                            request_id, _OUTCOMES, within=timedelta(seconds=_BOUND)
                        )
                        assert await standby.stop() == 0
                    servicer.release.set()
            # Called by both instances; executed once: one journal row, one hold, at the bank.
            assert servicer.calls == [request_id, request_id]
            assert bank.core.execution_count(request_id) == 1
            assert len(bank.core.holds_for(request_id)) == 1

    assert common_pb2.RequestState.Name(status.state) == "REQUEST_STATE_EXECUTED"
    # The killed instance started it and never finished; the standby finished it.
    assert _journal(journals[0], request_id) is ExecutionState.STARTED
    assert _journal(journals[1], request_id) is ExecutionState.TERMINAL
    outcomes = [
        lifecycle_pb2.LifecycleEvent.FromString(record.event.payload).state for record in status.events
    ]
    assert [state for state in outcomes if state in _OUTCOMES] == [common_pb2.REQUEST_STATE_EXECUTED]
