"""Exit statuses agree across commands (README.md): 2 for a usage error, whichever command, with
nothing started or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.cli._main import main


@pytest.mark.parametrize(
    "argv",
    [
        ["broker", "--tls-cert", "server.pem"],  # --tls-key and --tls-ca go with it
        ["broker", "--replicas", "9"],
    ],
)
def test_a_bad_option_combination_of_broker_is_a_usage_error(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GREENCHANNEL_NATS_URL", raising=False)
    state = tmp_path / "state"
    with pytest.raises(SystemExit) as done:
        main(["--state-dir", str(state), *argv])
    assert done.value.code == 2
    assert capsys.readouterr().err.startswith("greenchannel broker: --")
    assert not state.exists()  # no keys, no NATS store


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "revoke", "--agency", "bank-x", "--kid=nope", "--write", "{tmp}/none.toml"],
        ["cancel", "not-an-id", "--as", "police-310115", "--broker", "127.0.0.1:1"],
        ["trail", "SH-PD-2026-1121-0001", "--as", "police-310115", "--max-depth", "2"],
    ],
)
def test_usage_errors_exit_2_from_every_kind_of_command(argv: list[str], tmp_path: Path) -> None:
    assert main(["--state-dir", str(tmp_path), *(a.replace("{tmp}", str(tmp_path)) for a in argv)]) == 2


def test_ledger_verify_and_conformance_checks_speak_json_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "ledger.jsonl"
    bad.write_text("{\n", encoding="utf-8")
    assert main(["--state-dir", str(tmp_path), "ledger", "verify", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "UNREADABLE"
    assert main(["conformance", "bank", "--list-checks", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "bank"
    assert "bank.stop_payment" in {check["name"] for check in listed["checks"]}
