"""Unit tests run ``broker.cli.main`` in this process."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _logs_stay_where_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` would bind structlog to this test's captured stderr, closed after it: every later
    test in the process that logs (a broker in an integration test) would then fail writing."""
    monkeypatch.setattr("broker.cli._main.configure_logging", lambda *_a, **_k: None)
