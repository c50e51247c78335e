"""Conformance kit: certifies an agency's OWN service implementation against the contract.

``greenchannel conformance bank|carrier|platform|police --target HOST:PORT`` calls the agency's
service (``BankService``, ``CarrierService``, ``PlatformService`` or ``PoliceService`` of
``proto/greenchannel/v1``) the way the adapter does: the same request messages, an
``OrderContext`` with a fresh UUID request id, and the adapter's gRPC deadline (10 s). It prints one
row per check and exits non-zero when any check fails. Every answer is validated against the
contract's field rules (protovalidate), and the whole run takes seconds against a healthy service.

What the implementer must seed first
------------------------------------
The fixture ``fixture.json`` shipped next to this module (``--fixture`` takes a copy with your own
platform code or region). All people are fictional; amounts are integer minor units.

* bank: open the twelve accounts under ``bank.accounts`` (number, holder name exactly as given,
  opening balance, currency ``bank.currency``), then book ``bank.transfers`` in order, each
  ``minutes_before`` minutes before seeding: a payment of 10,000.00 into the ``onward`` account and
  6,000.00 out of it to another bank, so 4,000.00 remains. The bank's lookback for onward
  transfers must still cover that transfer when the kit runs. ``bank.unknown_account`` must not
  exist. Requests leave ``BankAccountRef.bank`` empty (the bus routes by prefix).
* carrier: register the lines under ``carrier.lines`` (number, ICCID, IMSI, IMEI, subscriber),
  active and unblocked; ``carrier.unknown_number`` must not exist.
* platform: serve platform code ``platform.code`` and register ``platform.accounts``, active and
  unrestricted; ``platform.unknown_account`` must not exist.
* police: serve region ``police.region`` (a desk that declines it still passes, if it says so).

Each check works on its own record and undoes what it did (releases its holds, lifts its blocks),
so checks do not depend on one another and the kit can run again on the same seeded system. A run
cut short (Ctrl-C) may leave a hold in place: seed afresh before the next one.

The checks
----------
For every kind: each request type the adapter sends to that kind executes as the contract says;
an unknown account / number is REJECTED/NOT_FOUND; a request id delivered twice gets the first
answer again with no second effect; a request without context, request id or order gets gRPC
INVALID_ARGUMENT or a REJECTED/INVALID_REQUEST result and changes nothing; a call whose deadline
already passed fails DEADLINE_EXCEEDED and the retry with the same request id executes in full,
once, within the adapter's deadline (gRPC enforces an expired deadline on the caller's side,
so what this proves of the service is that nothing was left half done). Banks additionally:
MISMATCH on a wrong holder name for stop-payments, freezes and data requests (nothing held, no
data, no records quoted in ``detail``), a freeze converting a stop-payment hold, hold extension
and release, and a stop-payment on money that partly left answered
PARTIALLY_EXECUTED/INSUFFICIENT_FUNDS with the rest held and the onward transfer listed in full.
Carriers additionally: MISMATCH when the SIM given is not the number's.
"""

from ._fixture import ConformanceFixture, FixtureError, default_fixture_text, load_fixture
from ._generic import Check
from ._runner import CHECKS, KINDS, CheckOutcome, ConformanceReport, run_checks

__all__ = [
    "CHECKS",
    "KINDS",
    "Check",
    "CheckOutcome",
    "ConformanceFixture",
    "ConformanceReport",
    "FixtureError",
    "default_fixture_text",
    "load_fixture",
    "run_checks",
]
