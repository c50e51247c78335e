"""The adapter's idempotency store: started / terminal per request id, durable across reopen."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from greenchannel.v1 import common_pb2

from adapters import (
    EVENT_ID_NAMESPACE,
    AdapterError,
    ExecutionState,
    IdempotencyConflictError,
    IdempotencyStore,
    event_id_for,
    refusal_event_id,
)
from adapters._idempotency import (
    GroupCommitJournal,
    JournalOp,
    OpOutcome,
    StartOp,
    TerminalOp,
)
from broker.protocol import ManualClock

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
REQUEST = "01890a5d-ac96-774b-bcce-b302099a8057"
DIGEST = "sha-256:" + "A" * 43
OTHER_DIGEST = "sha-256:" + "B" * 43


@pytest.fixture
def store(tmp_path: Path) -> IdempotencyStore:
    return IdempotencyStore.in_state_dir(tmp_path / "state", clock=ManualClock(T0))


def test_unknown_request_has_no_record(store: IdempotencyStore) -> None:
    assert store.get(REQUEST) is None


def test_started_then_terminal(store: IdempotencyStore) -> None:
    started = store.mark_started(REQUEST, DIGEST)
    assert started.state is ExecutionState.STARTED
    assert started.starts == 1
    assert started.terminal_event is None
    assert store.get(REQUEST) == started

    done = store.record_terminal(REQUEST, DIGEST, event_id="e-1", signed_event=b"signed-bytes")
    assert done.state is ExecutionState.TERMINAL
    assert done.terminal_event == b"signed-bytes"
    assert done.event_id == "e-1"
    assert done.starts == 1


def test_restarting_counts_starts_until_terminal(store: IdempotencyStore) -> None:
    store.mark_started(REQUEST, DIGEST)
    assert store.mark_started(REQUEST, DIGEST).starts == 2
    store.record_terminal(REQUEST, DIGEST, event_id="e-1", signed_event=b"first")
    # Once terminal, starting again changes nothing: the caller replays the record.
    again = store.mark_started(REQUEST, DIGEST)
    assert again.state is ExecutionState.TERMINAL
    assert again.starts == 2
    assert again.terminal_event == b"first"


def test_the_first_terminal_event_stays(store: IdempotencyStore) -> None:
    store.mark_started(REQUEST, DIGEST)
    store.record_terminal(REQUEST, DIGEST, event_id="e-1", signed_event=b"first")
    kept = store.record_terminal(REQUEST, DIGEST, event_id="e-2", signed_event=b"second")
    assert kept.terminal_event == b"first"
    assert kept.event_id == "e-1"


def test_terminal_without_start_is_recorded(store: IdempotencyStore) -> None:
    # A REJECTED without calling anything never marks a start.
    done = store.record_terminal(REQUEST, DIGEST, event_id="e-1", signed_event=b"rejected")
    assert done.state is ExecutionState.TERMINAL
    assert done.starts == 0


def test_same_id_with_another_body_is_a_conflict(store: IdempotencyStore) -> None:
    store.mark_started(REQUEST, DIGEST)
    with pytest.raises(IdempotencyConflictError):
        store.mark_started(REQUEST, OTHER_DIGEST)
    with pytest.raises(IdempotencyConflictError):
        store.record_terminal(REQUEST, OTHER_DIGEST, event_id="e-x", signed_event=b"x")
    record = store.get(REQUEST)
    assert record is not None
    assert record.request_digest == DIGEST
    assert record.state is ExecutionState.STARTED


def test_records_survive_reopening(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    with IdempotencyStore.in_state_dir(tmp_path, clock=clock) as first:
        first.mark_started(REQUEST, DIGEST)
        first.record_terminal(REQUEST, DIGEST, event_id="e-1", signed_event=b"\x00signed\xff")
        first.mark_started("01890a5d-ac96-774b-bcce-b302099a8058", DIGEST)
    with IdempotencyStore.in_state_dir(tmp_path, clock=clock) as second:
        done = second.get(REQUEST)
        crashed = second.get("01890a5d-ac96-774b-bcce-b302099a8058")
    assert done is not None
    assert done.terminal_event == b"\x00signed\xff"
    assert crashed is not None
    assert crashed.state is ExecutionState.STARTED


def test_database_is_owner_only(store: IdempotencyStore) -> None:
    assert store.path.stat().st_mode & 0o077 == 0


def test_closed_store_refuses_and_close_is_idempotent(store: IdempotencyStore) -> None:
    store.close()
    store.close()
    with pytest.raises(AdapterError, match="closed"):
        store.get(REQUEST)


def test_concurrent_starts_from_threads_are_serialized(store: IdempotencyStore) -> None:
    def start() -> None:
        for _ in range(20):
            store.mark_started(REQUEST, DIGEST)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = store.get(REQUEST)
    assert record is not None
    assert record.starts == 80


def test_event_ids_are_deterministic_per_request_and_state() -> None:
    delivered = event_id_for(REQUEST, common_pb2.REQUEST_STATE_DELIVERED)
    assert delivered == event_id_for(REQUEST, common_pb2.REQUEST_STATE_DELIVERED)
    assert delivered != event_id_for(REQUEST, common_pb2.REQUEST_STATE_ACKNOWLEDGED)
    assert delivered == str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{REQUEST}/DELIVERED"))
    # Refusals are bound to the bytes received, so a forgery cannot take a genuine event's id.
    assert refusal_event_id(REQUEST, DIGEST) != event_id_for(REQUEST, common_pb2.REQUEST_STATE_FAILED)
    assert refusal_event_id(REQUEST, DIGEST) != refusal_event_id(REQUEST, OTHER_DIGEST)


def request_id(n: int) -> str:
    return f"01890a5d-ac96-774b-bcce-{n:012d}"


def test_a_batch_applies_in_order_in_one_transaction(store: IdempotencyStore) -> None:
    store.mark_started(REQUEST, DIGEST)
    outcomes = store.apply(
        [
            StartOp(request_id=request_id(1), request_digest=DIGEST),
            StartOp(request_id=REQUEST, request_digest=OTHER_DIGEST),  # refused alone
            TerminalOp(request_id=request_id(1), request_digest=DIGEST, event_id="e-1", signed_event=b"one"),
            StartOp(request_id=request_id(1), request_digest=DIGEST),  # terminal: unchanged
        ]
    )
    assert isinstance(outcomes[1], IdempotencyConflictError)
    first, _, terminal, again = outcomes
    assert not isinstance(first, Exception)
    assert first.state is ExecutionState.STARTED
    assert first.starts == 1
    assert terminal == again
    assert terminal == store.get(request_id(1))
    assert store.peek(request_id(1)) == terminal
    assert store.get(REQUEST) == store.peek(REQUEST)


def test_peek_reads_the_last_commit_and_refuses_once_closed(store: IdempotencyStore) -> None:
    assert store.peek(REQUEST) is None
    started = store.mark_started(REQUEST, DIGEST)
    assert store.peek(REQUEST) == started
    store.close()
    with pytest.raises(AdapterError, match="closed"):
        store.peek(REQUEST)


class CountingStore(IdempotencyStore):
    """Records the size of every batch committed."""

    batches: list[int]

    def apply(self, ops: Sequence[JournalOp]) -> list[OpOutcome]:
        self.batches.append(len(ops))
        return super().apply(ops)


async def test_concurrent_writes_share_one_commit_and_are_durable(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    store = CountingStore.in_state_dir(tmp_path, clock=clock)
    assert isinstance(store, CountingStore)
    store.batches = []
    journal = GroupCommitJournal(store)
    started = await asyncio.gather(*(journal.mark_started(request_id(n), DIGEST) for n in range(20)))
    assert [record.starts for record in started] == [1] * 20
    assert store.batches == [20]  # queued while none was committing: one transaction, one fsync

    results = await asyncio.gather(
        journal.record_terminal(request_id(0), DIGEST, event_id="e-0", signed_event=b"zero"),
        journal.mark_started(request_id(1), OTHER_DIGEST),  # conflicts: fails alone
        journal.record_terminal(request_id(2), DIGEST, event_id="e-2", signed_event=b"two"),
        return_exceptions=True,
    )
    assert isinstance(results[1], IdempotencyConflictError)
    await journal.aclose()
    store.close()

    with IdempotencyStore.in_state_dir(tmp_path, clock=clock) as reopened:
        zero, one, two = (reopened.get(request_id(n)) for n in range(3))
    assert zero is not None
    assert zero.terminal_event == b"zero"
    assert one is not None
    assert one.state is ExecutionState.STARTED
    assert two is not None
    assert two.event_id == "e-2"


async def test_a_commit_that_fails_fails_its_callers(tmp_path: Path) -> None:
    store = IdempotencyStore.in_state_dir(tmp_path, clock=ManualClock(T0))
    journal = GroupCommitJournal(store)
    store.close()
    with pytest.raises(AdapterError, match="closed"):
        await journal.mark_started(REQUEST, DIGEST)
    reopened = IdempotencyStore.in_state_dir(tmp_path, clock=ManualClock(T0))
    journal = GroupCommitJournal(reopened)
    assert (await journal.mark_started(REQUEST, DIGEST)).starts == 1
    await journal.aclose()
    reopened.close()
