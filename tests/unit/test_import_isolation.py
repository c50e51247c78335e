"""Each role imports only what it needs: checked in fresh interpreters, on ``sys.modules``.

A module imported once stays in ``sys.modules`` for the whole test run, so every case starts its
own interpreter (the venv's, with the same ``sys.path``), imports one role and reports which
modules that loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Importing grpc itself touches the top-level grpc_health / grpc_reflection packages (it probes
# for them); what costs and what the roles must not need are their service modules.
REFLECTION = ("grpc_reflection.v1alpha", "grpc_reflection.v1")
HEALTH = ("grpc_health.v1",)
HUB = ("broker.hub",)
CLI = ("broker.cli",)


def loaded_after(code: str) -> set[str]:
    """The modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    return set(json.loads(last))


def under(modules: set[str], *packages: str) -> list[str]:
    """The modules that are ``packages`` or inside them."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


@pytest.mark.parametrize(
    "module",
    [
        "adapters",
        "agencies.bank",
        "agencies.carrier",
        "agencies.platform",
        "agencies.police",
        "broker.client",
        "broker.protocol",
    ],
)
def test_an_agency_role_never_loads_the_hub_or_the_cli(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert module in loaded
    assert under(loaded, *HUB) == []
    assert under(loaded, *CLI) == []
    assert under(loaded, "agencies.demo") == []


@pytest.mark.parametrize("module", ["adapters", "broker.client", "broker.protocol"])
def test_the_core_roles_need_no_server_extras(module: str) -> None:
    """Reflection and the embedded nats-server are the broker's and the agencies' extras."""
    loaded = loaded_after(f"import {module}")
    assert under(loaded, "broker.embedded") == []
    assert under(loaded, *REFLECTION) == []


@pytest.mark.parametrize("module", ["adapters", "broker.client", "broker.protocol", "broker.hub"])
def test_metrics_are_imported_only_when_switched_on(module: str) -> None:
    """prometheus-client is an extra: no role loads it until metrics are switched on."""
    assert under(loaded_after(f"import {module}"), "prometheus_client") == []


@pytest.mark.parametrize("module", ["broker.client", "broker.protocol"])
def test_a_client_needs_no_health_service(module: str) -> None:
    """Health is served by the broker, the agencies and the standalone adapter, not by a client."""
    assert under(loaded_after(f"import {module}"), *HEALTH) == []


def test_adapters_do_not_load_the_client() -> None:
    """The adapter runtime reports nothing through the client: FraudReporter lives there."""
    assert under(loaded_after("import adapters"), "broker.client") == []


def test_the_client_never_loads_the_reference_agencies_or_adapters() -> None:
    loaded = loaded_after("import broker.client")
    assert under(loaded, "agencies", "adapters") == []


def test_cli_help_lists_every_command_without_loading_any() -> None:
    code = (
        "import contextlib, io\n"
        "from broker.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, exit.code\n"
        "from broker.cli._main import COMMANDS\n"
        "missing = [name for name in COMMANDS if name not in out.getvalue()]\n"
        "assert not missing, missing\n"
    )
    loaded = loaded_after(code)
    assert under(loaded, *HUB) == []
    assert under(loaded, "broker.embedded", "agencies", "adapters") == []
    # Only the dispatcher and what it needs: no subcommand module.
    assert under(loaded, *CLI) == ["broker.cli", "broker.cli._env", "broker.cli._main", "broker.cli._samples"]


@pytest.mark.parametrize("command", ["submit", "status", "watch", "sla", "trail", "ledger"])
def test_a_client_command_parses_without_the_hub(command: str) -> None:
    code = (
        "from broker.cli._main import parser_for\n"
        f"parser_for([{command!r}, '--help'])\n"
        "import broker.client\n"
    )
    loaded = loaded_after(code)
    assert under(loaded, *HUB) == []
    assert under(loaded, "broker.embedded", "agencies", "adapters") == []


def test_only_the_broker_command_loads_the_hub() -> None:
    loaded = loaded_after("from broker.cli._main import parser_for\nparser_for(['broker', '--help'])\n")
    assert "broker.hub" in loaded
    assert "broker.cli._broker" in loaded
    assert under(loaded, "agencies", "adapters") == []
