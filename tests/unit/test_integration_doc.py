"""docs/integration.md keeps up with the code a foreign integrator must match.

Every ``google.rpc.ErrorInfo`` reason the broker can send, every bearer-token reason and every
signature-verification reason must be named in the guide; so must the claim names and constants
a foreign signer has to produce. A new reason without documentation fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from adapters.conformance import CHECKS, KINDS
from broker.hub import _auth
from broker.protocol import _errors as protocol_errors
from broker.protocol import _sealing, _signing, _tokens

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "integration.md").read_text(encoding="utf-8")


def _documented(word: str) -> bool:
    # As code: `WORD`, or a JSON string `"WORD"`.
    return re.search(rf'`"?{re.escape(word)}"?`', GUIDE) is not None


def _subclasses(
    cls: type[protocol_errors.VerificationError],
) -> list[type[protocol_errors.VerificationError]]:
    found: list[type[protocol_errors.VerificationError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_reason_the_broker_raises_in_its_source_is_documented() -> None:
    # reason="X" literals at raise sites; the hub's error classes carry defaults of their own.
    literals = {
        match
        for path in (ROOT / "broker" / "hub").glob("*.py")
        for match in re.findall(r'reason="([A-Z_]+)"', path.read_text(encoding="utf-8"))
    }
    assert len(literals) >= 20
    missing = sorted(reason for reason in literals if not _documented(reason))
    assert not missing, f"reasons missing from docs/integration.md: {missing}"


def test_every_bearer_token_and_signature_reason_is_documented() -> None:
    token_reasons = {reason for reason, _hint in _auth._REASONS.values()}
    token_reasons |= {"MISSING_TOKEN", "REPLAYED_TOKEN", "UNKNOWN_AGENCY", "TLS_IDENTITY_MISMATCH"}
    signature_reasons = {
        cls.reason
        for cls in _subclasses(protocol_errors.VerificationError)
        if cls.__module__ == protocol_errors.__name__
    }
    assert len(signature_reasons) >= 10
    missing = sorted(r for r in token_reasons | signature_reasons if not _documented(r))
    assert not missing, f"reasons missing from docs/integration.md: {missing}"


def test_the_constants_a_foreign_signer_must_produce_are_the_codes() -> None:
    assert _documented(_signing._ALG)
    assert _documented(_signing._TYP)
    assert _documented(_tokens.BROKER_AUDIENCE)
    assert f'"{_signing._DIGEST_PREFIX}"' in GUIDE
    assert _sealing.SEALING_LABEL.decode("ascii") in GUIDE
    for content_type in (
        _sealing.REQUEST_CONTENT_TYPE,
        _sealing.DATA_ANSWER_CONTENT_TYPE,
        _sealing.RESULT_DETAILS_CONTENT_TYPE,
    ):
        assert _documented(content_type), content_type
    for claim in ("iss", "sub", "aud", "iat", "exp", "jti", "kid", "b64", "crit", "gct", "dig"):
        assert _documented(claim), claim
    assert "5 minutes" in GUIDE  # _tokens._MAX_TTL
    assert _tokens._MAX_TTL.total_seconds() == 300


def test_every_conformance_check_is_named_in_the_guide() -> None:
    names = {check.name for _stub, checks in CHECKS.values() for check in checks}
    assert len(names) >= 30
    missing = sorted(name for name in names if not _documented(name))
    assert not missing, f"conformance checks missing from docs/integration.md: {missing}"
    for kind in KINDS:
        assert f"greenchannel conformance {kind}" in GUIDE or f"| {kind} |" in GUIDE, kind
    assert "--print-fixture" in GUIDE
    assert "adapters/conformance/fixture.json" in GUIDE
