"""``[risk]`` of the policy file, read by the one policy loader; and the check's rate bucket."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from agencies import DEFAULT_POLICY
from broker.hub import Policy, PolicyError, load_policy
from broker.hub._risk_counts import RateLimiter
from broker.hub._risk_policy import DEFAULT_RISK
from broker.protocol import AgencyKind

BASE = '[policy]\nversion = 1\n\n[[rule]]\nsenders = ["police"]\ntypes = ["freeze"]\nrecipients = ["bank"]\n'


def load(tmp_path: Path, risk: str) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(BASE + risk, encoding="utf-8")
    return load_policy(path)


def test_the_sample_policy_lets_police_mark_banks_and_platforms_propose_and_carriers_neither() -> None:
    risk = load_policy(DEFAULT_POLICY).risk
    assert risk.mark == {AgencyKind.POLICE}
    assert risk.propose == {AgencyKind.BANK, AgencyKind.PLATFORM}
    assert AgencyKind.CARRIER not in risk.mark | risk.propose
    assert risk.check == {AgencyKind.BANK, AgencyKind.CARRIER, AgencyKind.PLATFORM, AgencyKind.POLICE}
    assert risk.max_validity == timedelta(days=1826)  # 60 months, as Pix
    assert risk.default_validity == timedelta(days=365)
    assert (risk.check_rate, risk.check_burst) == (1000, 2000)


def test_a_policy_without_risk_gets_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").risk == DEFAULT_RISK


def test_risk_fields_are_read(tmp_path: Path) -> None:
    risk = load(
        tmp_path,
        '[risk]\ncheck = ["bank"]\npropose = []\nmax_validity = "30d"\ndefault_validity = "7d"\n'
        "check_rate = 5\ncheck_burst = 10\n",
    ).risk
    assert risk.check == {AgencyKind.BANK}
    assert risk.propose == frozenset()
    assert (risk.max_validity, risk.default_validity) == (timedelta(days=30), timedelta(days=7))
    assert (risk.check_rate, risk.check_burst) == (5, 10)


@pytest.mark.parametrize(
    ("risk", "field", "words"),
    [
        pytest.param('[risk]\ncheck = ["banks"]\n', "risk.check[0]", "unknown agency kind", id="kind"),
        pytest.param('[risk]\nmark = ["bank"]\n', "risk", "only police mark directly", id="bank-marks"),
        pytest.param('[risk]\npropose = ["regulator"]\n', "risk", "regulators", id="regulator"),
        pytest.param('[risk]\npropose = ["police"]\n', "risk", "marks or proposes", id="both"),
        pytest.param(
            '[risk]\nmax_validity = "60 months"\n', "risk.max_validity", "not a duration", id="duration"
        ),
        pytest.param(
            '[risk]\nmax_validity = "30d"\ndefault_validity = "31d"\n',
            "risk",
            "default_validity",
            id="default",
        ),
        pytest.param("[risk]\ncheck_rate = 0\n", "risk.check_rate", "between", id="rate"),
        pytest.param("[risk]\nchecks = 1\n", "risk.checks", "", id="unknown-field"),
    ],
)
def test_bad_risk_tables_name_the_field(tmp_path: Path, risk: str, field: str, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        load(tmp_path, risk)
    assert info.value.field == field
    assert words in str(info.value)


def test_the_rate_bucket_grants_its_burst_then_refuses_with_a_delay() -> None:
    limiter = RateLimiter(rate=10, burst=20)
    assert limiter.take("bank-icbc", 20) is None
    wait = limiter.take("bank-icbc", 5)
    assert wait is not None
    assert 0 < wait <= 0.5
    assert limiter.take("bank-ccb", 20) is None  # per agency
