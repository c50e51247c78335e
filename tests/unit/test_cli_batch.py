"""`greenchannel submit number-block`: a batch from a file, selectors, and the totals it prints."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pytest
from greenchannel.v1 import common_pb2, lifecycle_pb2, results_pb2

from broker.cli._main import parser_for
from broker.cli._options import CliError
from broker.cli._render import status_document, status_lines
from broker.cli._requests import build_request

NOW = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)


def parsed(*extra: str) -> argparse.Namespace:
    argv = ["submit", "number-block", "--as", "police-310115", "--case", "SH-PD-2026-0170", *extra]
    return parser_for(argv).parse_args(argv)


def test_a_numbers_file_is_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "numbers.txt"
    path.write_text("# seized SIM box\n+8613977700001\n\n+8618977700002\n", encoding="utf-8")
    order = build_request(parsed("--numbers-file", str(path)), now=NOW).number_block
    assert [p.e164 for p in order.phones] == ["+8613977700001", "+8618977700002"]
    assert not order.HasField("phone")


def test_selectors(tmp_path: Path) -> None:
    order = build_request(parsed("--issuing-batch", "B-2026-11", "--recipient", "carrier-cmcc"), now=NOW)
    assert order.number_block.selector.issuing_batch == "B-2026-11"
    args = parsed(
        "--cell", "460-00-22801-40961", "--from", "2026-11-01T08:00:00Z", "--to", "2026-11-01T09:00:00Z"
    )
    cell = build_request(args, now=NOW).number_block.selector.cell
    assert cell.cell_id == "460-00-22801-40961"
    assert cell.window.end.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 1, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    "extra",
    [
        ("--phone", "+8613977700001", "--issuing-batch", "B1"),
        (),
        ("--cell", "460-00-22801-40961"),
        ("--issuing-batch", "B1", "--from", "2026-11-01T08:00:00Z"),
    ],
)
def test_exactly_one_target(extra: tuple[str, ...]) -> None:
    with pytest.raises(CliError):
        build_request(parsed(*extra), now=NOW)


def test_totals_are_printed() -> None:
    status = lifecycle_pb2.RequestStatus(id="r1", state=common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED)
    status.result.outcome = common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED
    status.result.block.items.add(index=0, state=results_pb2.BLOCK_ITEM_STATE_BLOCKED)
    status.result.block.items.add(index=1, state=results_pb2.BLOCK_ITEM_STATE_NOT_OURS)
    status.result.block.totals.CopyFrom(results_pb2.BlockTotals(blocked=1, not_ours=1))
    assert any(
        "2: 1 blocked, 0 already blocked, 0 not found, 1 not ours" in line for line in status_lines(status)
    )
    assert status_document(status)["block_totals"] == {
        "items": 2,
        "blocked": 1,
        "already_blocked": 0,
        "not_found": 0,
        "not_ours": 1,
    }
