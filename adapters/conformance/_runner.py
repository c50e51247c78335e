"""Running one kind's checks against a target and reporting them as a table or JSON."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc

from ._bank import BANK_CHECKS, bank_stub
from ._carrier import CARRIER_CHECKS, carrier_stub
from ._fixture import ConformanceFixture
from ._generic import Check
from ._platform import PLATFORM_CHECKS, platform_stub
from ._police import POLICE_CHECKS, police_stub
from ._probe import CheckFailed, Probe

__all__ = ["CHECKS", "KINDS", "CheckOutcome", "ConformanceReport", "run_checks"]

CHECKS: Mapping[str, tuple[Any, tuple[Check, ...]]] = MappingProxyType(
    {
        "bank": (bank_stub, BANK_CHECKS),
        "carrier": (carrier_stub, CARRIER_CHECKS),
        "platform": (platform_stub, PLATFORM_CHECKS),
        "police": (police_stub, POLICE_CHECKS),
    }
)
"""Per agency kind: the generated stub of its service and its checks, in table order."""
KINDS = tuple(CHECKS)
"""The agency kinds the kit certifies."""


@dataclass(frozen=True, kw_only=True)
class CheckOutcome:
    """One row of the table."""

    name: str
    """The check's id."""
    proves: str
    """What passing it shows."""
    passed: bool
    """Whether the service did what the contract asks."""
    detail: str
    """What was seen when it passed."""
    reason: str
    """Why it failed, in one line; empty when it passed."""
    seconds: float
    """How long the check took."""


@dataclass(frozen=True, kw_only=True)
class ConformanceReport:
    """The verdict on one service."""

    kind: str
    """bank, carrier, platform or police."""
    target: str
    """``host:port`` checked."""
    outcomes: tuple[CheckOutcome, ...]
    """Every check, in order."""

    @property
    def passed(self) -> bool:
        return bool(self.outcomes) and all(o.passed for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "passed": self.passed,
            "checks": [
                {
                    "name": o.name,
                    "passed": o.passed,
                    "proves": o.proves,
                    "detail": o.detail,
                    "reason": o.reason,
                    "seconds": round(o.seconds, 3),
                }
                for o in self.outcomes
            ],
        }

    def render_table(self) -> str:
        width = max([len(o.name) for o in self.outcomes] + [5])
        lines = [f"{'CHECK':<{width}}  RESULT  TIME     DETAIL"]
        for o in self.outcomes:
            verdict = "pass" if o.passed else "FAIL"
            lines.append(
                f"{o.name:<{width}}  {verdict:<6}  {o.seconds:6.2f}s  {o.detail if o.passed else ''}".rstrip()
            )
            if not o.passed:
                lines.append(f"{'':<{width}}  reason: {o.reason}")
        failed = sum(1 for o in self.outcomes if not o.passed)
        verdict = "conforms" if self.passed else "does NOT conform"
        lines.append(
            f"{len(self.outcomes)} checks, {len(self.outcomes) - failed} passed, {failed} failed: "
            f"the {self.kind} service at {self.target} {verdict}"
        )
        return "\n".join(lines)


async def run_checks(
    kind: str,
    channel: grpc.aio.Channel,
    *,
    target: str,
    fixture: ConformanceFixture,
    call_timeout: float = 10.0,
    only: tuple[str, ...] = (),
) -> ConformanceReport:
    """Run ``kind``'s checks (or those named in ``only``) one after the other over ``channel``.

    The service must be reachable within ``call_timeout``; if it is not, that is the one row.
    Each check has a budget of a few call deadlines, so a service that hangs fails in bounded time.
    """
    stub_type, checks = CHECKS[kind]
    if only:
        checks = tuple(c for c in checks if c.name in only)
    probe = Probe(stub=stub_type(channel), fixture=fixture, call_timeout=call_timeout)
    started = time.monotonic()
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=call_timeout)
    except TimeoutError:
        unreachable = CheckOutcome(
            name=f"{kind}.reachable",
            proves="the service accepts connections",
            passed=False,
            detail="",
            reason=f"no connection to {target} within {call_timeout:g} s (address, TLS settings?)",
            seconds=time.monotonic() - started,
        )
        return ConformanceReport(kind=kind, target=target, outcomes=(unreachable,))
    outcomes = [await _run_one(check, probe, budget=4 * call_timeout) for check in checks]
    return ConformanceReport(kind=kind, target=target, outcomes=tuple(outcomes))


async def _run_one(check: Check, probe: Probe, *, budget: float) -> CheckOutcome:
    started = time.monotonic()
    detail, reason = "", ""
    try:
        detail = await asyncio.wait_for(check.run(probe), timeout=budget)
    except CheckFailed as exc:
        reason = str(exc)
    except TimeoutError:
        reason = f"the check did not finish within {budget:g} s"
    except grpc.aio.AioRpcError as exc:
        reason = f"gRPC {exc.code().name}"
    except Exception as exc:  # a check that crashes is a failed row, not a crashed run
        reason = f"the check crashed: {type(exc).__name__}: {exc}"
    return CheckOutcome(
        name=check.name,
        proves=check.proves,
        passed=not reason,
        detail=detail,
        reason=reason,
        seconds=time.monotonic() - started,
    )
