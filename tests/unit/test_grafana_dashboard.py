"""The shipped Grafana dashboard: Grafana's dashboard model, and only metrics the code defines.

``docs/grafana/dashboard.schema.json`` is the part of Grafana's dashboard JSON model that the
dashboard uses, as a JSON Schema (no well-kept package on PyPI ships Grafana's own schema as JSON
Schema); ``jsonschema`` checks the dashboard against it. Every PromQL expression may name only
metrics that :mod:`broker.hub._metrics`, :mod:`adapters._metrics` and the shared consumer metrics
register.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from adapters import PrometheusAdapterMetrics
from broker.hub._metrics import PrometheusBrokerMetrics
from broker.protocol import new_registry

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "greenchannel-dashboard.json"
SCHEMA = ROOT / "docs" / "grafana" / "dashboard.schema.json"
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
_METRIC = re.compile(r"\bgreenchannel_[a-z0-9_]+")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def defined_metrics() -> set[str]:
    """Every sample name the broker's and the adapters' registries can serve."""
    names: set[str] = set()
    registries: list[CollectorRegistry] = []
    registries.append(PrometheusBrokerMetrics(new_registry()).registry)
    registries.append(PrometheusAdapterMetrics(new_registry()).registry)
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
            names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
    return names


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    errors = sorted(validator().iter_errors(dashboard()), key=str)
    assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda board: board.pop("schemaVersion"),
        lambda board: board["panels"][1].pop("gridPos"),
        lambda board: board["panels"][1]["gridPos"].update(w=25),
        lambda board: board["panels"][1]["targets"][0].pop("expr"),
        lambda board: board["templating"]["list"][1].pop("name"),
        lambda board: board["templating"]["list"][1].update(type="dropdown"),
    ],
)
def test_the_schema_refuses_what_grafana_refuses(breakage: Any) -> None:
    broken = copy.deepcopy(dashboard())
    breakage(broken)
    assert not validator().is_valid(broken)


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    every = panels(dashboard())
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for panel in every:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]


def test_every_expression_names_only_metrics_the_code_defines() -> None:
    defined = defined_metrics()
    board = dashboard()
    used: set[str] = set()
    expressions = [target["expr"] for panel in panels(board) for target in panel.get("targets", [])]
    expressions += [
        variable["definition"] for variable in board["templating"]["list"] if "definition" in variable
    ]
    for expr in expressions:
        names = set(_METRIC.findall(expr))
        assert names, expr
        assert names <= defined, (expr, sorted(names - defined))
        used |= names
    # The dashboard shows every family the code defines.
    families = {name for name in defined if not name.endswith("_created")}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    missing = {name for name in families if re.sub(r"_(total|bucket|count|sum)$", "", name) not in shown}
    assert missing == set()


def test_every_variable_used_is_defined() -> None:
    board = dashboard()
    defined = {variable["name"] for variable in board["templating"]["list"]}
    text = json.dumps(board["panels"])
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)) - {
        "__range",
        "__interval",
        "__rate_interval",
    }
    assert used <= defined, sorted(used - defined)
