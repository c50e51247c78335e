"""How long a 10,000-line batch NUMBER_BLOCK across two carriers takes, submit to the parent's outcome.

    python -m tests.bench.bench_batch [--reps 3] [--items 10000] [--json FILE]

One stack in this process (embedded nats-server with its file store, the broker, every reference
agency behind its own adapter, default settings). Each repetition seeds fresh lines, half on
carrier-cmcc and half on carrier-ctcc, and has the police submit one batch of all of them,
interleaved; the broker splits it into two children, each carrier blocks its half item by item in
one SQLite transaction, and the broker records the parent's outcome. The time runs from the
submit call to the Watch delivering the parent's EXECUTED (every item confirmed). Reports the
median over the repetitions, after one warm-up of 100 lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from greenchannel.v1 import common_pb2, requests_pb2

from agencies.carrier import CarrierCore
from agencies.demo import Stack, StackConfig

POLICE = "police-310115"
DONE = {
    common_pb2.REQUEST_STATE_EXECUTED,
    common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
    common_pb2.REQUEST_STATE_REJECTED,
    common_pb2.REQUEST_STATE_FAILED,
}


def _seed(stack: Stack, rep: int, half: int) -> list[str]:
    numbers = []
    for i in range(half):
        for carrier, segment in (("carrier-cmcc", "+86139"), ("carrier-ctcc", "+86189")):
            core = stack.agencies[carrier].core
            assert isinstance(core, CarrierCore)
            number = f"{segment}{rep:02d}{i:06d}"
            core.register_line(
                number, iccid=f"8986{rep:02d}{i:014d}", imsi=f"46000{i:010d}", subscriber_name="某"
            )
            numbers.append(number)
    return numbers


async def _one(stack: Stack, rep: int, items: int) -> float:
    numbers = _seed(stack, rep, items // 2)
    request = requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=f"BENCH-BATCH-{rep:02d}",
            issuing_agency=POLICE,
            legal_instrument_id=f"BENCH-BATCH-{rep:02d}",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER,
        ),
        priority=common_pb2.PRIORITY_GREEN,
        number_block=requests_pb2.NumberBlock(
            phones=[common_pb2.PhoneRef(e164=n) for n in numbers], scope=requests_pb2.BLOCK_SCOPE_NUMBER
        ),
    )
    async with stack.client(POLICE) as police:
        signed = police.sign(request)
        started = time.perf_counter()
        submitted = (await police.submit_signed(signed)).status
        done = await police.wait_for(submitted.id, DONE, within=timedelta(minutes=5))
        elapsed = (time.perf_counter() - started) * 1000
    totals = done.result.block.totals
    if done.state != common_pb2.REQUEST_STATE_EXECUTED or totals.blocked != items:
        raise RuntimeError(
            f"the batch ended {common_pb2.RequestState.Name(done.state)}, {totals.blocked} blocked"
        )
    return elapsed


async def measure(reps: int, items: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with Stack(StackConfig(keys_dir=root / "keys", data_dir=root / "data")) as stack:
            await _one(stack, 99, 100)  # warm-up: connections, consumers, caches
            runs = [await _one(stack, rep, items) for rep in range(reps)]
    return {
        "reps": reps,
        "items": items,
        "carriers": 2,
        "batch_to_parent_outcome_p50_ms": statistics.median(runs),
        "batch_to_parent_outcome_max_ms": max(runs),
        "per_item_p50_us": statistics.median(runs) * 1000 / items,
        "runs_ms": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(measure(args.reps, args.items))
    width = max(len(k) for k in result)
    for name, value in result.items():
        if isinstance(value, float):
            print(f"{name:<{width}}  {value:10.3f}")
        else:
            print(f"{name:<{width}}  {value!s:>10}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
