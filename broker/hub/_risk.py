"""The risk registry wired together: store, index, counter, desk and servicer (see ``_risk_*``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nats.js.client import JetStreamContext

from broker.protocol import Clock, Registry

from ._auth import Authenticator
from ._identifiers import IdentifierDigests
from ._ledger import LedgerWriter
from ._policy import Policy
from ._refusals import RefusalSink
from ._risk_counts import RISK_COUNTS_BUCKET, CheckCounter
from ._risk_index import MarkIndex
from ._risk_marks import RISK_MARKS_BUCKET, MarkStore
from ._risk_registry import MarkDesk
from ._risk_service import RiskServicer
from ._store import LazyBucket
from ._watchlog import WatchLog

__all__ = ["RiskConfig", "RiskParts", "open_risk"]


@dataclass(frozen=True, kw_only=True)
class RiskConfig:
    """How the risk registry runs; policy (who, how long, how fast) is in ``[risk]``."""

    counts_flush_interval: float = 5.0
    """Seconds between flushes of the in-memory check counts to KV (also flushed at shutdown)."""
    index_wait: float = 10.0
    """Seconds start-up waits for the mark index to hold the bucket's marks before serving."""


@dataclass(frozen=True)
class RiskParts:
    """The running registry; :meth:`aclose` stops the index and flushes the counts."""

    desk: MarkDesk
    marks: MarkStore
    index: MarkIndex
    counter: CheckCounter
    servicer: RiskServicer

    async def aclose(self) -> None:
        await self.index.aclose()
        with contextlib.suppress(Exception):
            await self.counter.aclose()


async def open_risk(
    js: JetStreamContext,
    *,
    config: RiskConfig,
    auth: Authenticator,
    registry: Registry,
    policy: Policy,
    watchlog: WatchLog,
    ledger: LedgerWriter,
    clock: Clock,
    refusals: RefusalSink | None,
    digests: IdentifierDigests,
    replicas: int = 1,
) -> RiskParts:
    """Open the buckets, start the index (waiting for the current marks) and the count flusher."""
    store = MarkStore(LazyBucket(js, RISK_MARKS_BUCKET, replicas=replicas))
    await store.kv()
    index = MarkIndex(store, initial_wait=config.index_wait)
    await index.__aenter__()
    counter = CheckCounter(
        LazyBucket(js, RISK_COUNTS_BUCKET, replicas=replicas),
        clock=clock,
        flush_interval=config.counts_flush_interval,
    )
    await counter.__aenter__()
    desk = MarkDesk(
        store=store,
        index=index,
        digests=digests,
        registry=registry,
        policy=policy,
        watchlog=watchlog,
        ledger=ledger,
        clock=clock,
    )
    servicer = RiskServicer(
        auth=auth,
        desk=desk,
        index=index,
        counter=counter,
        digests=digests,
        policy=policy,
        clock=clock,
        refusals=refusals,
    )
    return RiskParts(desk=desk, marks=store, index=index, counter=counter, servicer=servicer)
