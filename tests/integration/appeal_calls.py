"""What the appeal tests share: a refusal's status and reason, and the police desk's own records."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest

from agencies.demo import Stack
from agencies.police import PoliceDesk
from broker.client import error_details

__all__ = ["police_desk", "refused"]


async def refused(call: Awaitable[object], code: grpc.StatusCode, reason: str) -> None:
    """The call is refused with ``code`` and the ErrorInfo ``reason``."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert error_details(info.value).reason == reason


def police_desk(stack: Stack, police: str) -> PoliceDesk:
    """The reference police desk behind ``police``'s adapter."""
    core = stack.agencies[police].core
    assert isinstance(core, PoliceDesk)
    return core
