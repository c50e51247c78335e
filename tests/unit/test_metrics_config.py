"""Where metrics are served: ``MetricsConfig``, ``[metrics]`` in adapter.toml, and the flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import AdapterConfigError, load_adapter_file
from broker.cli._main import parser_for
from broker.protocol import MetricsConfig, MetricsEndpoint, new_registry
from tests.integration.test_adapter_command import _MINIMAL

# The minimal file the adapter command's own tests read, with a [metrics] table added.
_FILE = _MINIMAL


def _file(tmp_path: Path, metrics: str = "") -> Path:
    path = tmp_path / "adapter.toml"
    path.write_text(_FILE + metrics, encoding="utf-8")
    return path


def test_metrics_are_off_unless_asked_for(tmp_path: Path) -> None:
    assert not MetricsConfig().enabled
    config = load_adapter_file(_file(tmp_path))
    assert config.metrics == MetricsConfig()
    on = config.with_metrics("127.0.0.1:0")
    assert on.metrics.listen == "127.0.0.1:0"
    assert on.metrics.enabled


def test_the_metrics_table_reads(tmp_path: Path) -> None:
    config = load_adapter_file(_file(tmp_path, '\n[metrics]\nlisten = "[::1]:9465"\ninterval = 2\n'))
    assert config.metrics == MetricsConfig(listen="[::1]:9465", interval=2.0)


@pytest.mark.parametrize(
    ("table", "field", "message"),
    [
        ('[metrics]\nlisten = "9465"\n', "metrics.listen", "host:port"),
        ('[metrics]\nlisten = "127.0.0.1:70000"\n', "metrics.listen", "host:port"),
        ("[metrics]\ninterval = 5\n", "metrics.listen", "missing required field"),
        ('[metrics]\nlisten = "127.0.0.1:0"\ninterval = 0\n', "metrics.interval", "> 0"),
        ('[metrics]\nlisten = "127.0.0.1:0"\nport = 1\n', "metrics.port", "unknown field"),
    ],
)
def test_a_bad_metrics_table_is_named(tmp_path: Path, table: str, field: str, message: str) -> None:
    path = _file(tmp_path, "\n" + table)
    with pytest.raises(AdapterConfigError) as caught:
        load_adapter_file(path)
    assert str(caught.value).startswith(f"{path}: {field}: "), caught.value
    assert message in str(caught.value)


def test_a_bad_listen_address_is_refused_in_code_and_on_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="host:port"):
        MetricsConfig(listen="localhost")
    with pytest.raises(AdapterConfigError, match="--metrics-listen: must be host:port"):
        load_adapter_file(_file(tmp_path)).with_metrics("everywhere")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["broker", "--metrics-listen", "127.0.0.1:9464"], "metrics_listen"),
        (["adapter", "--config", "a.toml", "--metrics-listen", "127.0.0.1:9465"], "metrics_listen"),
        (["up", "--metrics-listen", "127.0.0.1:9464"], "metrics_listen"),
        (["up", "--adapter-metrics-listen", "127.0.0.1:9465"], "adapter_metrics_listen"),
        (["agencies", "--metrics-listen", "127.0.0.1:9465"], "metrics_listen"),
    ],
)
def test_the_commands_take_a_metrics_address(argv: list[str], flag: str) -> None:
    args = parser_for(argv).parse_args(argv)
    assert getattr(args, flag) == argv[-1]


def test_a_bad_metrics_address_stops_broker_and_up_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from broker.cli import _agencies, _broker, _up

    broker = parser_for(["broker"]).parse_args(["broker", "--metrics-listen", "nowhere"])
    # The broker's option errors are usage errors: exit status 2, as argparse's own.
    with pytest.raises(SystemExit) as stopped:
        _broker._metrics(broker)
    assert stopped.value.code == 2
    assert "greenchannel broker: --metrics-listen: must be host:port" in capsys.readouterr().err
    up = parser_for(["up"]).parse_args(["up", "--adapter-metrics-listen", "nowhere"])
    with pytest.raises(SystemExit, match="greenchannel up: --adapter-metrics-listen: must be host:port"):
        _up._metrics(up, "adapter_metrics_listen")
    agencies = parser_for(["agencies"]).parse_args(["agencies", "--metrics-listen", ":9465"])
    with pytest.raises(SystemExit, match="greenchannel agencies: --metrics-listen: must be host:port"):
        _agencies._metrics(agencies)


def test_an_endpoint_on_a_taken_port_says_so_and_one_closes_cleanly() -> None:
    first = MetricsEndpoint("127.0.0.1:0", new_registry())
    address = first.start()
    try:
        with pytest.raises(OSError, match=f"cannot serve metrics on {address}"):
            MetricsEndpoint(address, new_registry()).start()
    finally:
        first.close()
    first.close()  # idempotent
