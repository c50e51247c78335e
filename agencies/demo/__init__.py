"""The whole bus on one machine, and the demo scenario played on it.

:class:`Stack` runs NATS, the broker and every reference agency behind its adapter (``greenchannel
up``); :class:`AgencyFleet` runs the agencies and adapters alone against a broker elsewhere
(``greenchannel agencies``); :func:`run_demo` plays the scenario and returns a
:class:`DemoReport` (``greenchannel demo`` renders it). This package sits above every role: it
imports the hub, the adapters, the client, the embedded NATS and the reference agencies, and is
never imported by them.
"""

from ._demo import DemoConfig, DemoReport, DemoRequest, run_demo
from ._fleet import AgenciesConfig, AgencyFleet, select_agencies
from ._pre_payment import CustomerTransfer, customer_transfer
from ._stack import Stack, StackConfig

__all__ = [
    "AgenciesConfig",
    "AgencyFleet",
    "CustomerTransfer",
    "DemoConfig",
    "DemoReport",
    "DemoRequest",
    "Stack",
    "StackConfig",
    "customer_transfer",
    "run_demo",
    "select_agencies",
]
