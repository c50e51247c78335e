"""Which requests a case has, for showing holds the money trail records only at their outcome.

The trail is written once per hold, at its outcome (the hold itself rides in the request's
status as a ``TrailSeed`` until then). ``GetTrail`` still shows a hold that is pending: it finds
the case's requests by the subjects the watch log holds for the case (one stream-info call, no
record read; each request's subject names its id) and draws the ones the trail lacks from their statuses.
"""

from __future__ import annotations

from typing import Protocol

import nats.errors
from nats.js.client import JetStreamContext

from broker.protocol import WATCH_STREAM, parse_status_subject, status_filter

from ._errors import UnavailableError

__all__ = ["CaseRequests", "WatchLogCaseRequests"]


class CaseRequests(Protocol):
    """The ids of a case's requests."""

    async def request_ids(self, case_owner: str, case_number: str) -> list[str]: ...


class WatchLogCaseRequests:
    """:class:`CaseRequests` read from the subjects of GC_WATCH, oldest request first."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def request_ids(self, case_owner: str, case_number: str) -> list[str]:
        case = status_filter(case_owner=case_owner, case_number=case_number)
        try:
            info = await self._js.stream_info(WATCH_STREAM, subjects_filter=case)
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read the watch log: {exc}") from exc
        # UUIDv7 ids sort by submission time: a conversion comes after the hold it converts.
        subjects = (parse_status_subject(subject) for subject in info.state.subjects or {})
        return sorted({parsed.request_id for parsed in subjects if parsed is not None})
