"""One item of a batch NUMBER_BLOCK lifted (an appeal lifts the holder's own line): is the batch
still in effect?

A lifting order naming an item (``Release.item_index``, kept as ``release_seed.item_index``) lifts
that line only, so the batch stays in effect, not RELEASED, while any line it blocked is still
blocked. Once every item it blocked (``BLOCK_ITEM_STATE_BLOCKED`` in its result) has an executed
item lift, the batch is lifted in all and is RELEASED like a single block. The item lifts are found
among the broker's own orders to the batch's carrier in the case (few: lifting orders, children).
Two item lifts executed at once: each is looked at after its own outcome was stored, so the later
of the two sees both.
"""

from __future__ import annotations

from typing import Protocol

from greenchannel.v1 import common_pb2, lifecycle_pb2, results_pb2

from broker.protocol import BROKER_ID, EXECUTED_STATES

from ._store import RequestStore

__all__ = ["PartyRequests", "items_left_blocked"]


class PartyRequests(Protocol):
    """The ids of a case's requests between two parties (``WatchLog.request_ids``)."""

    async def request_ids(
        self, case_owner: str, case_number: str, *, sender: str = "*", recipient: str = "*"
    ) -> list[str]: ...


async def items_left_blocked(
    release: lifecycle_pb2.RequestStatus, *, requests: RequestStore, cases: PartyRequests | None
) -> bool:
    """Whether an executed RELEASE of one item leaves items of its batch blocked (False for a
    release naming no item; True when the broker cannot tell)."""
    if not release.release_seed.HasField("item_index"):
        return False
    if cases is None:
        return True
    batch = (await requests.get(release.target_id)).status
    blocked = {
        item.index for item in batch.result.block.items if item.state == results_pb2.BLOCK_ITEM_STATE_BLOCKED
    }
    lifted = {release.release_seed.item_index}
    owner = batch.case_ref
    ids = await cases.request_ids(
        owner.issuing_agency, owner.case_number, sender=BROKER_ID, recipient=batch.recipient
    )
    for request_id in ids:
        if not blocked - lifted:
            break
        if request_id in (release.id, batch.id):
            continue
        status = (await requests.get(request_id)).status
        if (
            status.type == common_pb2.REQUEST_TYPE_RELEASE
            and status.target_id == batch.id
            and status.state in EXECUTED_STATES
            and status.release_seed.HasField("item_index")
        ):
            lifted.add(status.release_seed.item_index)
    return bool(blocked - lifted)
