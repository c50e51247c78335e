"""Reference agency systems, the sample directory, the whole-stack launcher and the demo scenario."""

from agencies._demo import DemoConfig, DemoReport, DemoRequest, run_demo
from agencies._serve import AgencyServer, ReferenceAgency, build_reference_agency, serve_agency
from agencies._stack import DEFAULT_DIRECTORY, Stack, StackConfig

__all__ = [
    "DEFAULT_DIRECTORY",
    "AgencyServer",
    "DemoConfig",
    "DemoReport",
    "DemoRequest",
    "ReferenceAgency",
    "Stack",
    "StackConfig",
    "build_reference_agency",
    "run_demo",
    "serve_agency",
]
