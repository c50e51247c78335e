"""Fault suite fixtures: the level from the environment, and the report printed at the end."""

from __future__ import annotations

import pytest

from ._scenarios import ScenarioReport
from ._settings import FaultSettings, settings_from_env

_REPORTS: list[ScenarioReport] = []


@pytest.fixture(scope="session")
def fault_settings() -> FaultSettings:
    """``short`` inside ``make test``; ``GREENCHANNEL_FAULTS_LEVEL=long`` (``make faults``) for more."""
    return settings_from_env()


@pytest.fixture
def fault_reports() -> list[ScenarioReport]:
    """Where a scenario test leaves its report for the summary."""
    return _REPORTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORTS:
        return
    terminalreporter.section("fault suite")
    for report in _REPORTS:
        terminalreporter.write_line(report.line())
        for step in report.after_fault:
            terminalreporter.write_line(f"  after {step}")
        for line in report.redelivery_lines():
            terminalreporter.write_line(f"  {line}")
        for note in report.notes:
            terminalreporter.write_line(f"  {note}")
        for problem in report.failures():
            terminalreporter.write_line(f"  FAILED {problem}")
