"""Sampling profiles of the bus's processes under load (py-spy), reduced to where the CPU goes.

py-spy attaches to a running process by pid and samples its Python stacks without changing it
(``--nonblocking``: the process is never paused). Only samples of the thread holding the GIL are
kept (``--gil``): py-spy's own idle detection, racing a running process, counted epoll waits and
thread-pool waits as busy (a process using 12 % of a core showed 43 % "busy" samples), while GIL
samples track the process's measured CPU. So a profile answers "of the time this process ran
Python, where". C code that releases the GIL (SQLite queries, socket syscalls, fsync) is not in
it; the per-process CPU milliseconds of ``bench_e2e`` cover everything. Time in C that keeps the
GIL (Ed25519 in ``cryptography``, upb protobuf, gRPC's Cython core) is charged to the Python frame
that called it, which is why each sample is classified by walking its stack from the leaf up to
the first frame that names a known kind of work.

py-spy is a profiling tool, not a project dependency: ``pip install py-spy`` into the venv to
profile; without it the benchmarks run and say that no profile was taken.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CATEGORIES",
    "LOOP",
    "OTHER",
    "POLL",
    "THREADS",
    "ProfileSummary",
    "py_spy",
    "record",
    "summarize",
]

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (category, substrings of a frame "function (path:line)"); the first match from the leaf wins.
    (
        "crypto (Ed25519, JWS, JWT, hashing, sealing)",
        (
            "cryptography/",
            "/jwt/",
            "protocol/_signing.py",
            "protocol/_tokens.py",
            "protocol/_keys.py",
            "protocol/_sealing.py",
            "hashlib",
            "body_digest",
        ),
    ),
    ("field rules (protovalidate)", ("protovalidate/", "protocol/_validation.py", "celpy/", "cel/")),
    ("protobuf", ("google/protobuf/", "_pb2.py", "upb")),
    ("NATS client (nats-py)", ("nats/",)),
    ("gRPC (grpc.aio)", ("grpc/", "grpc_health/", "grpc_status/")),
    (
        "SQLite (agency core, adapter store)",
        ("sqlite3", "_common/_db.py", "_common/_journal.py", "bank/_store.py", "adapters/_idempotency.py"),
    ),
    ("logging (structlog)", ("structlog/",)),
    ("broker / adapter / agency code", ("broker/", "adapters/", "agencies/")),
)
LOOP = "event loop: callbacks, Task steps, C code without Python frames (uvloop, gRPC's Cython core)"
POLL = "asyncio: epoll (select with the GIL held)"
THREADS = "thread pool hand-offs (asyncio.to_thread: submit, wake-up, GIL waits)"
OTHER = "other Python (stdlib)"
# Plumbing that says nothing about which work it runs: skipped when looking for a sample's kind.
_GENERIC = (
    "asyncio/",
    "selectors.py",
    "concurrent/futures",
    "threading.py",
    "contextlib.py",
    "functools.py",
    "<frozen runpy>",
    "weakref.py",
    "queue.py",
)

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> Path | None:
    """The py-spy executable next to this interpreter or on PATH, if installed."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return beside
    found = shutil.which("py-spy")
    return Path(found) if found else None


async def record(
    pids: Mapping[str, int], out_dir: Path, *, duration: int, rate: int = 250
) -> dict[str, Path]:
    """Sample every named process for ``duration`` seconds, concurrently; raw folded stacks per name."""
    exe = py_spy()
    if exe is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    outputs = {name: out_dir / f"{name}.folded" for name in pids}
    procs = []
    for name, pid in pids.items():
        log = (out_dir / f"{name}.py-spy.log").open("wb")
        procs.append(
            await asyncio.create_subprocess_exec(
                str(exe),
                *("record", "--pid", str(pid), "--duration", str(duration), "--rate", str(rate)),
                *("--format", "raw", "--nonblocking", "--gil", "--output", str(outputs[name])),
                stdout=log,
                stderr=log,
            )
        )
        log.close()
    for proc in procs:
        await proc.wait()
    return {name: path for name, path in outputs.items() if path.exists()}


# Where a callback or a thread's work item starts: frames further out are the same for all work.
# On uvloop the loop has no Python frames: callbacks sit right inside the runner (cli/_loop.py).
_BOUNDARIES = ("Handle._run (", "_run_once (", "_WorkItem.run (", "Thread.run (", "cli/_loop.py")


def _name_of(frame: str) -> str:
    """``function (path)`` without the line, so one function is one row."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("path")
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('function')} ({path})"


def _category(stack: list[str]) -> str:
    """The kind of the innermost frame that names one, looking no further out than the callback
    or thread work item the sample runs in (beyond it are only the loop and the entry point)."""
    specific = False
    for frame in reversed(stack):
        if any(boundary in frame for boundary in _BOUNDARIES):
            break  # (checked first: uvloop's runner is a frame of our own code, cli/_loop.py)
        for category, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return category
        if not any(generic in frame for generic in _GENERIC):
            specific = True
    if specific:
        return OTHER
    if "EpollSelector.select" in stack[-1]:
        return POLL
    if any("concurrent/futures" in frame or "threading.py" in frame for frame in stack):
        return THREADS
    return LOOP


def _inside_callback(stack: list[str]) -> list[str]:
    """The frames inside the innermost callback or work item, plumbing left out: every sample
    shares the frames outside (loop, entry point), which would otherwise top the inclusive list."""
    for depth in range(len(stack) - 1, -1, -1):
        if any(boundary in stack[depth] for boundary in _BOUNDARIES):
            stack = stack[depth + 1 :]
            break
    return [frame for frame in stack if not any(generic in frame for generic in _GENERIC)]


@dataclass(frozen=True, kw_only=True)
class ProfileSummary:
    """One process's profile, reduced."""

    samples: int
    """Samples in which a thread of the process held the GIL."""
    categories: dict[str, float]
    """Share of the samples per kind of work (sums to 1)."""
    self_top: list[tuple[str, float]]
    """Functions by the share of samples in which they were the innermost Python frame."""
    inclusive_top: list[tuple[str, float]]
    """Functions by the share of samples in which they were on the stack, inside a callback."""

    def as_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "categories": self.categories,
            "self_top": [{"function": f, "share": s} for f, s in self.self_top],
            "inclusive_top": [{"function": f, "share": s} for f, s in self.inclusive_top],
        }


def summarize(folded: Path, *, top: int = 15) -> ProfileSummary:
    """Reduce py-spy's raw output (``frame;frame;... count`` per line, root first)."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        # py-spy puts "process ..." and "thread ..." pseudo-frames first when asked to; skip them.
        stack = [f for f in stack_text.split(";") if not f.startswith(("process ", "thread "))]
        if not stack:
            continue
        total += count
        self_counts[_name_of(stack[-1])] += count
        for name in {_name_of(frame) for frame in _inside_callback(stack)}:
            inclusive[name] += count
        categories[_category(stack)] += count
    share = 1 / total if total else 0.0
    return ProfileSummary(
        samples=total,
        categories={name: n * share for name, n in categories.most_common()},
        self_top=[(name, n * share) for name, n in self_counts.most_common(top)],
        inclusive_top=[(name, n * share) for name, n in inclusive.most_common(top)],
    )
