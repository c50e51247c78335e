"""Everything a caller of the bus needs, in Python: the client side of the contract.

* :class:`BusClient`: submit, follow and cancel requests, read the registry, the money trail and
  the ledger, with one retry policy for every call and a fresh bearer token per attempt;
* :func:`error_details`: what a failed call says about itself (``ErrorInfo.reason``, field
  violations, retry delay);
* :func:`bearer_metadata`: the ``authorization`` metadata for a caller's own stubs;
* :func:`open_result_details`, :func:`open_accounts`: the sealed parts of answers and trails,
  opened with the caller's own X25519 key;
* :func:`sla_report`: SLA compliance computed from the statuses a caller may read;
* :data:`OPEN_STATES`, :func:`next_deadline`, :func:`about_to_breach`: what still waits for an
  answer and what falls due next (``greenchannel list``, the console);
* :func:`export_ledger`, :func:`read_ledger_file`: the ledger as a file, for offline proof;
* :class:`FraudReporter`: an agency's fraud reports to the police;
* :class:`RiskClient` (``BusClient.risk``): the risk registry and the pre-payment check.

Never imports :mod:`broker.hub`: a client runs on an agency's host, without the broker.
"""

from ._amounts import minor_units
from ._bus import LEDGER_PAGE, BusClient
from ._errors import ErrorDetails, error_details
from ._ledger import (
    FORMAT,
    ExportSummary,
    LedgerFile,
    LedgerFileError,
    export_ledger,
    read_ledger_file,
    registry_keys,
)
from ._metadata import AUTHORIZATION_HEADER, bearer_metadata
from ._open import OPEN_STATES, about_to_breach, next_deadline
from ._reporting import FraudReporter
from ._results import open_result_details
from ._risk import RiskClient
from ._sla_report import (
    PHASES,
    FeedbackCounts,
    FollowUpCounts,
    PhaseCounts,
    PhaseOutcome,
    SlaReport,
    SlaRow,
    WarningCounts,
    feedback_line,
    follow_up_line,
    human_duration,
    nearest_rank,
    phase_outcome,
    render_table,
    report_to_json,
    sla_report,
    warning_line,
)
from ._trail import fetch_trail, open_account, open_accounts, switch_chasing

__all__ = [
    "AUTHORIZATION_HEADER",
    "FORMAT",
    "LEDGER_PAGE",
    "OPEN_STATES",
    "PHASES",
    "BusClient",
    "ErrorDetails",
    "ExportSummary",
    "FeedbackCounts",
    "FollowUpCounts",
    "FraudReporter",
    "LedgerFile",
    "LedgerFileError",
    "PhaseCounts",
    "PhaseOutcome",
    "RiskClient",
    "SlaReport",
    "SlaRow",
    "WarningCounts",
    "about_to_breach",
    "bearer_metadata",
    "error_details",
    "export_ledger",
    "feedback_line",
    "fetch_trail",
    "follow_up_line",
    "human_duration",
    "minor_units",
    "nearest_rank",
    "next_deadline",
    "open_account",
    "open_accounts",
    "open_result_details",
    "phase_outcome",
    "read_ledger_file",
    "registry_keys",
    "render_table",
    "report_to_json",
    "sla_report",
    "switch_chasing",
    "warning_line",
]
