"""``greenchannel agencies``: what it refuses before it starts anything.

Running it for real (started, SIGKILLed, restarted, stopped with SIGTERM) is what the fault
scenarios do with every agencies process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agencies import DEFAULT_DIRECTORY
from agencies.demo import select_agencies
from broker.cli._agencies import add_parser as add_agencies_parser
from broker.cli._agencies import main, run_agencies
from broker.protocol import ProtocolError, load_directory


def _args(tmp_path: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, default=tmp_path)
    parser.add_argument("--directory", type=Path, default=DEFAULT_DIRECTORY)
    add_agencies_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["agencies", *argv])


def test_without_a_nats_url_it_says_where_to_point_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GREENCHANNEL_NATS_URL", raising=False)
    # configure_logging would bind structlog to this test's captured stderr, closed after it.
    monkeypatch.setattr("broker.cli._agencies.configure_logging", lambda *_a, **_k: None)
    assert main(["--state-dir", str(tmp_path)]) == 1
    assert "GREENCHANNEL_NATS_URL" in capsys.readouterr().err


def test_only_names_agencies_of_the_directory_that_run_a_service() -> None:
    registry = load_directory(DEFAULT_DIRECTORY)
    chosen = select_agencies(registry, ["bank-ccb", "bank-icbc"])
    assert [a.id for a in chosen] == ["bank-icbc", "bank-ccb"]  # directory order
    assert "regulator-pboc" not in [a.id for a in select_agencies(registry, [])]
    with pytest.raises(ProtocolError, match="not in the directory: bank-nowhere"):
        select_agencies(registry, ["bank-icbc", "bank-nowhere"])
    with pytest.raises(ProtocolError, match="regulators run no agency service"):
        select_agencies(registry, ["regulator-pboc"])


def test_a_bad_selection_fails_before_connecting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(tmp_path, "--only", "regulator-pboc", "--data", str(tmp_path / "data"))
    assert run_agencies(args, nats_url="nats://127.0.0.1:1") == 1
    assert "regulators run no agency service" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--only", ","], ["--ack-wait", "0"], ["--ack-wait", "soon"]])
def test_flags_are_checked(tmp_path: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _args(tmp_path, *argv)
