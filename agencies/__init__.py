"""Reference agency systems (bank, carrier, platform, police) and the sample files they ship.

The whole-stack launcher and the demo scenario live in :mod:`agencies.demo`.
"""

from agencies._samples import DEFAULT_DIRECTORY, DEFAULT_POLICY, DEFAULT_SLA_POLICY_PATH, EU_SLA_POLICY_PATH
from agencies._serve import AgencyServer, ReferenceAgency, build_reference_agency, serve_agency

__all__ = [
    "DEFAULT_DIRECTORY",
    "DEFAULT_POLICY",
    "DEFAULT_SLA_POLICY_PATH",
    "EU_SLA_POLICY_PATH",
    "AgencyServer",
    "ReferenceAgency",
    "build_reference_agency",
    "serve_agency",
]
