"""Operator metrics scraped from a running stack: the counters move when the bus does.

The whole stack (nats-server, the broker, every reference agency behind its adapter) serves the
broker's metrics and the adapters' on two endpoints (port 0); each test reads them before and
after what it does, parsed with prometheus_client's own text parser, and waits for the figures
(never for a time).
"""

from __future__ import annotations

import asyncio
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, requests_pb2
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from agencies import _seed as seed
from agencies import build_reference_agency
from agencies.demo import AgenciesConfig, AgencyFleet, Stack
from broker.client import BusClient, error_details
from broker.protocol import (
    ConsumerLoop,
    ConsumerMetrics,
    ConsumerSpec,
    MetricsConfig,
    SystemClock,
    ensure_inbox_consumers,
    key_overlay_path,
    load_agency_signing_key,
    load_directory,
    new_registry,
)
from tests._wait import eventually
from tests.integration.adapter_process import DIRECTORY, adapter_process, adapter_toml, broker_process
from tests.integration.broker_world import BANK, POLICE, broker_world, stop_payment
from tests.integration.stack_config import quick_stack_config
from tests.integration.test_sla import FAST
from tests.integration.test_stack import inbox_envelope, republish

pytestmark = pytest.mark.integration

S = common_pb2
Samples = Mapping[tuple[str, frozenset[tuple[str, str]]], float]
ON = MetricsConfig(listen="127.0.0.1:0", interval=0.2)


def _get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5.0) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body: bytes = response.read()
    return body.decode()


async def scrape(address: str) -> Samples:
    """Every sample the endpoint serves, by (name, labels)."""
    text = await asyncio.to_thread(_get, address)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def grows(address: str, before: Samples, name: str, *, what: str, **labels: str) -> None:
    """Wait until ``name{labels}`` is above its value in ``before``."""

    async def moved() -> bool:
        return value(await scrape(address), name, **labels) > value(before, name, **labels)

    await eventually(moved, what=what)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("metrics")
    config = quick_stack_config(root / "keys", root / "data")
    config = replace(config, metrics=ON, adapter_metrics=ON)
    async with Stack(config) as running:
        yield running


def addresses(stack: Stack) -> tuple[str, str]:
    assert stack.broker is not None
    assert stack.broker.metrics_address is not None
    assert stack.adapter_metrics_address is not None
    return stack.broker.metrics_address, stack.adapter_metrics_address


async def test_an_executed_stop_payment_moves_the_broker_and_adapter_counters(stack: Stack) -> None:
    broker, adapters = addresses(stack)
    broker_before, adapters_before = await scrape(broker), await scrape(adapters)
    request = requests_pb2.Request()
    request.CopyFrom(stop_payment(account=seed.MULE_ICBC_ACCOUNT, minor_units=100_000))
    request.stop_payment.account.holder_name = seed.MULE_ICBC_HOLDER
    async with stack.client(POLICE) as police:
        request_id = (await police.submit(request)).status.id
        status = await police.wait_for(request_id, {S.REQUEST_STATE_EXECUTED})
    assert status.state == S.REQUEST_STATE_EXECUTED

    stop = {"type": "STOP_PAYMENT", "agency": BANK}
    for state in ("SUBMITTED", "EXECUTED"):
        await grows(broker, broker_before, "greenchannel_requests_total", state=state, what=state, **stop)
    green_execute = {"type": "STOP_PAYMENT", "phase": "execute", "priority": "GREEN"}
    await grows(
        broker, broker_before, "greenchannel_phase_latency_seconds_count", what="latency", **green_execute
    )
    await grows(
        broker, broker_before, "greenchannel_consumer_messages_total", consumer="broker-events", what="events"
    )
    await grows(
        adapters,
        adapters_before,
        "greenchannel_adapter_answers_total",
        agency=BANK,
        type="STOP_PAYMENT",
        state="EXECUTED",
        what="the bank adapter's answer",
    )
    await grows(
        adapters,
        adapters_before,
        "greenchannel_adapter_call_seconds_count",
        agency=BANK,
        type="STOP_PAYMENT",
        what="the bank adapter's call",
    )
    await grows(
        adapters,
        adapters_before,
        "greenchannel_consumer_messages_total",
        consumer=f"inbox-{BANK}-green",
        what="the bank inbox",
    )
    # The latency is a real duration: as many observations as the count, none below zero.
    after = await scrape(broker)
    assert value(after, "greenchannel_phase_latency_seconds_sum", **green_execute) >= 0
    assert value(after, "greenchannel_phase_latency_seconds_bucket", le="+Inf", **green_execute) == value(
        after, "greenchannel_phase_latency_seconds_count", **green_execute
    )

    # The same order again on the inbox: the adapter answers from its journal, and says so.
    before_replay = await scrape(adapters)
    await republish(stack, BANK, await inbox_envelope(stack, BANK, request_id))
    await grows(adapters, before_replay, "greenchannel_adapter_replays_total", agency=BANK, what="the replay")


async def test_a_refused_submit_is_counted_by_its_reason(stack: Stack) -> None:
    broker, _ = addresses(stack)
    before = await scrape(broker)
    # A bank may not order a stop-payment: the policy refuses it.
    async with stack.client(BANK) as bank:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await bank.submit(stop_payment(recipient="bank-cmb"))
    code = refused.value.code()
    reason = error_details(refused.value).reason
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert reason
    after = await scrape(broker)
    counted = {
        dict(labels)["method"]: count - before.get((name, labels), 0.0)
        for (name, labels), count in after.items()
        if name == "greenchannel_refusals_total"
        and dict(labels)["code"] == code.name
        and dict(labels)["reason"] == reason
    }
    assert sum(counted.values()) == 1, counted
    assert any(method.endswith("Submit") for method in counted), counted


async def test_the_gauges_read_on_a_timer_show_the_ledger_and_the_lag(stack: Stack) -> None:
    broker, adapters = addresses(stack)
    async with stack.client(POLICE) as police:  # something for the ledger to chain, run alone too
        request_id = (await police.submit(stop_payment(account=seed.MULE_ICBC_ACCOUNT))).status.id
        await police.wait_for(request_id, {S.REQUEST_STATE_REJECTED, S.REQUEST_STATE_EXECUTED})

    async def ledger_read() -> bool:
        return value(await scrape(broker), "greenchannel_ledger_entries") > 0

    await eventually(ledger_read, what="the ledger's length")
    samples = await scrape(broker)
    assert ("greenchannel_ledger_last_checkpoint_age_seconds", frozenset()) in samples
    assert ("greenchannel_inbox_pending", frozenset({("agency", BANK), ("priority", "green")})) in samples
    assert ("greenchannel_consumer_pending", frozenset({("consumer", "broker-events")})) in samples
    adapter_samples = await scrape(adapters)
    assert (
        "greenchannel_consumer_pending",
        frozenset({("consumer", f"inbox-{BANK}-green")}),
    ) in adapter_samples
    # No label carries a request id, case number or account: every label value is a bounded name.
    for _name, labels in [*samples, *adapter_samples]:
        for _label, label_value in labels:
            assert seed.MULE_ICBC_ACCOUNT not in label_value
            assert len(label_value) < 40, label_value
            assert "-2026-" not in label_value, label_value


async def test_reminders_breaches_and_the_inbox_backlog_are_counted(tmp_path: Path) -> None:
    """No adapter answers: the deliver deadline is reminded, then breached, and the order waits."""
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker(sla=FAST, metrics=ON)
        await ensure_inbox_consumers(world.js, [BANK])  # as `greenchannel broker` does
        assert broker.metrics_address is not None
        before = await scrape(broker.metrics_address)
        async with world.client(broker) as police:
            await police.submit(stop_payment())
        deliver = {"type": "STOP_PAYMENT", "phase": "deliver", "agency": BANK}
        for kind in ("reminded", "breached"):
            await grows(
                broker.metrics_address,
                before,
                "greenchannel_deadlines_total",
                kind=kind,
                what=kind,
                **deliver,
            )

        async def waiting() -> bool:
            samples = await scrape(broker.metrics_address)  # type: ignore[arg-type]
            return value(samples, "greenchannel_inbox_pending", agency=BANK, priority="green") >= 1

        await eventually(waiting, what="the bank's inbox backlog")


async def test_the_commands_serve_metrics_where_they_are_told(tmp_path: Path) -> None:
    """``greenchannel broker --metrics-listen`` and ``greenchannel adapter`` with ``[metrics]``."""
    async with broker_process(tmp_path / "operator", metrics=True) as broker:
        assert broker.metrics_address is not None
        registry = load_directory(DIRECTORY, key_overlays=[key_overlay_path(broker.state_dir)])
        with build_reference_agency(registry.get(BANK), data_dir=tmp_path, clock=SystemClock()) as bank:
            async with bank.server() as server:
                config = tmp_path / "bank" / "adapter.toml"
                config.parent.mkdir()
                journal = tmp_path / "bank" / "journal"
                config.write_text(
                    adapter_toml(broker, BANK, target=server.address, journal=journal, metrics=True)
                )
                # A bad address on the command line is named before anything starts.
                check = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "broker.cli", "adapter", "--config", str(config),
                    "--metrics-listen", "everywhere", "--check", stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                _, err = await check.communicate()
                assert check.returncode == 1
                assert b"--metrics-listen: must be host:port" in err
                async with adapter_process(config) as adapter:
                    broker_before = await scrape(broker.metrics_address)
                    adapter_before = await scrape(adapter.metrics_address)
                    key = load_agency_signing_key(broker.state_dir, "police-310115")
                    async with BusClient(
                        broker.address, agency_id="police-310115", signing_key=key
                    ) as police:
                        request_id = (await police.submit(stop_payment(minor_units=1_000_000))).status.id
                        await police.wait_for(request_id, {S.REQUEST_STATE_EXECUTED})
                    executed = {"type": "STOP_PAYMENT", "state": "EXECUTED"}
                    await grows(
                        broker.metrics_address,
                        broker_before,
                        "greenchannel_requests_total",
                        agency=BANK,
                        what="the broker's count",
                        **executed,
                    )
                    await grows(
                        adapter.metrics_address,
                        adapter_before,
                        "greenchannel_adapter_answers_total",
                        agency=BANK,
                        what="the adapter's count",
                        **executed,
                    )
                    assert await adapter.stop() == 0


async def test_a_redelivery_is_counted_and_the_lag_read(js: JetStreamContext) -> None:
    """The shared consumer metrics on a real JetStream: a message naked once comes back, counted."""
    name = f"METRICS_{uuid.uuid4().hex[:8].upper()}"
    prefix = f"metrics.{name.lower()}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"]))
    for n in range(3):
        await js.publish(f"{prefix}.k{n}", b"x")
    registry = new_registry()
    metrics = ConsumerMetrics(registry)
    deliveries: list[int] = []

    async def handle(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered or 0)
        if msg.subject.endswith(".k0") and msg.metadata.num_delivered == 1:
            await msg.nak()  # once: it comes back
            return
        await msg.ack()

    spec = ConsumerSpec(
        name=f"metrics-{name.lower()}",
        stream=name,
        filter_subject=f"{prefix}.>",
        batch=1,  # one at a time: the lag is still there when the timer reads it
        fetch_timeout=0.2,
        ack_wait=10.0,
    )
    loop = ConsumerLoop(js, spec, handle, observer=metrics)
    await loop.start()
    try:
        await metrics.refresh(loop)  # read before the loop takes everything: the lag is there
        await eventually(lambda: len(deliveries) == 4, what="three messages, one of them twice")
    finally:
        await loop.aclose()
    samples = {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in registry.collect()
        for sample in family.samples
    }
    assert samples[("greenchannel_consumer_messages_total", (spec.name,))] == 4
    assert samples[("greenchannel_consumer_redeliveries_total", (spec.name,))] == 1
    assert ("greenchannel_consumer_pending", (spec.name,)) in samples


async def test_greenchannel_agencies_serves_its_adapters_metrics(tmp_path: Path) -> None:
    """The fleet ``greenchannel agencies`` runs: every adapter on one endpoint, labelled by agency."""
    async with broker_process(tmp_path / "operator") as broker:
        config = AgenciesConfig(
            keys_dir=broker.state_dir,
            data_dir=tmp_path / "agencies",
            directory=DIRECTORY,
            nats_url=broker.nats_url,
            only=(BANK, "bank-cmb"),
            metrics=ON,
        )
        async with AgencyFleet(config) as fleet:
            assert fleet.metrics_address is not None

            async def both_inboxes_read() -> bool:
                samples = await scrape(fleet.metrics_address)  # type: ignore[arg-type]
                return all(
                    ("greenchannel_consumer_pending", frozenset({("consumer", f"inbox-{agency}-green")}))
                    in samples
                    for agency in (BANK, "bank-cmb")
                )

            await eventually(both_inboxes_read, what="both adapters' inbox lag")
