"""Directory reload: the broker picks up a changed directory or key overlay without a restart.

Every hub component holds one :class:`LiveRegistry`. A reload reads and validates the files into
a fresh :class:`Registry` off to the side and then swaps one reference, so a caller sees the old
directory or the new one, never half of each; a call in flight keeps the agency it already
resolved. A file that does not load leaves the old registry in place and is reported as
``directory.reload_failed`` with the file and the field.

Reloads come from :meth:`DirectoryReloader.reload` (SIGHUP in ``greenchannel broker``) and from
polling the files' metadata every few seconds: stat is cheap, needs no extra dependency, and also
sees a file replaced by rename (editors, ``os.replace``), which an inode watch can miss.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog

from broker.protocol import Agency, AgencyKind, PublicKey, Registry, RegistryError, load_directory

__all__ = ["DirectoryReloadConfig", "DirectoryReloader", "LiveRegistry", "ReloadListener"]

log = structlog.get_logger(__name__)


class LiveRegistry(Registry):
    """A :class:`Registry` whose whole content is replaced by one reference swap.

    It overrides every public member of :class:`Registry` to read the current registry once, so
    each lookup is answered from one consistent directory (a unit test keeps the two in step).
    """

    __slots__ = ("_current",)

    def __init__(self, registry: Registry) -> None:  # no super().__init__: holds no index of its own
        self._current = registry

    @property
    def current(self) -> Registry:
        """The registry in force now (a snapshot: it never changes under its holder)."""
        return self._current

    def swap(self, registry: Registry) -> Registry:
        """Put ``registry`` in force; returns the one it replaces."""
        old, self._current = self._current, registry
        return old

    @property
    def jurisdiction(self) -> str | None:
        return self._current.jurisdiction

    def __len__(self) -> int:
        return len(self._current)

    def __contains__(self, agency_id: object) -> bool:
        return agency_id in self._current

    def get(self, agency_id: str) -> Agency:
        return self._current.get(agency_id)

    def agencies(self, kind: AgencyKind | None = None, region: str | None = None) -> tuple[Agency, ...]:
        return self._current.agencies(kind, region)

    def public_keys(self, agency_id: str) -> Sequence[PublicKey]:
        return self._current.public_keys(agency_id)

    def broker_keys(self) -> tuple[PublicKey, ...]:
        return self._current.broker_keys()

    def bank_for_account(self, account_number: str) -> Agency | None:
        return self._current.bank_for_account(account_number)

    def carrier_for_number(self, e164: str) -> Agency | None:
        return self._current.carrier_for_number(e164)

    def platform_for_code(self, code: str) -> Agency | None:
        return self._current.platform_for_code(code)

    def police_for_region(self, region_code: str) -> Agency | None:
        return self._current.police_for_region(region_code)


ReloadListener = Callable[[Registry, Registry], Awaitable[None]]
"""Told ``(old, new)`` after a successful reload, e.g. to create a new agency's inbox consumer."""


@dataclass(frozen=True, kw_only=True)
class DirectoryReloadConfig:
    """When the broker re-reads its directory files."""

    poll_interval: float | None = 2.0
    """Seconds between checks of the files for changes; None: only on an explicit reload (SIGHUP)."""


_Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _key_count(registry: Registry) -> int:
    return sum(len(agency.keys) for agency in registry.agencies()) + len(registry.broker_keys())


class DirectoryReloader:
    """Loads ``directory`` and its key overlays into :attr:`registry`, and re-reads them on change.

    The overlays are the state directory's own (used when it exists) and the operator's overlay
    files (which must exist). Construction loads the files: a broken directory fails the start.
    """

    def __init__(
        self,
        *,
        directory: Path,
        state_overlay: Path | None,
        overlays: Iterable[Path] = (),
        config: DirectoryReloadConfig | None = None,
    ) -> None:
        self._directory = directory
        self._state_overlay = state_overlay
        self._overlays = tuple(overlays)
        self._stamps = self._read_stamps()
        self.registry = LiveRegistry(self.load())
        """What every component holds; :meth:`reload` swaps its content."""
        self._config = config or DirectoryReloadConfig()
        self._listeners: list[ReloadListener] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def _watched(self) -> tuple[Path, ...]:
        state = () if self._state_overlay is None else (self._state_overlay,)
        return (self._directory, *state, *self._overlays)

    def _read_stamps(self) -> tuple[_Stamp, ...]:
        return tuple(_stamp(path) for path in self._watched())

    def add_listener(self, listener: ReloadListener) -> None:
        self._listeners.append(listener)

    def load(self) -> Registry:
        """Read and validate the files as they are now (raises :class:`RegistryError`)."""
        state = self._state_overlay
        overlays = ([state] if state is not None and state.exists() else []) + list(self._overlays)
        return load_directory(self._directory, key_overlays=overlays)

    async def reload(self) -> bool:
        """Re-read the files; swap the registry if they load, else keep the old one. True if swapped."""
        async with self._lock:
            self._stamps = self._read_stamps()
            try:
                new = self.load()
            except RegistryError as exc:
                log.error(
                    "directory.reload_failed", file=exc.file, field=exc.field, error=str(exc), kept="previous"
                )
                return False
            except Exception as exc:  # a bug here must not end the polling nor the broker
                log.exception(
                    "directory.reload_failed",
                    file=str(self._directory),
                    field=None,
                    error=repr(exc),
                    kept="previous",
                )
                return False
            old = self.registry.swap(new)
            before = {agency.id for agency in old.agencies()}
            after = {agency.id for agency in new.agencies()}
            log.info(
                "directory.reloaded",
                file=str(self._directory),
                agencies=len(new),
                keys=_key_count(new),
                added=sorted(after - before),
                removed=sorted(before - after),
            )
            for listener in self._listeners:
                try:
                    await listener(old, new)
                except Exception:  # a listener's failure must not undo or block the reload
                    log.exception("directory.reload_listener_failed")
            return True

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._read_stamps() != self._stamps:
                await self.reload()

    async def __aenter__(self) -> DirectoryReloader:
        if self._config.poll_interval is not None:
            self._task = asyncio.create_task(self._poll(self._config.poll_interval), name="directory-reload")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop polling (idempotent); a reload under way finishes first."""
        task, self._task = self._task, None
        if task is not None:
            async with self._lock:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
