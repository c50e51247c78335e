"""The stack as separate processes: the broker and the agencies, each killable, against a given NATS.

NATS itself (one :class:`EmbeddedNats` or an :class:`EmbeddedCluster`) is started by the
scenario, which owns it. Keys, the agencies' databases and the adapters' state live under one
root directory and survive every restart.

The agencies run in one of two shapes. Combined: one ``greenchannel agencies`` process holds the
banks' reference systems and their adapters. Split, as a bank deploys them: one process holds the
banks' systems (:mod:`tests.faults._systems_entry`), and each bank runs ``adapter_instances``
``greenchannel adapter --config`` processes, each with its own journal, pulling from the same
durable inbox consumers: when one dies, JetStream hands its unacknowledged messages to another
after the ack wait, without waiting for a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from agencies import DEFAULT_DIRECTORY
from agencies.bank import BankConfig, BankCore
from broker.cli._adapter import READY_PREFIX as ADAPTER_READY
from broker.cli._agencies import READY_PREFIX
from broker.cli._main import parser_for
from broker.client import BusClient
from broker.protocol import (
    NatsAuthorization,
    NatsSettings,
    SystemClock,
    ensure_agency_keys,
    load_agency_signing_key,
    load_directory,
    nats_authorization,
    nats_settings_for,
)
from tests.integration.adapter_process import BrokerProcess, adapter_toml

from ._procs import ManagedProcess, ProcessSpec, child_env
from ._systems_entry import READY as SYSTEMS_READY

__all__ = [
    "BROKER_READY",
    "LOAD_HOLDER",
    "POLICE",
    "REGULATOR",
    "FaultWorld",
    "WorldConfig",
    "fault_authorization",
    "free_port",
    "scaled_sla_policy",
]

REPO = Path(__file__).resolve().parents[2]
POLICE = "police-310115"
REGULATOR = "regulator-pboc"
BROKER_READY = "greenchannel broker listening on "
LOAD_HOLDER = "压测某"
"""Holder of the accounts the load stops payments on (fictional, like every name in the samples)."""
LOAD_BALANCE = 10**15
"""Opening balance of each load account: every stop-payment of the load is held in full."""
_ACCOUNT_PREFIX = {"bank-icbc": "622202", "bank-ccb": "621700", "bank-cmb": "622588", "bank-abc": "622848"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _keys_dir(root: Path) -> Path:
    return root / "keys"


def fault_authorization(root: Path) -> NatsAuthorization:
    """The per-agency NATS accounts of a scenario's stack, as ``greenchannel broker`` gives its
    embedded server: JetStream in the broker's account, one account per agency of the directory.

    Seeds and agency keys go where the world's processes read them (``--state-dir``); call it
    before starting NATS, which needs the accounts, and so before the world.
    """
    keys = _keys_dir(root)
    overlay = ensure_agency_keys(DEFAULT_DIRECTORY, keys, clock=SystemClock())
    registry = load_directory(DEFAULT_DIRECTORY, key_overlays=[overlay])
    return nats_authorization(keys, [agency.id for agency in registry.agencies()])


def scaled_sla_policy(path: Path, *, deliver: str, acknowledge: str, execute: str) -> Path:
    """The shipped CN policy with short STANDARD deadlines (GREEN ones untouched); written to ``path``.

    The load runs GREEN with the real minutes-long deadlines; the few STANDARD requests to a bank
    whose adapter is not running are the ones whose deadlines must fire, within seconds.
    """
    source = REPO / "agencies" / "sla" / "cn.toml"
    text = source.read_text(encoding="utf-8")
    standard = 'deliver = "1h"\nacknowledge = "8h"\nexecute = "3d"'
    if text.count(standard) != 1:
        raise AssertionError(f"{source}: the STANDARD deadline block changed; update the fault suite")
    scaled = f'deliver = "{deliver}"\nacknowledge = "{acknowledge}"\nexecute = "{execute}"'
    path.write_text(text.replace(standard, scaled), encoding="utf-8")
    return path


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """One scenario's stack."""

    root: Path
    """Keys, data, logs and the SLA file go under here."""
    nats_url: str
    """The NATS the broker and the agencies use (comma separated for a cluster)."""
    replicas: int = 1
    """JetStream replicas the broker asks for (3 on the cluster)."""
    banks: tuple[str, ...] = ("bank-icbc", "bank-ccb")
    """Banks whose system and adapter run; the load goes to them."""
    ack_wait: float = 2.0
    """The adapters' inbox ack wait."""
    broker_ack_wait: float | None = None
    """Ack wait of the broker's consumers; None: the CLI's broker with its defaults."""
    standard_deadlines: tuple[str, str, str] = ("2s", "3s", "4s")
    """Deliver, acknowledge, execute deadlines of STANDARD requests."""
    adapter_instances: int = 0
    """0: the banks' systems and adapters in one ``greenchannel agencies`` process. N: the systems
    in a process of their own, and N ``greenchannel adapter --config`` processes per bank sharing
    its inbox consumers (a standby takes over what a killed instance held); one NATS URL only."""


class FaultWorld:
    """The broker and agencies processes of one scenario; an async context manager."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        root = config.root
        self.keys_dir = _keys_dir(root)
        self.data_dir = root / "data"
        self.logs_dir = root / "logs"
        self.sla_path = root / "sla.toml"
        self.directory = DEFAULT_DIRECTORY
        self.broker_port = free_port()
        self.accounts = {bank: _load_account(bank) for bank in config.banks}
        env = child_env(os.environ, GREENCHANNEL_NATS_URL=config.nats_url, PYTHONUNBUFFERED="1")
        self.broker = ManagedProcess(
            ProcessSpec(
                name="broker",
                argv=_broker_argv(self, replicas=config.replicas, ack_wait=config.broker_ack_wait),
                ready=BROKER_READY,
                log_dir=self.logs_dir,
                env=env,
                cwd=REPO,
            )
        )
        self.system_ports = {bank: free_port() for bank in config.banks}
        split = config.adapter_instances > 0
        self.agencies = ManagedProcess(
            ProcessSpec(
                name="systems" if split else "agencies",
                argv=_systems_argv(self) if split else _agencies_argv(self),
                ready=SYSTEMS_READY if split else READY_PREFIX,
                log_dir=self.logs_dir,
                env=env,
                cwd=REPO,
            )
        )
        """The banks' systems, and in the combined shape their adapters too: the ``agencies`` kill."""
        self.adapters: dict[str, list[ManagedProcess]] = {
            bank: [
                ManagedProcess(
                    ProcessSpec(
                        name=f"adapter-{bank}-{n}",
                        argv=[
                            sys.executable,
                            "-m",
                            "broker.cli",
                            "--log-level",
                            "warning",
                            "adapter",
                            "--config",
                            str(self._adapter_file(bank, n)),
                        ],
                        ready=ADAPTER_READY,
                        log_dir=self.logs_dir,
                        env=env,
                        cwd=REPO,
                    )
                )
                for n in range(1, config.adapter_instances + 1)
            ]
            for bank in config.banks
        }
        """Per bank, its adapter instances (split shape only)."""

    @property
    def broker_address(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    def nats_settings(self, name: str) -> NatsSettings:
        """Straight onto NATS as the broker's user (its seed), e.g. to read consumer info."""
        return nats_settings_for(
            self.config.nats_url, state_dir=self.keys_dir, agency=None, name=name, initial_connect_timeout=5.0
        )

    def client(self, agency: str = POLICE, *, timeout: float = 5.0) -> BusClient:
        """A Bus API client speaking for ``agency``; its channel survives broker restarts."""
        return BusClient(
            self.broker_address,
            agency_id=agency,
            signing_key=load_agency_signing_key(self.keys_dir, agency),
            timeout=timeout,
        )

    def bank_database(self, bank: str) -> Path:
        return self.data_dir / "agencies" / f"{bank}.sqlite3"

    def adapter_states(self, agency: str) -> list[Path]:
        """The journal directory of each of the agency's adapter instances."""
        if self.config.adapter_instances == 0:
            return [self.data_dir / "adapters" / agency]
        return [self._journal(agency, n) for n in range(1, self.config.adapter_instances + 1)]

    def _journal(self, bank: str, n: int) -> Path:
        return self.data_dir / "adapters" / bank / str(n)

    def _adapter_file(self, bank: str, n: int) -> Path:
        return self.config.root / "adapters" / f"{bank}-{n}.toml"

    def _all_adapters(self) -> list[ManagedProcess]:
        return [process for instances in self.adapters.values() for process in instances]

    async def __aenter__(self) -> FaultWorld:
        try:
            await self.start()
        except BaseException:
            self.kill_all()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.kill_all()
            return
        await self.stop()

    async def start(self) -> None:
        # Keys first, in this process: two children generating them at once would race.
        ensure_agency_keys(self.directory, self.keys_dir, clock=SystemClock())
        deliver, acknowledge, execute = self.config.standard_deadlines
        scaled_sla_policy(self.sla_path, deliver=deliver, acknowledge=acknowledge, execute=execute)
        self._seed_accounts()
        self._write_adapter_files()
        await self.broker.start()
        await self.agencies.start()
        # Together: each waits for the broker's inbox stream, then for its consumers.
        await asyncio.gather(*(process.start() for process in self._all_adapters()))

    async def stop(self) -> None:
        """Adapters first (they finish their message in hand), then the systems, then the broker;
        all gracefully."""
        adapters = self._all_adapters()
        stopped = await asyncio.gather(*(process.stop() for process in adapters))
        codes = {process.spec.name: code for process, code in zip(adapters, stopped, strict=True)}
        codes |= {"agencies": await self.agencies.stop(), "broker": await self.broker.stop()}
        bad = {name: code for name, code in codes.items() if code not in (0, None)}
        if bad:
            raise AssertionError(f"graceful stop failed: {bad}\n{self.agencies.tail()}\n{self.broker.tail()}")

    def kill_all(self) -> None:
        for process in (*self._all_adapters(), self.agencies, self.broker):
            process.kill_now()

    def _write_adapter_files(self) -> None:
        """Each instance's adapter.toml, as the bank would write it: its keys and NATS seed in the
        state directory, the public directory and key overlay, its system, a journal of its own."""
        # The operator's side as adapter_toml reads it: the keys' state directory and one NATS URL.
        operator = BrokerProcess(self.keys_dir, self.broker_address, self.config.nats_url)
        for bank, instances in self.adapters.items():
            for n in range(1, len(instances) + 1):
                path = self._adapter_file(bank, n)
                path.parent.mkdir(parents=True, exist_ok=True)
                text = adapter_toml(
                    operator,
                    bank,
                    target=f"127.0.0.1:{self.system_ports[bank]}",
                    journal=self._journal(bank, n),
                    health=False,
                    ack_wait=self.config.ack_wait,
                )
                path.write_text(text, encoding="utf-8")

    def _seed_accounts(self) -> None:
        """One account with a balance that covers the whole load, in each bank's own database."""
        (self.data_dir / "agencies").mkdir(parents=True, exist_ok=True)
        for bank, number in self.accounts.items():
            with BankCore(BankConfig(agency_id=bank, database=self.bank_database(bank))) as core:
                if core.account(number) is None:
                    core.open_account(number, LOAD_HOLDER, balance=LOAD_BALANCE)


def _load_account(bank: str) -> str:
    return f"{_ACCOUNT_PREFIX[bank]}7700000000001"


def _broker_argv(world: FaultWorld, *, replicas: int, ack_wait: float | None) -> list[str]:
    common = [
        "--state-dir",
        str(world.keys_dir),
        "--directory",
        str(world.directory),
        "--log-level",
        "warning",
    ]
    options = ["--listen", world.broker_address, "--sla-policy", str(world.sla_path)]
    if replicas > 1:
        options += ["--replicas", str(replicas)]
    if ack_wait is None and (replicas == 1 or _cli_accepts(["broker", "--replicas", str(replicas)])):
        return [sys.executable, "-m", "broker.cli", *common, "broker", *options]
    # The same run_broker behind a parser with the knobs the CLI lacks (see the module).
    if ack_wait is not None:
        options += ["--consumer-ack-wait", str(ack_wait)]
    return [sys.executable, "-m", "tests.faults._broker_entry", *common, *options]


def _systems_argv(world: FaultWorld) -> list[str]:
    banks = [f"--bank={bank}={port}" for bank, port in world.system_ports.items()]
    return [
        sys.executable,
        "-m",
        "tests.faults._systems_entry",
        "--state-dir",
        str(world.keys_dir),
        "--directory",
        str(world.directory),
        "--data",
        str(world.data_dir / "agencies"),
        *banks,
    ]


def _agencies_argv(world: FaultWorld) -> list[str]:
    common = [
        "--state-dir",
        str(world.keys_dir),
        "--directory",
        str(world.directory),
        "--log-level",
        "warning",
    ]
    options = [
        "--only",
        ",".join(world.config.banks),
        "--data",
        str(world.data_dir),
        "--ack-wait",
        str(world.config.ack_wait),
    ]
    if _cli_accepts(["agencies", "--only", "bank-icbc"]):
        return [sys.executable, "-m", "broker.cli", *common, "agencies", *options]
    # Until broker/cli/_agencies.py registers the command: the module runs it on its own.
    return [sys.executable, "-m", "broker.cli._agencies", *common, *options]


def _cli_accepts(argv: list[str]) -> bool:
    """Whether ``greenchannel`` parses ``argv`` (a flag or command may not be wired in yet)."""
    parser = parser_for(argv)
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit:
            return False
    return True
