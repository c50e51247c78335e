"""Everything a caller of the bus needs, in Python: the client side of the contract.

* :class:`BusClient`: submit, follow and cancel requests, read the registry, the money trail and
  the ledger, with one retry policy for every call and a fresh bearer token per attempt;
* :func:`error_details`: what a failed call says about itself (``ErrorInfo.reason``, field
  violations, retry delay);
* :func:`bearer_metadata`: the ``authorization`` metadata for a caller's own stubs;
* :func:`open_result_details`, :func:`open_accounts`: the sealed parts of answers and trails,
  opened with the caller's own X25519 key;
* :func:`sla_report`: SLA compliance computed from the statuses a caller may read;
* :func:`export_ledger`, :func:`read_ledger_file`: the ledger as a file, for offline proof;
* :class:`FraudReporter`: an agency's fraud reports to the police.

Never imports :mod:`broker.hub`: a client runs on an agency's host, without the broker.
"""

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
from ._reporting import FraudReporter
from ._results import open_result_details
from ._sla_report import (
    PHASES,
    FollowUpCounts,
    PhaseCounts,
    PhaseOutcome,
    SlaReport,
    SlaRow,
    follow_up_line,
    human_duration,
    nearest_rank,
    phase_outcome,
    render_table,
    report_to_json,
    sla_report,
)
from ._trail import fetch_trail, open_account, open_accounts, switch_chasing

__all__ = [
    "AUTHORIZATION_HEADER",
    "FORMAT",
    "LEDGER_PAGE",
    "PHASES",
    "BusClient",
    "ErrorDetails",
    "ExportSummary",
    "FollowUpCounts",
    "FraudReporter",
    "LedgerFile",
    "LedgerFileError",
    "PhaseCounts",
    "PhaseOutcome",
    "SlaReport",
    "SlaRow",
    "bearer_metadata",
    "error_details",
    "export_ledger",
    "fetch_trail",
    "follow_up_line",
    "human_duration",
    "nearest_rank",
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
]
