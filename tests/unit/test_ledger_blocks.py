"""How GC_LEDGER messages hold entries: blocks, and bare entries as written before blocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from greenchannel.v1 import ledger_pb2

from broker.hub import LedgerConfig
from broker.hub._ledger_blocks import (
    FIRST_SEQ_HEADER,
    block_msg_id,
    entry_msg_id,
    first_seq_of,
    pack_block,
    parse_block,
)
from broker.protocol import NatsError, build_entry, entry_hash, link_entry

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def _chain(count: int, *, first: int = 1, prev: str = "") -> list[bytes]:
    entries = []
    for seq in range(first, first + count):
        record = build_entry(
            kind=ledger_pb2.LEDGER_ENTRY_KIND_EVENT, actor="bank-icbc", at=T0 + timedelta(seconds=seq)
        )
        entries.append(link_entry(record, seq=seq, prev_hash=prev))
        prev = entry_hash(entries[-1])
    return entries


def test_a_block_keeps_every_entry_byte_for_byte() -> None:
    entries = _chain(5, first=7, prev="sha-256:previous")
    ids = [f"event:{i}" for i in range(5)]
    marks = {"GC_WATCH": 90, "GC_LEDGER_INTAKE": 12}
    block = parse_block(pack_block(entries, ids, marks), {FIRST_SEQ_HEADER: "7"}, position=42)
    assert (block.position, block.first_seq, block.record_ids, block.chained_to) == (42, 7, tuple(ids), marks)
    assert list(block.entries) == entries  # hashed as stored, so the chain is unchanged
    assert block.last.seq == 11
    assert first_seq_of(pack_block(entries, ids, marks), {FIRST_SEQ_HEADER: "7"}) == 7


def test_a_message_written_before_blocks_reads_as_a_block_of_one() -> None:
    [entry] = _chain(1, first=3, prev="sha-256:previous")
    block = parse_block(entry, {"Nats-Msg-Id": "entry:event:abc"}, position=5)
    assert (block.first_seq, block.entries, block.record_ids) == (3, (entry,), ("event:abc",))
    assert parse_block(entry, None, position=5).record_ids == ()
    assert block.chained_to == {}  # unknown: only redelivered records are looked for
    assert first_seq_of(entry, None) == 3


def test_a_block_that_does_not_parse_is_refused() -> None:
    with pytest.raises(NatsError):
        parse_block(b"\xff\xff", {FIRST_SEQ_HEADER: "1"}, position=1)
    with pytest.raises(NatsError):
        parse_block(b"", {FIRST_SEQ_HEADER: "1"}, position=1)  # no entries
    with pytest.raises(ValueError, match="one record id per entry"):
        pack_block(_chain(2), ["only-one"], {})


def test_block_message_ids_name_exactly_their_records() -> None:
    assert block_msg_id(["event:a"]) == entry_msg_id("event:a") == "entry:event:a"  # as before blocks
    both = block_msg_id(["event:a", "event:b"])
    assert both == block_msg_id(["event:a", "event:b"])
    assert both not in {block_msg_id(["event:b", "event:a"]), block_msg_id(["event:a", "event:b", "event:c"])}


@pytest.mark.parametrize(
    "change",
    [
        {"block_entries": 0},
        {"block_bytes": 100},
        {"block_bytes": 2 * 1024 * 1024},
        {"linger": -1.0},
        {"linger": 60.0},
    ],
)
def test_ledger_config_bounds_blocks(change: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="LedgerConfig"):
        LedgerConfig(**change)  # type: ignore[arg-type]
