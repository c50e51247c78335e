"""Child processes the fault suite starts, kills with SIGKILL and starts again.

Each :class:`ManagedProcess` writes stdout and stderr to files in its log directory (appended
across restarts, so a failure report shows every incarnation) and counts as started once a
given line appears on its stdout.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ManagedProcess", "ProcessError", "ProcessSpec", "child_env"]

_POLL = 0.02
_TAIL = 40


class ProcessError(RuntimeError):
    """A child did not start, or did not stop."""


@dataclass(frozen=True, kw_only=True)
class ProcessSpec:
    """How to run one child."""

    name: str
    """Short name for logs and reports (``broker``, ``agencies``)."""
    argv: Sequence[str]
    """The command."""
    ready: str
    """A line of stdout starting with this means the child is up."""
    log_dir: Path
    """Where ``<name>.out`` and ``<name>.err`` go."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The child's whole environment."""
    cwd: Path | None = None
    """Working directory."""
    ready_timeout: float = 30.0
    """Seconds to wait for the ready line."""
    stop_timeout: float = 20.0
    """Seconds a SIGTERM gets before SIGKILL."""


# Children that may be running: an interrupted run must not leave a broker behind.
_LIVE: set[ManagedProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        process.kill_now()


class ManagedProcess:
    """One child: :meth:`start`, :meth:`kill` (SIGKILL), :meth:`stop` (SIGTERM), start again."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self._popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        spec.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def out_path(self) -> Path:
        return self.spec.log_dir / f"{self.spec.name}.out"

    @property
    def err_path(self) -> Path:
        return self.spec.log_dir / f"{self.spec.name}.err"

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise ProcessError(f"{self.spec.name} was never started")
        return self._popen.pid

    async def start(self) -> str:
        """Start and wait for the ready line; returns it. Raises with the stderr tail on failure."""
        if self.running:
            raise ProcessError(f"{self.spec.name} is already running")
        spec = self.spec
        offset = self.out_path.stat().st_size if self.out_path.exists() else 0
        self._popen = self._launch()
        self.starts += 1
        _LIVE.add(self)
        deadline = time.monotonic() + spec.ready_timeout
        while True:
            line = self._ready_line(offset)
            if line is not None:
                return line
            if self._popen.poll() is not None:
                raise ProcessError(
                    f"{spec.name} exited with {self._popen.returncode} before it was ready\n{self.tail()}"
                )
            if time.monotonic() >= deadline:
                await self.kill()
                raise ProcessError(f"{spec.name} was not ready within {spec.ready_timeout}s\n{self.tail()}")
            await asyncio.sleep(_POLL)

    def _launch(self) -> subprocess.Popen[bytes]:
        # Synchronous on purpose (as EmbeddedNats does): a Popen is not tied to an event loop,
        # so the atexit hook can still kill it; the fork/exec takes about a millisecond.
        spec = self.spec
        with self.out_path.open("ab") as out, self.err_path.open("ab") as err:
            err.write(f"--- start {self.starts + 1} at {time.time():.3f}: {' '.join(spec.argv)}\n".encode())
            err.flush()
            return subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(spec.env),
                cwd=spec.cwd,
            )

    async def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or drained. Counted as a fault."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGKILL)
        await self._wait(popen, 10.0)
        self.kills += 1

    async def stop(self) -> int | None:
        """SIGTERM and wait for a graceful exit (SIGKILL after ``stop_timeout``); the exit code."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            if not await self._wait(popen, self.spec.stop_timeout):
                popen.kill()
                await self._wait(popen, 10.0)
        _LIVE.discard(self)
        return popen.returncode

    def signal(self, signum: int) -> bool:
        """Send ``signum`` if running (e.g. SIGUSR1: a task dump); whether it was sent."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return False
        popen.send_signal(signum)
        return True

    def kill_now(self) -> None:
        """Synchronous SIGKILL for cleanup paths (not counted as a fault)."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()
        _LIVE.discard(self)

    def tail(self) -> str:
        """The last lines of stderr, for failure messages."""
        with contextlib.suppress(OSError):
            lines = self.err_path.read_text(encoding="utf-8", errors="replace").splitlines()
            return f"--- {self.err_path} (last {_TAIL} lines)\n" + "\n".join(lines[-_TAIL:])
        return "(no stderr)"

    def _ready_line(self, offset: int) -> str | None:
        try:
            with self.out_path.open("rb") as out:
                out.seek(offset)
                text = out.read().decode("utf-8", errors="replace")
        except OSError:
            return None
        for line in text.splitlines(keepends=True):
            if line.startswith(self.spec.ready) and line.endswith("\n"):
                return line.strip()
        return None

    @staticmethod
    async def _wait(popen: subprocess.Popen[bytes], timeout: float) -> bool:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while popen.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL)
        return True


def child_env(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """``base`` without any GreenChannel settings of the caller's shell, plus ``overrides``."""
    env = {k: v for k, v in base.items() if not k.startswith("GREENCHANNEL_")}
    env.update(overrides)
    return env
