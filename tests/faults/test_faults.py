"""The real stack as separate processes under SIGKILL: nothing lost, nothing twice, deadlines fire.

Each scenario runs a steady load of stop-payments from the police through nats-server, the
broker and the reference banks behind their adapters, kills parts of it while the load runs,
and then checks every request against the broker, the banks' own databases and the ledger.
The counts go to the terminal summary (``faults: scenario=... requests=N kills=K lost=L ...``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from broker.protocol import BROKER_ACCOUNT, agency_account

from ._scenarios import ScenarioReport, run_cluster, run_single_node
from ._settings import FaultSettings

pytestmark = pytest.mark.integration

# A hung stack must fail the run, not stall CI; generous against the expected duration.
_BOUND = {"short": 240.0, "long": 1800.0}


def _judge(report: ScenarioReport) -> None:
    assert report.requests > 0, "the load never got a request through"
    assert not report.lost, f"lost: {report.lost}"
    assert not report.duplicated, f"duplicated: {sorted(set(report.duplicated))}"
    assert not report.failures(), "; ".join(report.failures())


async def test_single_node_survives_broker_agencies_and_nats_kills(
    fault_settings: FaultSettings, fault_reports: list[ScenarioReport], tmp_path: Path
) -> None:
    report = await asyncio.wait_for(run_single_node(fault_settings, tmp_path), _BOUND[fault_settings.level])
    fault_reports.append(report)
    assert report.kills["broker"] == fault_settings.broker_kills
    assert report.kills["agencies"] == fault_settings.agencies_kills
    assert report.kills["adapter"] == fault_settings.adapter_kills
    assert report.kills["nats"] == fault_settings.nats_kills
    _judge(report)


async def test_cluster_survives_losing_one_node_then_another(
    fault_settings: FaultSettings, fault_reports: list[ScenarioReport], tmp_path: Path
) -> None:
    report = await asyncio.wait_for(run_cluster(fault_settings, tmp_path), _BOUND[fault_settings.level])
    fault_reports.append(report)
    assert report.kills["node"] == 2 * fault_settings.cluster_rounds
    # Jepsen (NATS 2.12.1) lost acknowledged writes that were not yet fsynced: every node of the
    # cluster syncs each write before its ack, exactly as the embedded single server does.
    configs = sorted((tmp_path / "nats").glob("*/nats-server.conf"))
    assert len(configs) == 3
    for path in configs:
        config = json.loads(path.read_text(encoding="utf-8"))
        assert config["jetstream"]["sync_interval"] == "always", path
        assert len(config["cluster"]["routes"]) == 3, path
        # The per-agency accounts of a deployment on every node, as on the single server: JetStream
        # in the broker's account, each bank adapter in an account of its own.
        accounts = config["accounts"]
        assert accounts[BROKER_ACCOUNT]["jetstream"] == "enabled", path
        assert {agency_account("bank-icbc"), agency_account("bank-ccb")} <= set(accounts), path
    _judge(report)
